"""Where a model runs: PyTorch, or ONNX Runtime from an export of the model file.

On CPU, ONNX Runtime runs the bundled model about twice as fast as PyTorch
(benchmarks/README.md). ``auto`` picks it on CPU and PyTorch on a GPU. The export is
made once per model and ONNX Runtime version and cached (see :func:`onnx_cache_dir`);
its first use is checked against PyTorch on a fixed batch of real imagery, and a model
whose export disagrees (or a machine without onnxruntime) runs on PyTorch, with a
one-line note saying why.

An ONNX model is wrapped as a ``torch.nn.Module`` (:class:`OnnxNetwork`), so
everything downstream (calibration, test-time augmentation, batching, Dask workers)
treats both backends alike. It pickles as its ONNX bytes, so a Dask worker process
opens its own session, with as many intra-op threads as the worker gives it.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rsscgeo.cachedir import cache_dir
from rsscgeo.errors import DependencyMissingError, ModelFileError, first_line
from rsscgeo.modelfile import CARD_KEY, LoadedModel
from rsscgeo.predict import card_transform, scores

Backend = Literal["auto", "torch", "onnx"]
BACKENDS: tuple[Backend, ...] = ("auto", "torch", "onnx")
# ONNX opset of the exports: 17 has every operator timm's CNNs need (LayerNorm too).
OPSET = 17
# Largest calibrated probability difference from PyTorch an export may show.
MAX_PROBABILITY_DIFFERENCE = 1e-4
# The fixed check batch: this many patches of the bundled real scene.
CHECK_PATCHES = 8
CHECK_SCENE = Path(__file__).resolve().parents[1] / "examples" / "scenes" / "naip_2020_rgbn.tif"


@dataclass(frozen=True)
class BackendChoice:
    """The model to run and, in words, which backend runs it and why."""

    loaded: LoadedModel
    backend: Literal["torch", "onnx"]
    note: str
    fallback: bool = False  # PyTorch although ONNX Runtime was asked for (see note)


class OnnxNetwork(torch.nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` interface: logits of a batch.

    Args:
        onnx: The serialised ONNX model.
        threads: Intra-op threads of the session (0: ONNX Runtime's default).
    """

    def __init__(self, onnx: bytes, threads: int = 0) -> None:
        super().__init__()
        self.onnx = onnx
        self.threads = threads
        self._session = _session(onnx, threads)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of a normalised float batch (N x C x H x W)."""
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self._session.run(None, {"image": array})
        return torch.from_numpy(logits)

    def with_threads(self, threads: int) -> OnnxNetwork:
        """The same model in a session with ``threads`` intra-op threads."""
        return self if threads == self.threads else OnnxNetwork(self.onnx, threads)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled as the ONNX bytes: a session cannot travel, the model can."""
        return {"onnx": self.onnx, "threads": self.threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Open a new session from the bytes (e.g. on a Dask worker)."""
        self.__init__(state["onnx"], state["threads"])  # type: ignore[misc]


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model`` runs: its parameters' device (an ONNX Runtime model: the CPU)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def choose_backend(loaded: LoadedModel, backend: Backend, *, gpu: bool) -> BackendChoice:
    """The model on ``backend`` (``auto``: ONNX Runtime unless ``gpu``).

    ``onnx`` and ``auto`` fall back to PyTorch with a note when onnxruntime is missing
    or the export disagrees with PyTorch on the check batch; ``auto`` also when the
    network cannot be exported.

    Raises:
        ModelFileError: If ``onnx`` is asked for and the network cannot be exported.
    """
    if backend == "torch" or (backend == "auto" and gpu):
        why = "asked for" if backend == "torch" else "auto on a GPU"
        return BackendChoice(loaded, "torch", f"backend: PyTorch ({why})")
    if isinstance(loaded.model, OnnxNetwork):  # chosen before, e.g. for another scene
        return BackendChoice(loaded, "onnx", "backend: ONNX Runtime")
    try:
        _onnxruntime()
    except DependencyMissingError as err:
        return _fallback(loaded, str(err))
    try:
        path = cached_export(loaded)
    except ModelFileError as err:
        if backend == "onnx":
            raise
        return _fallback(loaded, str(err))
    verdict = _checked(loaded, path)
    if verdict is not None:
        return _fallback(loaded, verdict)
    onnx_loaded = loaded.with_network(OnnxNetwork(path.read_bytes()))
    return BackendChoice(onnx_loaded, "onnx", f"backend: ONNX Runtime ({path})")


def _fallback(loaded: LoadedModel, why: str) -> BackendChoice:
    return BackendChoice(loaded, "torch", f"backend: PyTorch, not ONNX Runtime: {why}", True)


def onnx_cache_dir() -> Path:
    """Where exports are cached: ``$RSSCGEO_CACHE_DIR`` or the user's cache folder."""
    return cache_dir("onnx")


def cached_export(loaded: LoadedModel) -> Path:
    """The ONNX export of ``loaded``, made once per model and ONNX Runtime version.

    Raises:
        ModelFileError: If the export fails.
    """
    version = _onnxruntime().__version__
    path = onnx_cache_dir() / f"{loaded.identity[:32]}-ort{version}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            tmp.write_bytes(export_onnx(loaded))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def export_onnx(loaded: LoadedModel, *, with_card: bool = False) -> bytes:
    """``loaded`` as ONNX bytes: input ``image`` (N x C x H x W, any N), output ``logits``.

    With ``with_card`` the model card is stored in the ONNX metadata under
    ``rsscgeo.card`` (as in the safetensors file), for users of other ONNX tools.

    Raises:
        ModelFileError: If the network cannot be exported.
    """
    card = loaded.card
    # A copy: Module.to works in place, and the caller's model stays where it was.
    model = copy.deepcopy(loaded.model).to("cpu").to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, len(card.bands), card.input_size, card.input_size)
    with tempfile.TemporaryDirectory() as folder:
        data = _export(model, example, Path(folder) / "model.onnx", card.architecture)
    if not with_card:
        return data
    import onnx

    proto = onnx.load_from_string(data)
    entry = proto.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.model_dump_json()
    return bytes(proto.SerializeToString())


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path, name: str) -> bytes:
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: stable for timm CNNs, no onnxscript
        )
    except Exception as err:  # exporters raise many types
        raise ModelFileError(
            f"{name} cannot be exported to ONNX ({type(err).__name__}: {first_line(err)})",
            "use the torch backend.",
            cli_fix="use --backend torch.",
        ) from None
    return path.read_bytes()


def _checked(loaded: LoadedModel, path: Path) -> str | None:
    """None if the export agrees with PyTorch on the check batch, else why not.

    The verdict is kept beside the export, so each export is checked once.
    """
    verdict_file = path.with_suffix(".check.json")
    if verdict_file.exists():
        verdict = json.loads(verdict_file.read_text())
    else:
        batch = check_batch(loaded)
        with torch.inference_mode():
            reference = loaded.model(batch.to(model_device(loaded.model))).cpu()
            expected = scores(reference, loaded.card)
            try:
                actual = scores(OnnxNetwork(path.read_bytes())(batch), loaded.card)
                difference = float((expected - actual).abs().max())
            except Exception:  # an export that cannot even run a batch
                difference = float("inf")
        verdict = {"max_probability_difference": difference, "patches": len(batch)}
        tmp = verdict_file.with_name(f".{verdict_file.name}.{os.getpid()}.part")
        tmp.write_text(json.dumps(verdict))
        os.replace(tmp, verdict_file)
    difference = verdict["max_probability_difference"]
    if difference <= MAX_PROBABILITY_DIFFERENCE:
        return None
    if difference == float("inf"):
        return "its ONNX export fails on a batch that PyTorch runs"
    return (
        f"its ONNX export differs from PyTorch by {difference:.2g} in probability "
        f"(at most {MAX_PROBABILITY_DIFFERENCE:g} allowed)"
    )


def check_batch(loaded: LoadedModel) -> torch.Tensor:
    """A fixed batch of real imagery through the card's eval transform.

    ``CHECK_PATCHES`` tiles of the bundled scene, each read at the card's resize side;
    without the bundled scene (an installed wheel), a seeded noise batch instead.
    """
    card = loaded.card
    side, bands = card.eval_resize, len(card.bands)
    rows, cols = 2, CHECK_PATCHES // 2
    if CHECK_SCENE.exists():
        import rasterio

        with rasterio.open(CHECK_SCENE) as src:
            count = min(bands, src.count)
            shape = (count, rows * side, cols * side)
            pixels = src.read(list(range(1, count + 1)), out_shape=shape)
        values = torch.from_numpy(pixels.astype(np.float32) / 255)
        if count < bands:
            values = torch.cat([values, values[:1].expand(bands - count, -1, -1)])
        tiles = [
            values[:, r * side : (r + 1) * side, c * side : (c + 1) * side]
            for r in range(rows)
            for c in range(cols)
        ]
        batch = torch.stack(tiles)
    else:
        seeded = torch.Generator().manual_seed(0)
        batch = torch.rand(CHECK_PATCHES, bands, side, side, generator=seeded)
    transformed: torch.Tensor = card_transform(card)(batch)
    return transformed


def _session(onnx: bytes, threads: int) -> Any:
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    # Without the arena, memory is returned after each batch: with it, peak RSS grew
    # with the scene (2.4 GB at 4096^2, 3.5 GB at 16384^2 for the bundled model).
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise DependencyMissingError(
            "onnxruntime is not installed", "install it with `pip install onnxruntime`."
        ) from None
    return onnxruntime
