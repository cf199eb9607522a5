# Developer targets. The product itself needs none of this (see README).
PYTHON ?= .venv/bin/python
# model shape (training/model.py ARCHS): 32 = the shipped one; 64 = the 64x64 three-conv variant
SIZE ?= 32
MODEL ?= $(if $(filter 32,$(SIZE)),models/crowd_incident.onnx,models/crowd_incident_$(SIZE).onnx)
DATA_CACHE ?=

.PHONY: train model-metrics mall-copy

# Render the synthetic scenes, train on the repository's Mall copy + the scenes, export the model
# (seeded; CPU: see models/README.md for how long), then re-measure what the model card quotes.
train:
	$(PYTHON) -m training.train --arch $(SIZE) --out $(MODEL) $(if $(DATA_CACHE),--data-cache $(DATA_CACHE))
	$(MAKE) model-metrics MODEL=$(MODEL)

model-metrics:
	$(PYTHON) -m training.eval --model $(MODEL) --json $(basename $(MODEL)).metrics.json

# Rebuild training/data/mall/mall.npz from the original frames (MALL=path to the dataset folder)
mall-copy:
	$(PYTHON) -m training.mall --source $(MALL)
