"""Large-scene inference: patch grid, TorchGeo reading, Dask tasks, map writers."""
