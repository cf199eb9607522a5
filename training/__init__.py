"""Trainer for the shipped crowd-and-incident model (optional; torch only in `model`/`train`).

`scenes` renders synthetic street scenes with labels (numpy + OpenCV only, so the demo camera can
use it without torch); `features` is the canonical frame -> model input preprocessing; `dataset`
loads synthetic or real labelled footage; `model`/`train` need the `[train]` extra (torch);
`export` writes the ONNX file with onnx.helper; `eval` measures it with onnxruntime.
"""
