"""Taking a model out of the platform: merged folders (and later ONNX and Triton repositories)."""
