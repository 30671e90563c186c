"""Leaf helpers: the filesystem layer (local paths and pyarrow URIs), ports."""
