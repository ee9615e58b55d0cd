"""TensorRT: the plans and the checks that tie a plan to its machine, the builder, the runner."""
