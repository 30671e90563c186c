"""raystyle: distributed training and serving of artistic image translation models on Ray."""

__version__ = "0.1.0"
