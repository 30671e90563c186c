"""Datasets, the bundled sample data, dataset download, safe image decode/encode."""
