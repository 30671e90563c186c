"""Pure torch building blocks: nets, losses, perceptual features, MACs, tiling graphs. No Ray."""
