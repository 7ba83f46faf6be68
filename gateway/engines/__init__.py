"""TensorRT plans: building them from the manifest's ONNX files, caching them per TensorRT version and GPU,
quantizing for INT8 (ONNX Runtime QDQ), and the background build the gateway runs at start."""
