"""Every error protected_nn raises on bad input derives from ProtectedNNError, so services can
catch one type, count the reason and keep serving."""


class ProtectedNNError(Exception):
    """Base class: a clear, user-facing message naming what was wrong."""


class UnsupportedOpError(ProtectedNNError):
    """An ONNX op (or attribute value) that the encrypted compiler cannot handle."""


class ModelError(ProtectedNNError):
    """A malformed or unsupported ONNX model (shapes, missing initializers, opset...)."""


class InputError(ProtectedNNError):
    """An inference input of the wrong shape, dtype or values."""


class PlanError(ProtectedNNError):
    """The model does not fit the CKKS parameters (depth, slots, security)."""


class KeyMaterialError(ProtectedNNError):
    """Missing or mismatched keys (e.g. a rotation step without its Galois key)."""


class BundleError(ProtectedNNError):
    """A deployment bundle that is malformed, tampered with or unsigned."""


class EnvelopeError(ProtectedNNError):
    """An inference message that does not parse or is out of bounds."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # short machine-readable reason, used as a metrics label


class ResultError(ProtectedNNError):
    """A result that cannot be decrypted with this model's key (truncated, altered, other key)."""
