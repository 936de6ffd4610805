"""GPU inference benchmark: ``classify_scene`` end to end against the model alone.

One prepared script for a machine with a GPU (about 5-7 minutes with the defaults;
``--budget`` caps it, default 450 s). For two models at batch 256:

- ``bundled``: the bundled EfficientNet-Lite0 (150 px patches resized to 176);
- ``resnet50``: ``timm.create_model("resnet50", pretrained=False, num_classes=30)``,
  random weights (speed only), with a copy of the bundled card for 224 px patches read
  and fed at 224 px (no resize);

it measures:

1. agreement (bundled model): ``rsscgeo.scene.inference.classify_patches`` on real
   patches cut from ``examples/scenes/naip_2020_rgbn.tif`` (RGB; a synthetic scene
   when that file is absent), CPU fp32 against ``--device`` (fp16 autocast,
   channels-last); max |p_dev - p_cpu| and top-1 agreement;
2. model-only: random, already normalised batches at the card's input size, on the
   device, through the network (channels-last) and a softmax, probabilities copied
   to the host, as ``classify_patches`` does: ``eager autocast`` (fp16 autocast, what
   ``rsscgeo classify`` runs), ``eager half`` (``.half()`` weights and inputs) and
   ``compiled`` (the half network under ``torch.compile(mode=--compile-mode)``;
   ``reduce-overhead`` uses CUDA graphs). The best is the bound;
3. end to end: ``rsscgeo.classify_scene`` on a synthetic ``--size``^2 RGB uint8
   GeoTIFF (tiled 256x256, deflate, 2 m/px; written into a temporary folder with
   ``classify_throughput.write_scene``), ``ClassifyOptions(batch_size=..., backend="torch")``,
   GeoTIFF output, in one ``open_engine(device=..., workers=--workers)`` (the local
   Dask cluster decodes on every core as threads by default). One warm-up run per
   model, then timed runs (``--e2e-repeats``, or until ``--max-seconds``).

patches/s counts classified patches of the model's reading grid (edges padded; edge
patches under ``min_valid`` are skipped and not counted); MP/s is
megapixels of scene per second, patches/s x patch_size^2 (150^2 or 224^2), for both
model-only and end to end, so the ratio e2e / best model-only is the same for both.
Targets: ratio >= 0.8 for both models, ResNet-50 end to end >= 300 MP/s.

Every measured path stops after ``--max-seconds`` (at least two batches or one timed
end-to-end run). Compilation runs last and is skipped when less than
``--compile-reserve`` seconds of the budget are left. Prints one table and a JSON
line (``@@json {...}``)::

    python benchmarks/gpu_inference.py                          # on a GPU machine
    .venv/bin/python benchmarks/gpu_inference.py --device cpu --tiny   # a CPU check
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import rsscgeo
from rsscgeo.modelfile import BUNDLED_MODEL, LoadedModel, load_model
from rsscgeo.scene.inference import Preprocess, Scaling, classify_patches

HERE = Path(__file__).resolve().parent
SCENE = HERE.parent / "examples" / "scenes" / "naip_2020_rgbn.tif"
MODELS = ("bundled", "resnet50")
TARGET_RATIO = 0.8
TARGET_RESNET_MPS = 300.0


def _throughput_module() -> ModuleType:
    """``benchmarks/classify_throughput.py`` (for ``write_scene``), imported by path."""
    spec = importlib.util.spec_from_file_location(
        "classify_throughput", HERE / "classify_throughput.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- models


def get_model(name: str) -> LoadedModel:
    """The bundled model, or a random-weight ResNet-50 with a 224 px copy of its card."""
    bundled = load_model(BUNDLED_MODEL)
    if name == "bundled":
        return bundled
    import timm

    card = bundled.card.model_copy(
        update={
            "architecture": "resnet50",
            "eval_resize": 224,
            "eval_crop": None,
            "patch_size": 224,
        }
    )
    network = timm.create_model(
        "resnet50", pretrained=False, num_classes=card.num_classes, in_chans=len(card.bands)
    )
    return LoadedModel(network.eval(), card)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One measured path."""

    model: str
    path: str
    patches: int = 0
    seconds: float = 0.0
    patch_px: int = 0
    note: str = ""

    @property
    def patches_per_second(self) -> float:
        """Patches per second (0 when nothing was measured)."""
        return self.patches / self.seconds if self.seconds > 0 else 0.0

    @property
    def megapixels_per_second(self) -> float:
        """Megapixels of scene per second: patches/s x patch_px^2."""
        return self.patches_per_second * self.patch_px**2 / 1e6


@dataclass
class Results:
    """All rows, plus free-form facts for the JSON line."""

    rows: list[Row] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        """Keep ``row`` and print it."""
        self.rows.append(row)
        figure = (
            f"{row.patches_per_second:>9.1f} patches/s {row.megapixels_per_second:>8.1f} MP/s"
            if row.seconds > 0
            else "(not measured)"
        )
        print(f"  {row.model:<9} {row.path:<24} {figure}  {row.note}", flush=True)
        return row

    def best_model_only(self, model: str) -> Row | None:
        """The fastest model-only row of ``model``."""
        rows = [
            r for r in self.rows if r.model == model and r.path.startswith("model") and r.seconds
        ]
        return max(rows, key=lambda r: r.patches_per_second, default=None)

    def e2e(self, model: str) -> Row | None:
        """The end-to-end row of ``model``."""
        return next(
            (r for r in self.rows if r.model == model and r.path == "e2e" and r.seconds), None
        )


class Budget:
    """The run's wall-clock budget."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        """Seconds left (negative when over)."""
        return self.deadline - time.perf_counter()


# --------------------------------------------------------------------------- (1) agreement


def real_patches(count: int, patch: int, fallback: Path) -> tuple[torch.Tensor, str]:
    """Up to ``count`` full RGB uint8 patches of the bundled example scene (or ``fallback``)."""
    import rasterio

    source = SCENE if SCENE.exists() else fallback
    with rasterio.open(source) as src:
        image = src.read([1, 2, 3])
    rows, cols = image.shape[1] // patch, image.shape[2] // patch
    patches = [
        image[:, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]
        for r in range(rows)
        for c in range(cols)
    ][:count]
    return torch.from_numpy(np.stack(patches)), source.name


def agreement(device: torch.device, count: int, batch_size: int, fallback: Path) -> dict[str, Any]:
    """CPU fp32 against ``device`` through ``classify_patches`` (bundled model)."""
    cpu = load_model(BUNDLED_MODEL)
    card = cpu.card
    patches, source = real_patches(count, card.patch_size, fallback)
    cpu.model.to(memory_format=torch.channels_last)
    preprocess = Preprocess.build(
        card, Scaling.divide_by(card.input_scale, len(card.bands)), torch.uint8, channels_last=True
    )
    expected = classify_patches(cpu, patches, preprocess, batch_size)
    network = load_model(BUNDLED_MODEL).model.to(device).to(memory_format=torch.channels_last)
    actual = classify_patches(LoadedModel(network, card), patches, preprocess, batch_size)
    return {
        "patches": len(patches),
        "source": source,
        "max_abs_diff": (expected - actual).abs().max().item(),
        "top1_agreement": (expected.argmax(1) == actual.argmax(1)).float().mean().item(),
    }


# --------------------------------------------------------------------------- (2) model-only


def time_batches(
    run: Callable[[torch.Tensor], torch.Tensor],
    batches: list[torch.Tensor],
    device: torch.device,
    max_seconds: float,
    max_batches: int,
) -> tuple[int, float]:
    """Run ``run`` over ``batches`` in a cycle: 2 warm-ups, then until a limit (>= 2 timed).

    Returns:
        (patches, seconds) of the timed batches.
    """
    with torch.inference_mode():
        for i in range(2):
            run(batches[i % len(batches)]).cpu()
        sync(device)
        done = count = 0
        started = time.perf_counter()
        while True:
            batch = batches[count % len(batches)]
            run(batch).cpu()  # the probabilities to the host, as classify_patches does
            done += len(batch)
            count += 1
            elapsed = time.perf_counter() - started
            if count >= 2 and (elapsed >= max_seconds or count >= max_batches):
                break
    return done, elapsed


def model_only(
    name: str,
    loaded: LoadedModel,
    device: torch.device,
    args: argparse.Namespace,
    results: Results,
    *,
    compiled: bool,
) -> None:
    """The eager paths, or (``compiled``) the ``torch.compile`` path, of one model."""
    card = loaded.card
    size = card.input_size
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(args.batch_size, len(card.bands), size, size, generator=generator)
        .to(device)
        .contiguous(memory_format=torch.channels_last)
        for _ in range(2)
    ]
    network = copy.deepcopy(loaded.model).to(device).to(memory_format=torch.channels_last).eval()
    on_gpu = device.type == "cuda"
    half = copy.deepcopy(network).half() if on_gpu else network  # fp16 is slow on CPUs
    half_batches = [b.half() for b in batches] if on_gpu else batches
    kind = "half" if on_gpu else "fp32"

    def autocast(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.float16, enabled=on_gpu):
            return F.softmax(network(x).float(), dim=1)

    def plain(x: torch.Tensor) -> torch.Tensor:
        return F.softmax(half(x).float(), dim=1)

    def measure(
        path: str,
        run: Callable[[torch.Tensor], torch.Tensor],
        inputs: list[torch.Tensor],
        note: str = "",
    ) -> None:
        try:
            started = time.perf_counter()
            patches, seconds = time_batches(run, inputs, device, args.max_seconds, args.max_batches)
            total = time.perf_counter() - started
            note = f"{note}{patches} patches in {seconds:.2f} s (+{total - seconds:.1f} s warm-up)"
            results.add(Row(name, path, patches, seconds, card.patch_size, note))
        except Exception as err:  # a failed compile or OOM: report it, keep going
            first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
            results.add(Row(name, path, note=f"failed: {type(err).__name__}: {first}"))

    if not compiled:
        measure("model eager autocast", autocast, batches)
        if on_gpu:
            measure(f"model eager {kind}", plain, half_batches)
        return
    torch.compiler.reset()
    step = getattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)
    graph = torch.compile(plain, mode=None if args.compile_mode == "default" else args.compile_mode)

    def run_compiled(x: torch.Tensor) -> torch.Tensor:
        step()  # CUDA graphs: the previous output has been copied to the host
        return graph(x)

    measure(f"model compiled {kind}", run_compiled, half_batches, f"mode {args.compile_mode}: ")


# --------------------------------------------------------------------------- (3) end to end


def end_to_end(
    name: str,
    loaded: LoadedModel,
    scene: Path,
    workdir: Path,
    engine: Any,
    args: argparse.Namespace,
    results: Results,
) -> None:
    """``classify_scene`` on ``scene``: one warm-up run, then timed runs."""
    options = rsscgeo.ClassifyOptions(batch_size=args.batch_size, backend="torch")
    outputs = rsscgeo.ClassifyOutputs(geotiff=workdir / f"{name}.tif", overwrite=True)

    def once() -> tuple[int, float, Any]:
        started = time.perf_counter()
        summary = rsscgeo.classify_scene([scene], loaded, options, outputs, engine, progress=False)
        seconds = time.perf_counter() - started
        return summary.classified, seconds, summary  # skipped edge patches cost no model time

    try:
        patches, warm, summary = once()
        note = next((n for n in summary.notes if n.startswith("backend:")), "")
        done = runs = 0
        spent = 0.0
        while runs < max(1, args.e2e_repeats):
            patches, seconds, summary = once()
            done += patches
            spent += seconds
            runs += 1
            if spent >= args.max_seconds:
                break
        text = f"{runs} run(s) of {patches} patches, {spent:.2f} s (warm-up {warm:.2f} s)"
        if summary.skipped:
            text += f", {summary.skipped} skipped"
        results.add(Row(name, "e2e", done, spent, loaded.card.patch_size, f"{text}; {note}"))
    except Exception as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        results.add(Row(name, "e2e", note=f"failed: {type(err).__name__}: {first}"))


# --------------------------------------------------------------------------- report


def _verdict(value: float, target: float) -> str:
    return "ok" if value >= target else "MISSED"


def report(args: argparse.Namespace, results: Results, wall: float) -> None:
    """Print the table and the JSON line."""
    print()
    print(f"{'model':<9} {'path':<24} {'patches/s':>10} {'MP/s':>9}  note")
    for row in results.rows:
        if row.seconds:
            figures = f"{row.patches_per_second:>10.1f} {row.megapixels_per_second:>9.1f}"
        else:
            figures = f"{'-':>10} {'-':>9}"
        print(f"{row.model:<9} {row.path:<24} {figures}  {row.note}")
    print()
    summary: dict[str, Any] = {}
    for model in args.models:
        best, e2e = results.best_model_only(model), results.e2e(model)
        entry: dict[str, Any] = {
            "model_only_best": best.path if best else None,
            "model_only_patches_per_s": best.patches_per_second if best else None,
            "model_only_mp_per_s": best.megapixels_per_second if best else None,
            "e2e_patches_per_s": e2e.patches_per_second if e2e else None,
            "e2e_mp_per_s": e2e.megapixels_per_second if e2e else None,
        }
        if best and e2e:
            ratio = e2e.patches_per_second / best.patches_per_second
            entry["ratio"] = ratio
            print(
                f"{model}: e2e / model-only ({best.path}) = {ratio:.2f} "
                f"(target >= {TARGET_RATIO}: {_verdict(ratio, TARGET_RATIO)})"
            )
        if model == "resnet50" and e2e:
            mps = e2e.megapixels_per_second
            print(
                f"resnet50: e2e {mps:.0f} MP/s "
                f"(target >= {TARGET_RESNET_MPS:.0f}: {_verdict(mps, TARGET_RESNET_MPS)})"
            )
        summary[model] = entry
    if args.tiny:
        print("(--tiny: a smoke check; the figures say nothing about the targets)")
    print(f"wall time {wall:.1f} s")
    payload = {
        "device": results.facts.get("device_name"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "wall_seconds": wall,
        "facts": results.facts,
        "summary": summary,
        "rows": [
            {
                "model": r.model,
                "path": r.path,
                "patches": r.patches,
                "seconds": r.seconds,
                "patches_per_s": r.patches_per_second,
                "mp_per_s": r.megapixels_per_second,
                "note": r.note,
            }
            for r in results.rows
        ],
    }
    print("@@json " + json.dumps(payload))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options; ``--tiny`` fills in small defaults for a CPU check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="small scene, batch 8, no compile")
    parser.add_argument("--models", default=",".join(MODELS), help="bundled,resnet50")
    parser.add_argument("--size", type=int, help="scene side in px (8192; --tiny 600)")
    parser.add_argument("--batch-size", type=int, help="patches per batch (256; --tiny 8)")
    parser.add_argument("--max-seconds", type=float, help="per path (10; --tiny 2)")
    parser.add_argument("--max-batches", type=int, help="model-only batches (2000; --tiny 4)")
    parser.add_argument("--e2e-repeats", type=int, help="timed e2e runs (3; --tiny 1)")
    parser.add_argument("--workers", type=int, help="open_engine(workers=...): all cores")
    parser.add_argument(
        "--compile-mode",
        choices=("none", "default", "reduce-overhead", "max-autotune"),
        help="torch.compile mode (reduce-overhead; --tiny and --device cpu: none)",
    )
    parser.add_argument("--compile-reserve", type=float, default=150.0)
    parser.add_argument("--budget", type=float, default=450.0, help="whole-run seconds")
    parser.add_argument("--agreement-patches", type=int, default=256)
    parser.add_argument("--workdir", type=Path, help="keep the scene here (default: temp)")
    args = parser.parse_args(argv)
    tiny = args.tiny
    defaults = {
        "size": 600 if tiny else 8192,
        "batch_size": 8 if tiny else 256,
        "max_seconds": 2.0 if tiny else 10.0,
        "max_batches": 4 if tiny else 2000,
        "e2e_repeats": 1 if tiny else 3,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.compile_mode is None:
        args.compile_mode = "none" if tiny or args.device == "cpu" else "reduce-overhead"
    if tiny:
        args.agreement_patches = min(args.agreement_patches, 16)
    args.models = [m for m in args.models.split(",") if m]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {MODELS}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Write the scene, then measure agreement, model-only, end to end and compiled."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    budget = Budget(args.budget)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: use --device cpu (with --tiny for a quick check)")
    results = Results()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    results.facts.update(
        device_name=name or "cpu",
        torch=torch.__version__,
        rsscgeo=getattr(rsscgeo, "__version__", "?"),
        cpu_threads=torch.get_num_threads(),
    )
    print(f"device {results.facts['device_name']}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rsscgeo-gpu-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        scene = workdir / f"scene_{args.size}.tif"
        if not scene.exists():
            seconds = _throughput_module().write_scene(scene, args.size)
            print(f"wrote {scene.name} ({args.size}^2 RGB uint8) in {seconds:.1f} s", flush=True)
        results.facts["scene_px"] = args.size

        print("agreement (bundled, classify_patches, CPU fp32 vs device):", flush=True)
        check = agreement(device, args.agreement_patches, args.batch_size, scene)
        results.facts["agreement"] = check
        print(
            f"  {check['patches']} patches of {check['source']}: max |p_dev - p_cpu| = "
            f"{check['max_abs_diff']:.4f}, top-1 agreement {check['top1_agreement']:.3f}",
            flush=True,
        )

        loaded = {name: get_model(name) for name in args.models}
        print("model-only (eager):", flush=True)
        for name in args.models:
            model_only(name, loaded[name], device, args, results, compiled=False)
            if device.type == "cuda":
                torch.cuda.empty_cache()

        print("end to end (classify_scene):", flush=True)
        opened = time.perf_counter()
        with rsscgeo.open_engine(device=args.device, workers=args.workers) as engine:
            results.facts["engine"] = engine.description
            results.facts["engine_start_seconds"] = time.perf_counter() - opened
            print(f"  {engine.description} ({time.perf_counter() - opened:.1f} s)", flush=True)
            for name in args.models:
                if budget.left() <= 0:
                    results.add(Row(name, "e2e", note="skipped: over --budget"))
                    continue
                end_to_end(name, loaded[name], scene, workdir, engine, args, results)

        if args.compile_mode != "none":
            print(f"model-only (torch.compile mode={args.compile_mode}):", flush=True)
            for name in args.models:
                if budget.left() < args.compile_reserve:
                    results.add(
                        Row(name, "model compiled", note="skipped: too little --budget left")
                    )
                    continue
                model_only(name, loaded[name], device, args, results, compiled=True)
    report(args, results, time.perf_counter() - started)


if __name__ == "__main__":
    main()
