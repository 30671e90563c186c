"""ONNX Runtime + numpy inference: style kinds, the Stylizer, tiling, video. No torch, no Ray."""
