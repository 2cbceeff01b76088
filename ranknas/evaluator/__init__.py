"""Data, training, metrics and cost models that judge an architecture."""
