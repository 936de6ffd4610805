"""``adapt``: fine-tune a model on a user's labelled patches of their own scenes.

The steps, each reading the scenes exactly as ``classify`` plans them:

1. place the labels on each scene's patch grid (``labels``);
2. read the labelled patches, and up to ``AdaptOptions.distill_patches`` unlabelled
   ones spread at random over the scenes; with the training tiles the model file
   carries (``exemplars``), they are what the base model teaches;
3. decide the adapted classes (``classes``): the base model's and the new names, or
   only the labelled ones;
4. cache the frozen trunk's output for augmented views of every patch (``tail``);
5. cross-validate on the labels for the temperature and the Uncertain threshold, then
   fit on all of them (``fit``);
6. write the adapted model, its card recording the base model, the scenes, a hash of
   the labels and the counts per class, with the base model's exemplars of the classes
   it keeps. Nothing is written until it is complete.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rsscgeo import __version__
from rsscgeo.adapt.classes import AdaptedClasses, adapted_classes
from rsscgeo.adapt.fit import (
    FitSettings,
    Teaching,
    TrainingData,
    cross_validate,
    fit,
    plain_logits,
)
from rsscgeo.adapt.labels import LabelRows, PatchLabels, labels_hash, place_labels
from rsscgeo.adapt.tail import SplitNetwork, merged_network, split_network, to_uint8, trunk_features
from rsscgeo.errors import LabelsError, OutputError
from rsscgeo.exemplars import Exemplars
from rsscgeo.modelfile import (
    Adaptation,
    Calibration,
    LoadedModel,
    ModelCard,
    Provenance,
    StageRecord,
    save_model,
)
from rsscgeo.progress import progress_bar
from rsscgeo.scene.options import ClassifyOptions
from rsscgeo.scene.patches import read_cells
from rsscgeo.scene.plan import ScenePlan, plan_scene
from rsscgeo.sources import SceneLike
from rsscgeo.stopping import STOP
from rsscgeo.training.batch_augment import BatchAugment
from rsscgeo.training.calibration import CalibrationConfig, calibrate

# The fewest labelled patches a cross-validation can be made with.
MIN_LABELS = 4


@dataclass(frozen=True)
class AdaptOptions:
    """How a model is adapted.

    Attributes:
        only_labelled_classes: Keep only the classes the labels name (no distillation).
        blocks: Network stages fine-tuned besides the classifier.
        views: Augmented views per labelled patch (the first is the plain patch; the
            others cycle through the 8 rotations/flips with crop and colour jitter).
        distill_patches: Unlabelled patches of the scenes the base model teaches.
        distill_views: Augmented views per unlabelled patch.
        rehearsal_views: Augmented views per exemplar (the base model's training tiles).
        rehearsal_weight: Weight of the exemplars' distillation term, relative to
            ``fit.distill_weight``.
        scene_weight: Weight of the scenes' distillation term, relative to
            ``fit.distill_weight``.
        folds: Cross-validation folds for the calibration (fewer with few labels).
        target_accuracy: Committed out-of-fold predictions must reach this accuracy
            (sets the Uncertain threshold, as training does on its validation split).
        fit: Training settings of each fit.
        augment_brightness: Largest relative brightness, contrast and saturation
            change of a view.
    """

    only_labelled_classes: bool = False
    # The last stage and the final convolution: each more stage multiplies a CPU step's
    # cost (EfficientNet-Lite0's second-to-last stage is 4 blocks on a 2x larger grid).
    blocks: int = 1
    views: int = 8
    distill_patches: int = 512
    distill_views: int = 2
    # 4 views at weight 2 kept 0.8-1.3 more points of AID's unlabelled classes than 2 at
    # weight 1, and weight 3 another 0.4-1.0 at 10 and 20 labels per class, each for
    # about a point of the scene (examples/adapt/README.md).
    rehearsal_views: int = 4
    rehearsal_weight: float = 3.0
    # The scenes' distillation also teaches the base model's mistakes there: weight 1
    # cost 2-3 points of the scene against 0.25 (UC Merced, 10 labels per class); without
    # it, the scene's classes that no label names lost 14 points, at 0.25 about 7
    # (examples/adapt/README.md).
    scene_weight: float = 0.25
    folds: int = 3
    target_accuracy: float = 0.97
    fit: FitSettings = field(default_factory=FitSettings)
    augment_brightness: float = 0.15


@dataclass(frozen=True)
class AdaptSummary:
    """What an adapt run did, for the command's report."""

    path: Path
    card: ModelCard
    labelled: dict[str, int]
    distilled: int


def adapt_model(
    loaded: LoadedModel,
    base_name: str,
    scenes: Sequence[SceneLike],
    labels: LabelRows,
    out: Path,
    options: AdaptOptions | None = None,
    read_options: ClassifyOptions | None = None,
    *,
    progress: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> AdaptSummary:
    """Adapt ``loaded`` to the ``labels`` on ``scenes`` and write it to ``out``.

    Args:
        loaded: The base model (a PyTorch network).
        base_name: The base model's name for the card (e.g. its file name).
        scenes: The scenes the labels were drawn on (each read as classify reads it).
        labels: The labelled rows (``labels.read_label_rows``).
        out: The adapted model's file (``.safetensors``).
        options: How to adapt (default: ``AdaptOptions()``).
        read_options: How classify reads the scenes (bands, GSD, patch size, ...;
            default: ``ClassifyOptions()``).
        progress: Show progress bars.
        say: Receives notes and warnings, in words.

    Raises:
        LabelsError: If the labels cannot be used (none on the scenes, too few).
        SceneError: If a scene cannot be read with this model.
        RunInterrupted: If a stop is requested (nothing is written).
    """
    card = loaded.card
    options = options or AdaptOptions()
    read_options = read_options or ClassifyOptions()
    torch_options = dataclasses.replace(read_options, backend="torch")
    plans = [plan_scene([scene], loaded, torch_options) for scene in scenes]
    names = [str(plan.reader.sources[0]) for plan in plans]
    placed = place_labels(labels, [p.grid for p in plans], names, say)
    tiles, label_names = _labelled_tiles(plans, placed, read_options.min_valid, say)
    tally = dict(Counter(label_names).most_common())
    if len(label_names) < MIN_LABELS:
        raise LabelsError(
            f"only {len(label_names)} labelled patches lie on the scenes; label at least "
            f"{MIN_LABELS} (a few per class) before adapting."
        )
    for name, n in tally.items():
        if n < 2:
            say(f"warning: {name!r} has {n} labelled patch; its calibration rests on it alone")
    generator = torch.Generator().manual_seed(options.fit.seed)
    distill = (
        _unlabelled_tiles(plans, placed, options.distill_patches, read_options.min_valid, generator)
        if not options.only_labelled_classes
        else torch.empty((0, *tiles.shape[1:]), dtype=torch.uint8)
    )
    # The base model's answers on its own training tiles keep the classes that the
    # scenes do not show; without them, only the scenes' unlabelled patches do.
    rehearse = None if options.only_labelled_classes else loaded.exemplars()
    if rehearse is None and not options.only_labelled_classes:
        say(
            "note: the model file carries no training tiles (exemplars); classes absent "
            "from these scenes may be forgotten"
        )
    base = split_network(loaded.model, options.blocks)
    augment = BatchAugment(
        card.input_size,
        tuple(card.mean),
        tuple(card.std),
        scale=(0.7, 1.0),
        dihedral=False,  # views turn tiles themselves (tail.dihedral)
        brightness=options.augment_brightness,
        contrast=options.augment_brightness,
        saturation=options.augment_brightness,
    )
    with progress_bar(4, "adapt: caching features", "set", disable=not progress) as bar:
        labelled = trunk_features(base, tiles, augment, options.views, generator)
        bar.update()
        distilled = trunk_features(base, distill, augment, options.distill_views, generator)
        bar.update()
        rehearsed = trunk_features(
            base,
            rehearse.tiles if rehearse is not None else distill[:0],
            augment,
            options.rehearsal_views,
            generator,
        )
        bar.update()
        base_top1 = plain_logits(base, labelled).argmax(1).tolist()
        classes = adapted_classes(
            card, label_names, base_top1, only_labelled=options.only_labelled_classes
        )
        start = _start(base, classes, labelled, label_names)
        data = _training_data(
            base,
            classes,
            (labelled, label_names, base_top1),
            (distilled, options.scene_weight),
            (rehearsed, options.rehearsal_weight),
        )
        bar.update()
    folds = max(2, min(options.folds, len(label_names) // 2))
    steps = options.fit.steps * (folds + 1)
    with progress_bar(steps, "adapt: fitting", "step", disable=not progress) as bar:
        oof = cross_validate(start, data, folds, options.fit, lambda: bar.update())
        calibration = calibrate(
            oof,
            data.allowed,
            CalibrationConfig(target_accuracy=options.target_accuracy),
            f"{folds}-fold cross-validation on {len(label_names)} labelled patches",
        )
        final = fit(start, data, torch.arange(len(label_names)), options.fit, lambda: bar.update())
    network = merged_network(loaded.model, final)
    kept = _kept_exemplars(rehearse, classes, card.num_classes)
    adapted_card = _card(
        loaded,
        base_name,
        classes,
        calibration,
        names,
        labels,
        placed,
        tally,
        options,
        (len(distill), kept),
    )
    STOP.check()  # the last safe point: from here the file is written whole
    with STOP.deferred():
        _save(out, network, adapted_card, kept)
    return AdaptSummary(out, adapted_card, tally, len(distill))


def _kept_exemplars(
    exemplars: Exemplars | None, classes: AdaptedClasses, base_classes: int
) -> Exemplars | None:
    """The base exemplars of the classes the adapted model keeps, under its class indexes."""
    if exemplars is None:
        return None
    adapted = classes.of_base
    return exemplars.remapped([adapted.get(c, -1) for c in range(base_classes)])


def _labelled_tiles(
    plans: list[ScenePlan], placed: list[PatchLabels], min_valid: float, say: Callable[[str], None]
) -> tuple[torch.Tensor, list[str]]:
    """The labelled patches as scaled uint8 tiles, and their names (mostly-nodata dropped)."""
    tiles, names, dropped = [], [], 0
    for plan, labels in zip(plans, placed, strict=True):
        if not len(labels.rows):
            continue
        raw, valid = read_cells(plan, labels.rows.tolist(), labels.cols.tolist())
        keep = valid >= min_valid
        dropped += int((~keep).sum())
        tiles.append(to_uint8(raw[torch.from_numpy(keep)], plan.scaling))
        names += [n for n, k in zip(labels.names, keep, strict=True) if k]
    if dropped:
        say(f"warning: {dropped} labelled patches are mostly nodata and are ignored")
    if not names:
        raise LabelsError("every labelled patch is mostly nodata; label patches with imagery.")
    return torch.cat(tiles), names


def _unlabelled_tiles(
    plans: list[ScenePlan],
    placed: list[PatchLabels],
    count: int,
    min_valid: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Up to ``count`` unlabelled patches drawn at random over all scenes.

    Patches below ``min_valid`` are left out, so fewer may come back.
    """
    sizes = [plan.grid.rows * plan.grid.cols for plan in plans]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    labelled = {
        starts[p.scene] + r * plans[p.scene].grid.cols + c
        for p in placed
        for r, c in zip(p.rows.tolist(), p.cols.tolist(), strict=True)
    }
    drawn = torch.randperm(sum(sizes), generator=generator)[: count + len(labelled)].tolist()
    chosen = [i for i in drawn if i not in labelled][:count]
    grid = plans[0].grid
    tiles = [
        torch.empty(
            (0, len(plans[0].reader.band_indexes), grid.patch, grid.patch), dtype=torch.uint8
        )
    ]
    for index, plan in enumerate(plans):
        mine = [
            i - starts[index] for i in chosen if starts[index] <= i < starts[index] + sizes[index]
        ]
        if not mine:
            continue
        rows, cols = [i // plan.grid.cols for i in mine], [i % plan.grid.cols for i in mine]
        raw, valid = read_cells(plan, rows, cols)
        tiles.append(to_uint8(raw[torch.from_numpy(valid >= min_valid)], plan.scaling))
    return torch.cat(tiles)


def _start(
    base: SplitNetwork, classes: AdaptedClasses, labelled: torch.Tensor, names: list[str]
) -> SplitNetwork:
    """The network adapting starts from: the base one with a classifier for ``classes``.

    Kept classes keep their base weights; a new class starts at the mean direction of
    its patches' features (weight imprinting), scaled like the base rows.
    """
    old = base.classifier
    layer = torch.nn.Linear(old.in_features, len(classes.classes))
    with torch.no_grad():
        features = F.normalize(base.tail(labelled[0]), dim=1)
        norm = old.weight.norm(dim=1).mean()
        for i, (info, index) in enumerate(zip(classes.classes, classes.base_index, strict=True)):
            if index >= 0:
                layer.weight[i] = old.weight[index]
                layer.bias[i] = old.bias[index]
            else:
                mine = torch.tensor([n == info.name for n in names])
                layer.weight[i] = F.normalize(features[mine].mean(0), dim=0) * norm
                layer.bias[i] = old.bias.mean()
    return dataclasses.replace(base, classifier=layer)


@torch.no_grad()
def _where_base_is_right(
    base: SplitNetwork, distilled: torch.Tensor, labelled: torch.Tensor, wrong: torch.Tensor
) -> torch.Tensor:
    """The unlabelled patches whose nearest labelled patch the base model answers right.

    Distillation holds the adapted model to the base model's answers on unlabelled
    patches, so it must skip those where the labels show those answers to be wrong: the
    patches whose nearest labelled patch (cosine, the base model's pooled features of
    the plain view) is one the base model misnames (every patch of a new class is).
    Otherwise the base model's mistakes on the scene are taught against the labels.
    """
    if not bool(wrong.any()) or not len(distilled[0]):
        return distilled
    unlabelled = F.normalize(base.tail(distilled[0]), dim=1)
    reference = F.normalize(base.tail(labelled[0]), dim=1)
    nearest = (unlabelled @ reference.T).argmax(1)
    return distilled[:, ~wrong[nearest]]


@torch.no_grad()
def _training_data(
    base: SplitNetwork,
    classes: AdaptedClasses,
    labels: tuple[torch.Tensor, list[str], list[int]],
    scene: tuple[torch.Tensor, float],
    rehearsal: tuple[torch.Tensor, float],
) -> TrainingData:
    """Targets, groups and the base model's teaching for the cached views.

    ``labels`` holds the labelled patches' cached views, their names and the base
    model's top class on each. The base model teaches on the scenes' unlabelled patches
    (less those nearest a label it gets wrong) and on every exemplar (each of a base
    class by construction), with the weights ``scene`` and ``rehearsal`` give.
    """
    labelled, names, base_top1 = labels
    distilled, scene_weight = scene
    rehearsed, rehearsal_weight = rehearsal
    order = sorted(set(names))
    groups = torch.tensor([order.index(n) for n in names])
    kept = [i for i, b in enumerate(classes.base_index) if b >= 0]
    columns = [classes.base_index[i] for i in kept]
    allowed = classes.targets(names)
    adapted_of = classes.of_base
    wrong = torch.tensor(
        [
            t not in adapted_of or not bool(allowed[i, adapted_of[t]])
            for i, t in enumerate(base_top1)
        ]
    )
    distilled = _where_base_is_right(base, distilled, labelled, wrong)
    return TrainingData(
        labelled,
        allowed,
        groups,
        (
            _teaching(base, distilled, columns, scene_weight),
            _teaching(base, rehearsed, columns, rehearsal_weight),
        ),
        torch.tensor(kept, dtype=torch.long),
    )


def _teaching(
    base: SplitNetwork, features: torch.Tensor, columns: list[int], weight: float
) -> Teaching:
    """The base model's probabilities over its kept ``columns`` on every view of ``features``."""
    if not len(features[0]):
        return Teaching(features, torch.empty((features.shape[0], 0, len(columns))), weight)
    views = [F.softmax(base.logits(view)[:, columns], 1) for view in features]
    return Teaching(features, torch.stack(views), weight)


def _card(
    loaded: LoadedModel,
    base_name: str,
    classes: AdaptedClasses,
    calibration: Calibration,
    scenes: list[str],
    labels: LabelRows,
    placed: list[PatchLabels],
    tally: dict[str, int],
    options: AdaptOptions,
    taught: tuple[int, Exemplars | None],
) -> ModelCard:
    """The adapted model's card; ``taught``: the unlabelled patches and the exemplars."""
    card = loaded.card
    distilled, exemplars = taught
    rehearsed = len(exemplars) if exemplars is not None else 0
    base = card.provenance
    earlier = StageRecord(
        protocol=base.protocol,
        init=base.init,
        dataset=base.dataset,
        objective=f"the base model {base_name}, as its own card records it",
        epochs=0,
        metrics=base.metrics,
    )
    adaptation = Adaptation(
        base_model=base_name,
        base_identity=loaded.identity,
        scenes=scenes,
        labels_file=str(labels.path),
        labels_sha256=labels_hash(placed, scenes),
        label_counts=tally,
        new_classes=classes.new,
        only_labelled_classes=options.only_labelled_classes,
        adapted_blocks=options.blocks,
        distilled_patches=distilled,
        rehearsed_exemplars=rehearsed,
        cross_validation=calibration.metrics,
    )
    provenance = Provenance(
        dataset=f"{sum(tally.values())} labelled patches on {', '.join(scenes)}",
        protocol="adapt",
        init=f"{base_name} ({loaded.identity[:12]})",
        metrics={},
        rsscgeo_version=__version__,
        notes=_notes(options, distilled, rehearsed),
        stages=[*base.stages, earlier],
    )
    return ModelCard.model_validate(
        card.model_dump()
        | {
            "classes": [c.model_dump() for c in classes.classes],
            "parents": [p.model_dump() for p in classes.parents],
            "calibration": calibration.model_dump(),
            "provenance": provenance.model_dump(),
            "adaptation": adaptation.model_dump(),
            "exemplars": _exemplar_info(card, exemplars),
        }
    )


def _exemplar_info(card: ModelCard, kept: Exemplars | None) -> dict[str, object] | None:
    if kept is None or card.exemplars is None:
        return None
    return card.exemplars.model_copy(update={"count": len(kept)}).model_dump()


def _notes(options: AdaptOptions, distilled: int, rehearsed: int) -> str:
    what = (
        f"rsscgeo adapt: the last {options.blocks} stages and the classifier fine-tuned on "
        f"{options.views} views per labelled patch"
    )
    if options.only_labelled_classes:
        return f"{what}; only the labelled classes kept"
    taught = f"{distilled} unlabelled patches"
    if rehearsed:
        taught += f" and {rehearsed} of its own training tiles"
    return f"{what}, the base model distilled on {taught}"


def _save(
    out: Path, network: torch.nn.Module, card: ModelCard, exemplars: Exemplars | None
) -> None:
    """Write the model whole or not at all (``save_model`` writes a temporary first)."""
    try:
        save_model(out, network, card, half=True, exemplars=exemplars)
    except BaseException:
        out.with_name(out.name + ".tmp").unlink(missing_ok=True)
        raise
    if not out.exists():
        raise OutputError(f"{out} was not written; check the folder's permissions.")
