"""Backends: locate the cervix and judge focus (classical; ONNX Runtime and TensorRT model engines)."""
