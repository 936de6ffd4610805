"""Labelled tile datasets: catalogues, splits, image reading and transforms."""
