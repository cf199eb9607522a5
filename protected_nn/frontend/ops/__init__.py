"""One module per ONNX op family; each handler is `handler(node, ctx) -> None` and binds the
node's outputs in the `LoweringContext` (an IR layer, a view of one, or a constant)."""
