"""What the models' tensors mean: the manifest, preprocessing, anchors, box decoding, NMS and the heads.

Backends (``gateway.backends``) only run tensors; everything that interprets them lives here, so ONNX Runtime
and TensorRT decode identically. Pure numpy/OpenCV: nothing here imports an inference engine.
"""
