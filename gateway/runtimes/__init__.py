"""Runtimes: what runs tensors (ONNX Runtime, TensorRT, the batcher, the fail-over counter), knowing nothing of
what the tensors mean (``gateway.models``) or of what a photo shows (``gateway.backends``)."""
