"""Checkpoint -> validated ONNX styles."""
