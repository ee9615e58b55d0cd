"""ONNX export: the graph wrappers, the export, the FP16 policy, simplification and the TensorRT lint."""
