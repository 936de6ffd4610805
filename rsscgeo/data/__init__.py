"""Labelled tile datasets: catalogues and their layouts, splits, image reading, transforms."""
