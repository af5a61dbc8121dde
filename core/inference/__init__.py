"""Loading a model and generating with it: streaming, and the in-process model cache."""
