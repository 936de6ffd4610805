"""The network cut in two for adapting: a frozen trunk and a trainable tail.

Only the last ``blocks`` stages, the final convolution and the classifier adapt; the
trunk below them stays the base model's. So the trunk's output for every augmented
view of every patch is computed once (``trunk_features``), and training runs only
the tail over those cached tensors: on a CPU that is what makes adapting take a
minute or two instead of an hour. Networks without timm's EfficientNet/MobileNet
layout (``conv_stem``, ``bn1``, ``blocks``, ``conv_head``, ``bn2``, ``global_pool``)
adapt their classifier only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from rsscgeo.networks import as_timm
from rsscgeo.scene.inference import Scaling
from rsscgeo.stopping import STOP
from rsscgeo.training.batch_augment import BatchAugment

FEATURE_BATCH = 64


class _PooledFeatures(nn.Module):
    """A timm network up to its pooled features (its classifier left out)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        timm = as_timm(self.network)
        pooled: torch.Tensor = timm.forward_head(timm.forward_features(x), pre_logits=True)
        return pooled


@dataclass
class SplitNetwork:
    """A network as frozen trunk -> trainable tail (pooled features) -> classifier.

    Attributes:
        trunk: The frozen part, in eval mode.
        tail: The adapted stages up to the pooled features (``nn.Identity`` when only
            the classifier adapts).
        classifier: The final linear layer.
        blocks: How many stages the tail holds (0: the classifier only).
    """

    trunk: nn.Module
    tail: nn.Module
    classifier: nn.Linear
    blocks: int

    def logits(self, trunk_output: torch.Tensor) -> torch.Tensor:
        """Class logits from the trunk's output."""
        logits: torch.Tensor = self.classifier(self.tail(trunk_output))
        return logits

    def tail_train(self) -> None:
        """Train mode for the tail, but batch norms keep the base model's statistics.

        Batches of a few hundred user labels would move them away from the imagery the
        trunk was trained on.
        """
        self.tail.train()
        for module in self.tail.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


# timm's EfficientNet/MobileNet layout, in forward order; "blocks" is the stages.
_PARTS = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")


def _part(network: nn.Module, name: str) -> nn.Module:
    part = getattr(network, name)
    assert isinstance(part, nn.Module), name
    return part


def _stages(network: nn.Module) -> list[nn.Module]:
    stages = _part(network, "blocks")
    assert isinstance(stages, nn.Sequential)
    return list(stages)


def split_network(network: nn.Module, blocks: int) -> SplitNetwork:
    """Split a copy of ``network`` so that its last ``blocks`` stages adapt."""
    network = copy.deepcopy(network).eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    classifier = as_timm(network).get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise TypeError(f"the classifier is a {type(classifier).__name__}, not a linear layer")
    layout = all(isinstance(getattr(network, p, None), nn.Module) for p in _PARTS)
    if blocks <= 0 or not layout:
        return SplitNetwork(_PooledFeatures(network), nn.Identity(), _trainable(classifier), 0)
    stages = _stages(network)
    blocks = min(blocks, len(stages))
    stem = [_part(network, "conv_stem"), _part(network, "bn1")]
    trunk = nn.Sequential(*stem, *stages[:-blocks]).eval()
    head = [_part(network, name) for name in ("conv_head", "bn2", "global_pool")]
    tail = nn.Sequential(*stages[-blocks:], *head)
    for parameter in tail.parameters():
        parameter.requires_grad_(True)
    return SplitNetwork(trunk, tail, _trainable(classifier), blocks)


def _stages_of(tail: nn.Module) -> list[nn.Module]:
    assert isinstance(tail, nn.Sequential)
    return list(tail)


def _trainable(layer: nn.Linear) -> nn.Linear:
    layer = copy.deepcopy(layer)
    for parameter in layer.parameters():
        parameter.requires_grad_(True)
    return layer


def to_uint8(raw: torch.Tensor, scaling: Scaling) -> torch.Tensor:
    """Raw patches scaled as classify scales them (``scaling``), as 0..255 uint8."""
    if (
        raw.dtype == torch.uint8
        and all(lo == 0 for lo in scaling.low)
        and all(hi == 255 for hi in scaling.high)
    ):
        return raw
    low = torch.tensor(scaling.low).view(1, -1, 1, 1)
    high = torch.tensor(scaling.high).view(1, -1, 1, 1)
    scaled = ((raw.float() - low) / (high - low).clamp(min=1e-6)).clamp(0, 1)
    return (scaled * 255).round().to(torch.uint8)


def dihedral(tiles: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th (0..7) of the 8 rotations/flips of a batch of tiles."""
    turned = torch.rot90(tiles, k % 4, dims=(-2, -1))
    return turned.flip(-1) if k >= 4 else turned


@torch.no_grad()  # not inference mode: the tail trains on these tensors
def trunk_features(
    split: SplitNetwork,
    tiles: torch.Tensor,
    augment: BatchAugment,
    views: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """The trunk's output for ``views`` views of each uint8 tile: views x N x ...

    View 0 is the tile as classify sees it (``augment.eval``); view k > 0 is its
    ``k mod 8``-th rotation/flip with the training augmentation's crop and photometric
    jitter (``augment`` must not turn tiles itself).

    Raises:
        RunInterrupted: If a stop is requested between batches.
    """
    if not len(tiles):  # nothing to distil (e.g. only the labelled classes are kept)
        shape = split.trunk(augment.eval(torch.zeros((1, *tiles.shape[1:]), dtype=torch.uint8)))
        return torch.empty((views, 0, *shape.shape[1:]))
    out = []
    for view in range(views):
        batches = []
        for start in range(0, len(tiles), FEATURE_BATCH):
            STOP.check()
            batch = tiles[start : start + FEATURE_BATCH]
            if view == 0:
                x = augment.eval(batch)
            else:
                x = augment.train(dihedral(batch, view % 8), generator)
            batches.append(split.trunk(x))
        out.append(torch.cat(batches))
    return torch.stack(out)


def merged_network(base: nn.Module, split: SplitNetwork) -> nn.Module:
    """A copy of ``base`` with ``split``'s adapted stages and classifier in place."""
    network = copy.deepcopy(base).eval()
    if split.blocks:
        stages = _stages(network)
        adapted = _stages_of(split.tail)
        for stage, trained in zip(stages[-split.blocks :], adapted, strict=False):
            stage.load_state_dict(trained.state_dict())
        _part(network, "conv_head").load_state_dict(adapted[split.blocks].state_dict())
        _part(network, "bn2").load_state_dict(adapted[split.blocks + 1].state_dict())
    as_timm(network).reset_classifier(split.classifier.out_features)
    as_timm(network).get_classifier().load_state_dict(split.classifier.state_dict())
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network
