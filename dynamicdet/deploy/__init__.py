"""Using a trained model: the predictor (``dynamicdet predict``) and what its results become
(``outputs``), the stream scheduler and latency controller, ONNX export and its onnxruntime runner."""
