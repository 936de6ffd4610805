"""Pooled backbone features for linear evaluation, computed once and cached."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from rsscgeo.networks import as_timm


class FeatureDataset(Dataset[dict[str, torch.Tensor]]):
    """Cached features served in the ``{'image', 'label'}`` layout the task expects."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.features[index], "label": self.labels[index]}


@torch.inference_mode()
def extract_features(
    network: torch.nn.Module,
    dataset: Dataset[dict[str, torch.Tensor]],
    *,
    batch_size: int,
    num_workers: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Globally pooled features (timm's ``pre_logits``) and labels of every sample."""
    network.eval()
    feats, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for batch in tqdm(loader, desc="caching features", unit="batch", leave=False):
        timm_net = as_timm(network)
        pooled = timm_net.forward_head(timm_net.forward_features(batch["image"]), pre_logits=True)
        feats.append(pooled.float())
        labels.append(batch["label"])
    return torch.cat(feats), torch.cat(labels)


def cached_features(
    path: Path,
    network: torch.nn.Module,
    datasets: dict[str, Dataset[dict[str, torch.Tensor]]],
    *,
    batch_size: int,
    num_workers: int,
    reuse: bool,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Features per named dataset, read from ``path`` when present and ``reuse`` is set."""
    if reuse and path.exists():
        stored = load_file(str(path))
        return {name: (stored[f"{name}.x"], stored[f"{name}.y"]) for name in datasets}
    result = {
        name: extract_features(network, ds, batch_size=batch_size, num_workers=num_workers)
        for name, ds in datasets.items()
    }
    tensors = {
        f"{name}.{part}": t.contiguous()
        for name, (x, y) in result.items()
        for part, t in (("x", x), ("y", y))
    }
    # Written aside and renamed: an interrupted run never leaves a truncated cache to reuse.
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return result
