"""timm networks and the plumbing that moves backbone weights into them.

Every network is a timm model, so all share ``forward_features``/``forward_head``/
``reset_classifier``, which linear probing and domain-adaptive chaining rely on.
This is the bottom of the models side: it knows nothing of model files or of where
initial weights come from (see :mod:`rsscgeo.modelfile` and :mod:`rsscgeo.inits`).
"""

from __future__ import annotations

from typing import Protocol, cast

import timm
import torch

from rsscgeo.errors import WeightsError


class TimmNetwork(Protocol):
    """The part of timm's model interface that rsscgeo relies on."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled backbone features."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooling (and the classifier unless ``pre_logits``)."""

    def get_classifier(self) -> torch.nn.Module:
        """The final classification layer."""

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classification layer by a new one with ``num_classes`` outputs."""


def as_timm(network: torch.nn.Module) -> TimmNetwork:
    """View a timm model through its typed interface."""
    return cast(TimmNetwork, network)


def create_network(architecture: str, num_classes: int, in_chans: int) -> torch.nn.Module:
    """Create a randomly initialised timm network.

    Raises:
        WeightsError: If timm does not know the architecture.
    """
    if not timm.is_model(architecture):
        raise WeightsError(
            f"unknown architecture {architecture!r}; use a timm model name such as "
            "'resnet50' or 'tf_efficientnet_lite0' (see timm.list_models())."
        )
    return timm.create_model(
        architecture, pretrained=False, num_classes=num_classes, in_chans=in_chans
    )


def load_backbone(network: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every backbone tensor of ``state`` into ``network``; keep its classifier.

    Raises:
        WeightsError: If backbone tensors are missing or have the wrong shape.
    """
    own = network.state_dict()
    classifier = _classifier_prefix(network)
    backbone_keys = [k for k in own if not k.startswith(classifier)]
    state = _unwrap(state, backbone_keys)
    missing = [k for k in backbone_keys if k not in state]
    if missing:
        raise WeightsError(
            f"{source}: {len(missing)} backbone tensors missing (first: {missing[0]!r}); "
            "the weights belong to another architecture."
        )
    bad = [k for k in backbone_keys if state[k].shape != own[k].shape]
    if bad:
        k = bad[0]
        raise WeightsError(
            f"{source}: tensor {k!r} has shape {tuple(state[k].shape)}, the network needs "
            f"{tuple(own[k].shape)}; check model.architecture and the number of bands."
        )
    network.load_state_dict({k: state[k] for k in backbone_keys}, strict=False)


def _classifier_prefix(network: torch.nn.Module) -> str:
    cfg = getattr(network, "pretrained_cfg", {})
    return f"{cfg.get('classifier', 'classifier')}."


def _unwrap(state: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    """Drop the prefix that wrappers put before backbone keys.

    Self-supervised checkpoints nest the backbone (``module.``, ``module.encoder_q.``,
    ``backbone.``...); the prefix is found from where the first backbone key occurs.
    """
    if not keys or keys[0] in state:
        return state
    for key in state:
        if key.endswith(keys[0]):
            prefix = key[: -len(keys[0])]
            if all(prefix + k in state for k in keys):
                return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state
