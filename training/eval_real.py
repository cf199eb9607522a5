"""The shipped model on real frames it was never trained on: Mall frames 641-800 (training/mall.py).

    python -m training.eval_real --model models/crowd_incident.onnx

Count: mean absolute error, bias, and MAE per count band, with the motion channel zero (no
reference frame: how a gateway starts) and against the frame before (about 0.5 s in this
dataset; the count does not depend on motion by construction, so both must agree). Incident:
the share of these calm frames on which the incident logit is > 0 (a false positive: no frame
of the Mall footage shows an incident), with zero motion and with the 0.5 s motion (more than
the model sees at run time), plus the largest logit.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from training import mall
from training.eval import model_input_size, predict_onnx


def real_metrics(model_path, split: str = "validation") -> dict:
    size = model_input_size(model_path)
    s = mall.load(size, split)
    out = {"split": split, "frames": len(s), "first_frame": int(s.frame[0]), "last_frame": int(s.frame[-1]),
           "count_mean": float(s.count.mean())}
    for name, motion in (("no_motion", False), ("motion_0.5s", True)):
        y = predict_onnx(model_path, mall.inputs(s, motion))
        err = y[:, 0] - s.count
        out[name] = {"count_mae": float(np.abs(err).mean()), "count_bias": float(err.mean()),
                     "count_max_abs_error": float(np.abs(err).max()),
                     "incident_positive_rate": float((y[:, 1] > 0).mean()),
                     "incident_max_logit": float(y[:, 1].max())}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="real-frame validation metrics of a crowd-and-incident ONNX model")
    ap.add_argument("--model", default="models/crowd_incident.onnx")
    ap.add_argument("--split", default="validation", choices=("validation", "train", "all"))
    args = ap.parse_args(argv)
    print(json.dumps(real_metrics(args.model, args.split), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
