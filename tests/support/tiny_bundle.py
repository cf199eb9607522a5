"""The old name of tests/support/tiny_models.py, kept only while branches written against it are
merged (issue 12's test reorganisation); new code imports tests.support.tiny_models."""
from tests.support.tiny_models import frame_model as tiny_onnx, signed_bundle  # noqa: F401
