# Developer targets. The product itself needs none of this (see README).
PYTHON ?= .venv/bin/python

.PHONY: train model-metrics

# Re-render the synthetic scenes, retrain and re-export the shipped model (seeded; CPU, ~10 min
# on 2 cores), then re-measure it on the held-out set the model card quotes.
train:
	$(PYTHON) -m training.train --out models/crowd_incident.onnx
	$(MAKE) model-metrics

model-metrics:
	$(PYTHON) -m training.eval --model models/crowd_incident.onnx --json models/crowd_incident.metrics.json
