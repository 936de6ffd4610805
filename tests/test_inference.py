"""The classify fast paths agree with their straightforward references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.merge
import torch
from helpers import write_raster
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.windows import Window

from rsscgeo._torchgeo import MosaicDataset
from rsscgeo.modelfile import BUNDLED_MODEL, LoadedModel, read_card
from rsscgeo.predict import card_transform
from rsscgeo.scene.inference import Preprocess, Scaling


def reference(card, scaling: Scaling, patches: torch.Tensor) -> torch.Tensor:
    """Scale to 0..1, clip, then the card's own eval transform (resize, crop, normalise)."""
    low = torch.tensor(scaling.low).view(1, -1, 1, 1)
    high = torch.tensor(scaling.high).view(1, -1, 1, 1)
    scaled = ((patches.float() - low) / (high - low)).clamp(0, 1)
    return card_transform(card)(scaled)


@pytest.mark.parametrize(
    ("resize", "crop", "dtype"),
    [
        (176, None, torch.uint8),  # the bundled model: enlarge
        (150, None, torch.uint8),  # the patch as read
        (128, 112, torch.uint8),  # shrink (antialiased) and crop
        (176, 160, torch.float32),  # a stretched 16-bit scene, values beyond the range
    ],
)
@pytest.mark.parametrize("channels_last", [True, False])
def test_preprocess_equals_scaling_then_the_card_transform(
    resize: int, crop: int | None, dtype: torch.dtype, channels_last: bool
) -> None:
    card = read_card(BUNDLED_MODEL).model_copy(update={"eval_resize": resize, "eval_crop": crop})
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 300, 450), generator=generator, dtype=torch.uint8)
    if dtype == torch.uint8:
        scaling = Scaling.divide_by(255, 3)
    else:
        image = image.float() * 40 - 500  # 12-bit-like values, some below/above the stretch
        scaling = Scaling((100.0, 200.0, 300.0), (5000.0, 6000.0, 7000.0))
    # A strided view of the chunk, as cut_patches passes it.
    patches = image.unfold(1, 150, 150).unfold(2, 150, 150).permute(1, 2, 0, 3, 4)
    patches = patches.reshape(-1, 3, 150, 150)
    preprocess = Preprocess.build(card, scaling, dtype, channels_last=channels_last)
    batch = preprocess(patches)
    expected = reference(card, scaling, patches)
    assert batch.shape == expected.shape
    assert batch.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    assert (batch - expected).abs().max().item() < 1e-4


def merge_reference(path: Path, bounds, res) -> tuple[np.ndarray, np.ndarray]:
    """What rasterio.merge gives for one file: values and where all bands are valid."""
    with rasterio.open(path) as src:
        merged, _ = rasterio.merge.merge(
            [src], bounds, res, indexes=[1, 2, 3], masked=True, resampling=Resampling.bilinear
        )
    return np.ma.filled(merged, 0), ~np.ma.getmaskarray(merged).any(axis=0)


def read(path: Path, bounds, res) -> tuple[np.ndarray, np.ndarray]:
    dataset = MosaicDataset([str(path)], [1, 2, 3], res)
    left, bottom, right, top = bounds
    t = dataset.bounds[2]
    image = dataset[left : right : res[0], bottom : top : res[1], t.start : t.stop]["image"]
    return image[:-1].numpy(), image[-1].numpy() > 0


def test_windowed_read_matches_rasterio_merge_with_nodata_and_edges(scenes_dir: Path) -> None:
    path = scenes_dir / "rasterio" / "RGB.byte.tif"  # uint8 with nodata 0 around the scene
    with rasterio.open(path) as src:
        b, res = src.bounds, src.res
    # A window hanging over the top-left corner of the file, on the file's pixel grid.
    bounds = (
        b.left - 40 * res[0],
        b.top - 260 * res[1],
        b.left + 260 * res[0],
        b.top + 40 * res[1],
    )
    values, valid = read(path, bounds, res)
    expected_values, expected_valid = merge_reference(path, bounds, res)
    assert values.dtype == np.uint8
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_array_equal(values[:, valid], expected_values[:, valid])
    assert not valid[:40].any() and not valid[:, :40].any()  # outside the file


def test_decimated_read_keeps_the_mask(tmp_path: Path, scenes_dir: Path) -> None:
    path = scenes_dir / "rasterio" / "RGB.byte.tif"
    with rasterio.open(path) as src:
        b, res = src.bounds, (src.res[0] * 4, src.res[1] * 4)
    values, valid = read(path, (b.left, b.bottom, b.right, b.top), res)
    expected_values, expected_valid = merge_reference(path, (b.left, b.bottom, b.right, b.top), res)
    assert values.shape == expected_values.shape
    # GDAL resamples the mask from whole source pixels, merge from a blend: ours may
    # drop pixels next to nodata (single zero-valued pixels count too), never add any.
    assert not (valid & ~expected_valid).any()
    assert (valid == expected_valid).mean() > 0.95
    both = valid & expected_valid
    close = np.abs(values[:, both].astype(int) - expected_values[:, both].astype(int)) <= 2
    assert close.mean() > 0.99


def test_alpha_band_marks_invalid_pixels(tmp_path: Path) -> None:
    pixels = np.full((4, 64, 64), 120, np.uint8)
    pixels[3] = 255
    pixels[3, :, :16] = 0  # transparent left quarter
    path = write_raster(
        tmp_path / "rgba.tif",
        pixels,
        "EPSG:32633",
        from_origin(500000, 4000000, 2, 2),
        photometric="RGB",
        alpha="YES",
    )
    values, valid = read(path, (500000, 4000000 - 128, 500128, 4000000), (2.0, 2.0))
    assert not valid[:, :16].any() and valid[:, 16:].all()
    assert (values[:, valid] == 120).all()


def test_tta_is_the_mean_of_the_8_dihedral_transforms(repo_root: Path) -> None:
    from rsscgeo.modelfile import Calibration, load_model
    from rsscgeo.predict import DIHEDRAL, dihedral, probabilities
    from rsscgeo.scene.inference import classify_patches, prepare_model

    bundled = load_model(BUNDLED_MODEL)
    calibration = Calibration(temperature=1.7, uncertain_below=0.3, fitted_on="-", rule="-")
    card = bundled.card.model_copy(update={"calibration": calibration})
    loaded = prepare_model(LoadedModel(bundled.model, card), torch.device("cpu"))
    with rasterio.open(repo_root / "examples" / "scenes" / "naip_2020_rgbn.tif") as src:
        image = torch.from_numpy(src.read([1, 2, 3], window=Window(300, 150, 450, 300)))
    # Six real patches, as cut_patches cuts them (a strided view of the chunk).
    patches = image.unfold(1, 150, 150).unfold(2, 150, 150).permute(1, 2, 0, 3, 4)
    patches = patches.reshape(-1, 3, 150, 150)
    preprocess = Preprocess.build(card, Scaling.divide_by(255, 3), torch.uint8, channels_last=True)
    with torch.inference_mode():
        batch = preprocess(patches).clone()
        manual = torch.stack(
            [probabilities(loaded.model, dihedral(batch, t, f), card) for t, f in DIHEDRAL]
        ).mean(dim=0)
        logits = loaded.model(batch)
    tta = classify_patches(loaded, patches, preprocess, batch_size=4, tta=True)
    plain = classify_patches(loaded, patches, preprocess, batch_size=4)
    assert tta.shape == (6, card.num_classes)
    assert (tta - manual).abs().max().item() < 1e-5
    torch.testing.assert_close(tta.sum(dim=1), torch.ones(6))
    assert (tta - plain).abs().max().item() > 1e-3  # the transforms do change the scores
    # Without TTA: the softmax of the logits over the card's temperature.
    assert (plain - torch.softmax(logits / 1.7, dim=1)).abs().max().item() < 1e-5
