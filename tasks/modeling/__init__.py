"""Models: training, the search, evaluation, the model gate, the unchanged check and ONNX."""
