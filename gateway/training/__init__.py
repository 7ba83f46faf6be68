"""Training and evaluation of the learned models (issue 4): a cervix detector and a focus classifier.

Only the ``train`` and ``evaluate`` commands import this package, lazily; the service never does.
``dataset``, ``degradations`` and ``evaluate`` need only numpy and OpenCV (plus ONNX Runtime to evaluate);
``model``, ``train`` and ``export`` need the ``train`` extra (torch and the EfficientNet-Lite0 packages).
"""
