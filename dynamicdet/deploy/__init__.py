"""Using a trained model: the predictor (``dynamicdet predict``), the stream scheduler and latency
controller, ONNX export and its onnxruntime runner."""
