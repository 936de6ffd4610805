"""The self-describing model file: safetensors weights plus a JSON model card.

The card travels inside the safetensors header metadata under ``rsscgeo.card``, so a
model is a single file that never needs unpickling to load. A loaded model has a
content identity (:func:`model_identity`): a hash of its card and weights.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pickletools
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rsscgeo.errors import ModelFileError
from rsscgeo.exemplars import Exemplars, is_exemplar_tensor

CARD_KEY = "rsscgeo.card"
# The default model shipped in the source tree: 33 land-use classes in 7 families, trained
# by the chain ImageNet -> AID (configs/aid_efficientnet_lite0.yaml) -> AID + NWPU12
# (configs/land_use_33/chain.yaml).
BUNDLED_MODEL = (
    Path(__file__).resolve().parents[1]
    / "examples"
    / "models"
    / "land_use_33_efficientnet_lite0"
    / "model.safetensors"
)
CARD_VERSION = 1
Task = Literal["multiclass", "multilabel"]
# Per-band normalisation values: NaN or inf would silently turn every pixel into NaN.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_OPCODE = 0x80
_PICKLE_PROTOCOLS = {bytes([n]) for n in range(2, 6)}
# A safetensors file starts with its JSON header's length (u64, little-endian), then "{".
_SAFETENSORS_HEADER_START = 8


class ClassInfo(BaseModel):
    """One class (or label) the model predicts, with the colour used on maps.

    ``parent`` names its family (one of ``ModelCard.parents``): what a map says when
    the class itself is doubtful but the family is not. Flat cards have none.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    color: str = Field(pattern=r"^#[0-9a-fA-F]{6}$")
    parent: str | None = None


class ParentInfo(BaseModel):
    """A family of classes (e.g. Water for Pond, Lake and River), with its map colour."""

    model_config = ConfigDict(extra="forbid")

    name: str
    color: str = Field(pattern=r"^#[0-9a-fA-F]{6}$")


class StageRecord(BaseModel):
    """One stage of a model's training chain (e.g. self-supervised pre-training)."""

    model_config = ConfigDict(extra="forbid")

    protocol: str
    init: str
    dataset: str
    objective: str
    epochs: int | None = Field(default=None, description="None: not recorded.")
    metrics: dict[str, float] = Field(default_factory=dict)


class Provenance(BaseModel):
    """Where a model came from: data, split, protocol and the metrics it reached."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    split_file: str | None = None
    protocol: str
    init: str
    metrics: dict[str, float] = Field(default_factory=dict)
    rsscgeo_version: str
    created: str = Field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
    notes: str | None = None
    stages: list[StageRecord] = Field(
        default_factory=list, description="Earlier stages of the chain, first stage first."
    )


class Adaptation(BaseModel):
    """How a model was adapted to a user's scenes and labels (``rsscgeo adapt``)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(description="The base model's file name.")
    base_identity: str = Field(description="The base model's content identity (SHA-256).")
    scenes: list[str]
    labels_file: str
    labels_sha256: str = Field(description="Hash of the labelled patches (scene, row, col).")
    label_counts: dict[str, int] = Field(description="Labelled patches per name.")
    new_classes: list[str] = Field(default_factory=list)
    only_labelled_classes: bool = False
    adapted_blocks: int = Field(ge=0, description="Network stages fine-tuned (0: classifier).")
    distilled_patches: int = Field(ge=0, description="Unlabelled patches the base taught.")
    rehearsed_exemplars: int = Field(
        default=0, ge=0, description="The base model's training tiles it also taught on."
    )
    cross_validation: dict[str, float] = Field(default_factory=dict)


class ExemplarInfo(BaseModel):
    """The training tiles stored in the model file for ``adapt``'s rehearsal."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=0)
    per_class: int = Field(ge=0, description="At most this many tiles of each class.")
    drawn_from: str = Field(description="Where the tiles were drawn (never a test split).")


class Calibration(BaseModel):
    """How far to trust the model's scores: temperature scaling and an Uncertain cut-off.

    Calibrated probabilities are ``softmax(logits / temperature)``. A patch whose
    calibrated top-1 probability is below ``uncertain_below`` is mapped as Uncertain.
    Both are fitted on a validation split that is neither trained on nor the test split.
    """

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(gt=0)
    uncertain_below: float = Field(ge=0, le=1)
    fitted_on: str = Field(description="The validation data both values were chosen on.")
    rule: str = Field(description="How uncertain_below was chosen.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Validation NLL/ECE before and after, coverage, ..."
    )


class ModelCard(BaseModel):
    """Everything needed to use a model correctly on new imagery.

    Pixel values are divided by ``input_scale`` (255 for 8-bit imagery) and then
    normalised with ``mean``/``std`` per band before they reach the model.
    """

    model_config = ConfigDict(extra="forbid")

    card_version: int = CARD_VERSION
    architecture: str
    task: Task
    classes: list[ClassInfo] = Field(min_length=2)
    parents: list[ParentInfo] = Field(
        default_factory=list, description="The classes' families; empty for a flat card."
    )
    bands: list[str] = Field(min_length=1)
    mean: list[FiniteFloat]
    std: list[PositiveFloat]
    input_scale: float = 255.0
    patch_size: int = Field(gt=0, description="Side of a training tile in source pixels.")
    eval_resize: int = Field(gt=0, description="Tiles are resized to this side first...")
    eval_crop: int | None = Field(default=None, gt=0, description="...then centre-cropped.")
    gsd: float | None = Field(default=None, gt=0, description="Ground sample distance, m/px.")
    gsd_note: str | None = None
    thresholds: list[float] | None = None
    calibration: Calibration | None = None
    provenance: Provenance
    adaptation: Adaptation | None = None
    exemplars: ExemplarInfo | None = None

    @property
    def class_names(self) -> list[str]:
        """Class names in output order."""
        return [c.name for c in self.classes]

    @property
    def parent_names(self) -> list[str]:
        """Family names in order (empty for a flat card)."""
        return [p.name for p in self.parents]

    @property
    def parent_ids(self) -> list[int]:
        """Each class's family as an index into ``parents`` (empty for a flat card)."""
        position = {name: i for i, name in enumerate(self.parent_names)}
        return [position[c.parent] for c in self.classes if c.parent is not None]

    @property
    def input_size(self) -> int:
        """Side of the image the network is fed."""
        return self.eval_crop or self.eval_resize

    @property
    def temperature(self) -> float:
        """Divisor of the logits that calibrates the scores (1 when never fitted)."""
        return self.calibration.temperature if self.calibration else 1.0

    @property
    def uncertain_below(self) -> float:
        """Calibrated top-1 probability below which a patch is Uncertain (0: never)."""
        return self.calibration.uncertain_below if self.calibration else 0.0

    @property
    def num_classes(self) -> int:
        """Number of model outputs."""
        return len(self.classes)

    @field_validator("classes", mode="before")
    @classmethod
    def _classes_listed(cls, classes: Any) -> Any:
        if isinstance(classes, list | tuple) and not classes:
            raise PydanticCustomError(
                "classes_empty", "the class list is empty (a model card names at least 2 classes)"
            )
        return classes

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if not len(self.mean) == len(self.std) == len(self.bands):
            raise ValueError("bands, mean and std must have the same length")
        if self.task == "multilabel":
            if self.thresholds is None:
                self.thresholds = [0.5] * self.num_classes
            if len(self.thresholds) != self.num_classes:
                raise ValueError("multilabel cards need one threshold per class")
        names = self.class_names
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        self._check_families()
        return self

    def _check_families(self) -> None:
        parents = self.parent_names
        if not parents:
            if any(c.parent is not None for c in self.classes):
                raise ValueError("classes name a parent but the card lists no parents")
            return
        if len(set(parents)) != len(parents):
            raise ValueError("parent names must be unique")
        if self.task == "multilabel":
            raise ValueError("parents are for single-label (multiclass) cards")
        both = sorted(set(parents) & set(self.class_names))
        if both:
            raise ValueError(f"{both[0]!r} is both a class and a parent")
        for c in self.classes:
            if c.parent not in parents:
                raise ValueError(f"class {c.name!r}: parent {c.parent!r} is not in parents")
        empty = sorted(set(parents) - {c.parent for c in self.classes})
        if empty:
            raise ValueError(f"parent {empty[0]!r} has no class")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference: an eval-mode network and its card."""

    model: torch.nn.Module
    card: ModelCard
    path: Path | None = None  # the file it was loaded from (None: built in memory)

    def exemplars(self) -> Exemplars | None:
        """The training tiles the model's file carries, for rehearsal (``None``: none).

        Raises:
            ModelFileError: If the file is gone or its exemplars cannot be decoded.
        """
        if self.path is None or self.card.exemplars is None:
            return None
        return read_exemplars(self.path)

    @cached_property
    def identity(self) -> str:
        """The model's content identity (see :func:`model_identity`).

        Computed on first use and then kept: the weights must not change afterwards.
        """
        return model_identity(self.model, self.card)

    def with_network(self, model: torch.nn.Module) -> LoadedModel:
        """The same model (same identity) run by another network object.

        For views of these weights: moved to a device, channels-last, or exported to
        another runtime (see ``rsscgeo.backends``).
        """
        other = LoadedModel(model, self.card, self.path)
        other.__dict__["identity"] = self.identity  # what cached_property would store
        return other


def model_identity(model: torch.nn.Module, card: ModelCard) -> str:
    """A content hash of a model's card and weights.

    It is what a resume journal and the Dask workers' model cache are keyed by. The
    SHA-256 (hex) of the card's JSON followed by every state-dict entry in order:
    its name, dtype, shape and bytes (on the CPU, contiguous). The same weights and card
    give the same identity whether loaded from a file or built in memory; any changed
    weight or card field (class names, calibration, ...) gives another. Float16 weights
    loaded from a ``half=True`` file are widened to float32 and hash as such.
    """
    digest = hashlib.sha256(card.model_dump_json().encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"\0{name}\0{flat.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def save_model(
    path: str | Path,
    model: torch.nn.Module,
    card: ModelCard,
    *,
    half: bool = False,
    exemplars: Exemplars | None = None,
) -> Path:
    """Write ``model``, ``card`` and any ``exemplars`` to one safetensors file.

    Args:
        path: Destination file (``.safetensors``).
        model: Network whose ``state_dict`` is saved.
        card: The model card stored in the file's metadata (``card.exemplars`` must
            describe ``exemplars``).
        half: Store floating-point weights as float16 (halves the size).
        exemplars: Training tiles for ``adapt``'s rehearsal.

    Returns:
        The path written.
    """
    if (exemplars is None) != (card.exemplars is None):
        raise ValueError("card.exemplars must be set exactly when exemplars are saved")
    path = Path(path)
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        tensors[name] = tensor
    if exemplars is not None:
        tensors |= exemplars.to_tensors()
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={CARD_KEY: card.model_dump_json()})
    # safetensors creates files owner-only; give the model the usual umask permissions.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)
    tmp.replace(path)
    return path


def refuse_pickle(path: Path) -> None:
    """Raise if ``path`` holds a pickle (plain or inside a PyTorch zip archive).

    Nothing is unpickled: the file is recognised by its signature, or by parsing its
    opcodes with :mod:`pickletools`, which never imports or calls anything.

    Raises:
        ModelFileError: If the file is a pickle or a PyTorch zip checkpoint.
    """
    with path.open("rb") as f:
        head = f.read(_SAFETENSORS_HEADER_START + 1)
        if _looks_like_safetensors(head, path.stat().st_size):
            return
        # Protocol 2+ pickles start with PROTO and the protocol; 0 and 1 need parsing.
        proto = head[:1] == bytes([_PICKLE_PROTOCOL_OPCODE]) and head[1:2] in _PICKLE_PROTOCOLS
        f.seek(0)
        pickled = head.startswith(_ZIP_MAGIC) or proto or _is_pickle_stream(f)
    if pickled:
        raise ModelFileError(
            f"{path} is a PyTorch pickle checkpoint; rsscgeo never unpickles model files. "
            "Use a .safetensors model written by `rsscgeo train`, or pass plain weights "
            "as a training init (loaded with weights_only=True)."
        )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A header length that fits the file, followed by the header's opening brace.

    Checked first because the length's low byte may well be 0x80, a pickle's first byte.
    """
    if len(head) <= _SAFETENSORS_HEADER_START:
        return False
    length = int.from_bytes(head[:_SAFETENSORS_HEADER_START], "little")
    fits = length <= size - _SAFETENSORS_HEADER_START
    return fits and head[_SAFETENSORS_HEADER_START : _SAFETENSORS_HEADER_START + 1] == b"{"


def _is_pickle_stream(f: BinaryIO) -> bool:
    """Whether ``f`` parses as pickle opcodes up to a STOP (decoding only, no execution)."""
    try:
        return any(opcode.name == "STOP" for opcode, _, _ in pickletools.genops(f))
    except Exception:  # genops raises ValueError, EOFError, ... on anything else
        return False


def read_card(path: str | Path) -> ModelCard:
    """Read only the card of a model file.

    Raises:
        ModelFileError: If the file is missing, not safetensors, or has no valid card.
    """
    path = _existing(path)
    with _open_safetensors(path) as f:
        metadata = f.metadata() or {}
    return _parse_card(path, metadata)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """Read the float32 weights and the card of a model file.

    Raises:
        ModelFileError: If the file is missing, not safetensors, or has no valid card.
    """
    path = _existing(path)
    with _open_safetensors(path) as f:
        card = _parse_card(path, f.metadata() or {})
        names = [key for key in f.keys() if not is_exemplar_tensor(key)]  # noqa: SIM118
        tensors = {key: f.get_tensor(key) for key in names}
    weights = {k: t.float() if t.is_floating_point() else t for k, t in tensors.items()}
    return weights, card


def read_exemplars(path: str | Path) -> Exemplars | None:
    """The training tiles a model file carries for rehearsal (``None`` if it has none).

    Raises:
        ModelFileError: If the file is missing or not safetensors.
    """
    path = _existing(path)
    with _open_safetensors(path) as f:
        names = [key for key in f.keys() if is_exemplar_tensor(key)]  # noqa: SIM118
        tensors = {key: f.get_tensor(key) for key in names}
    try:
        return Exemplars.from_tensors(tensors)
    except (RuntimeError, ValueError) as err:
        raise ModelFileError(
            f"{path}: its exemplar tiles cannot be decoded ({_first_error(err)}); the file "
            "was edited or written by another tool."
        ) from None


def load_model(path: str | Path) -> LoadedModel:
    """Load a model file into an eval-mode network that returns logits.

    Args:
        path: A ``.safetensors`` file written by rsscgeo.

    Returns:
        The network (eval mode; input: normalised float NxCxHxW) and its card.

    Raises:
        ModelFileError: If the file is missing, a pickle, corrupt, or does not match
            its card's architecture.
    """
    from rsscgeo.networks import create_network  # deferred: read_card stays light

    weights, card = read_weights(path)
    network = create_network(card.architecture, card.num_classes, len(card.bands))
    try:
        network.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise ModelFileError(
            f"{path}: weights do not fit architecture {card.architecture!r} ({first}); "
            "the file was edited or written by another tool; retrain or re-export it."
        ) from None
    network.eval()
    return LoadedModel(model=network, card=card, path=Path(path))


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist; check the path.")
    if path.stat().st_size == 0:
        raise ModelFileError(
            f"model file {path} is empty (0 bytes); re-download or re-export it "
            "(`rsscgeo train` writes model.safetensors)."
        )
    refuse_pickle(path)
    return path


def _open_safetensors(path: Path) -> Any:  # safe_open's handle has no public type
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(
            f"{path} is not a readable safetensors model file ({err}); "
            "pass a model written by `rsscgeo train`."
        ) from None


def _parse_card(path: Path, metadata: dict[str, str]) -> ModelCard:
    raw = metadata.get(CARD_KEY)
    if raw is None:
        raise ModelFileError(
            f"{path} has no rsscgeo model card (metadata key {CARD_KEY!r}); "
            "it is plain safetensors weights: use it as a training init instead."
        )
    fix = "the file was edited or written by another tool: re-export it with `rsscgeo train`"
    try:
        card = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ModelFileError(
            f"{path}: the model card (metadata key {CARD_KEY!r}) is not valid JSON ({err}); {fix}."
        ) from None
    try:
        return ModelCard.model_validate(card)
    except ValidationError as err:
        raise ModelFileError(f"{path}: invalid model card: {_first_error(err)}; {fix}.") from None


def _first_error(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "card"
        more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
        return f"{where}: {first['msg']}{more}"
    return str(err)
