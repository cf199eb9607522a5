"""`backend-decryptor adapt`: turn an ordinary trained CNN (ReLU, MaxPool, BatchNorm...) into one
that runs encrypted at the owner's accuracy (docs/adapt.md).

Owner side only, and torch is optional (the `adapt` extra): nothing here is imported by the
gateway, and torch itself is imported only inside the functions that train.

    onnx_graph   read + check the ONNX model, fold constants, static shapes, what gets replaced
    torch_model  the ONNX graph as a PyTorch module (its initializers are the trainable weights)
    polynomial   the trainable per-channel polynomial activation
    train        distillation fine-tuning with a range penalty
    export       the adapted ONNX (only ops `protect` supports, metadata carried over)
    report       held-back figures, depth and the protect plan's estimate
    run          adapt(): the whole pipeline; command: the CLI
"""

INSTALL_HINT = "pip install -e '.[adapt]'  (PyTorch 2.13.0, CPU)"


class AdaptError(ValueError):
    """Bad input to adapt, or a model it cannot adapt: one clear message, exit code 2."""


def require_torch():
    """Import torch, or say how to install it (the gateway never needs it)."""
    try:
        import torch
    except ImportError:
        raise AdaptError(f"adapt needs PyTorch, which is not installed: {INSTALL_HINT}") from None
    return torch
