"""Zoo architectures, checkpoint loading against the real pretrained ResNets, and entry points."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepress.core.datapath import data_root
from edgepress.core.errors import UserError
from edgepress.models import data
from edgepress.models.checkpoint import load_checkpoint
from edgepress.models.small_cnn import SmallCNN
from edgepress.models.zoo import ZOO, build_model, default_input_shape
from edgepress.core.data_spec import DatasetSpec, PreprocessSpec

WEIGHTS = data_root() / "weights"
needs_real_data = pytest.mark.skipif(
    not (WEIGHTS.is_dir() and (data_root() / "cifar10").is_dir()),
    reason=f"shared data not found at {data_root()} (set EDGEPRESS_DATA to the shared data folder)")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# The image classifiers; the text encoder (minilm_l6) has its own tests in test_minilm.py.
@pytest.mark.parametrize("name", sorted(name for name, entry in ZOO.items() if entry.tokenizer is None))
def test_zoo_model_builds_and_runs(name: str) -> None:
    entry = ZOO[name]
    for kwargs, classes in (({}, 1000 if name == "mobilenetv2_imagenet" else 10), ({"num_classes": 7}, 7)):
        model = build_model(name=name, entry=None, kwargs=kwargs).eval()
        with torch.no_grad():
            out = model(torch.randn(2, *entry.input_shape))
        assert out.shape == (2, classes)
        assert torch.isfinite(out).all()
    assert default_input_shape(name=name, entry=None) == entry.input_shape


def test_resnet_parameter_counts_match_the_paper() -> None:
    counts = {depth: sum(p.numel() for p in build_model(name=f"cifar_resnet{depth}", entry=None,
                                                         kwargs={}).parameters()) for depth in (20, 56)}
    assert counts == {20: 269_722, 56: 853_018}


def test_mobilenetv2_width_and_variant() -> None:
    full = build_model(name="mobilenetv2_imagenet", entry=None, kwargs={})
    assert sum(p.numel() for p in full.parameters()) == 3_504_872  # torchvision's mobilenet_v2
    half = build_model(name="mobilenetv2_cifar", entry=None, kwargs={"width_mult": 0.5}).eval()
    with torch.no_grad():
        assert half(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    # CIFAR variant keeps 32x32 down to 4x4 before pooling (strides 1,1,2,2,1,2,1 overall /8).
    assert half.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)


@pytest.fixture(scope="module")
def cifar_test() -> tuple[torch.Tensor, np.ndarray]:
    raw = data.load_dataset(DatasetSpec(dataset="cifar10:test_raw_1017"))
    spec = PreprocessSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    return torch.from_numpy(data.preprocess(images=raw.images, spec=spec)), raw.labels


@needs_real_data
@pytest.mark.parametrize("name,file,published", [
    ("cifar_resnet20", "resnet20-12fca82f.th", 91.64),
    ("cifar_resnet56", "resnet56-4bfd9763.th", 92.72),
])
@pytest.mark.slow
def test_pretrained_resnet_reaches_published_accuracy(name: str, file: str, published: float,
                                                      cifar_test: tuple[torch.Tensor, np.ndarray]) -> None:
    model = build_model(name=name, entry=None, kwargs={})
    info = load_checkpoint(path=WEIGHTS / file, model=model)
    assert info["stripped_prefix"] == "module."
    assert "best_prec1" in info and info["tensors"] > 0
    images, labels = cifar_test
    model.eval()
    with torch.inference_mode():
        predicted = torch.cat([model(images[i:i + 128]).argmax(1) for i in range(0, len(images), 128)])
    accuracy = 100.0 * float((predicted.numpy() == labels).mean())
    assert abs(accuracy - published) <= 0.1, accuracy


@needs_real_data
def test_resnet56_checkpoint_into_resnet20_names_the_keys() -> None:
    model = build_model(name="cifar_resnet20", entry=None, kwargs={})
    with pytest.raises(UserError) as caught:
        load_checkpoint(path=WEIGHTS / "resnet56-4bfd9763.th", model=model)
    message = str(caught.value)
    assert "\n" not in message
    assert "unexpected" in message and "layer1.3.conv1.weight" in message
    assert "cifar_resnet56" in caught.value.fix


def test_shape_mismatch_names_key_and_both_shapes(tmp_path: Path) -> None:
    path = tmp_path / "wide.pt"
    torch.save(SmallCNN(width=8).state_dict(), path)
    with pytest.raises(UserError) as caught:
        load_checkpoint(path=path, model=SmallCNN(width=16))
    message = str(caught.value)
    assert "shape mismatches" in message
    assert "features.0.weight checkpoint [8, 1, 3, 3] vs model [16, 1, 3, 3]" in message


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model_state_dict", "model"])
def test_checkpoint_layouts_round_trip(tmp_path: Path, wrap: str) -> None:
    source = SmallCNN(width=4)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # as DataParallel saves
    path = tmp_path / "ckpt.pt"
    torch.save(state if wrap == "raw" else {wrap: state, "epoch": 3}, path)
    target = SmallCNN(width=4)
    info = load_checkpoint(path=path, model=target)
    assert info["tensors"] == len(state)
    assert (info.get("epoch") == 3) == (wrap != "raw")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def _saved(tmp_path: Path) -> bytes:
    path = tmp_path / "good.pt"
    torch.save(build_model(name="cifar_resnet20", entry=None, kwargs={}).state_dict(), path)
    return path.read_bytes()


@pytest.mark.parametrize("content", ["truncated", "random", "empty"])
def test_unreadable_checkpoint_is_a_user_error(tmp_path: Path, content: str) -> None:
    good = _saved(tmp_path)
    payload = {"truncated": good[: len(good) // 2],
               "random": np.random.default_rng(0).bytes(4096),
               "empty": b""}[content]
    path = tmp_path / "bad.pt"
    path.write_bytes(payload)
    with pytest.raises(UserError, match="not a readable torch checkpoint"):
        load_checkpoint(path=path, model=build_model(name="cifar_resnet20", entry=None, kwargs={}))


class _Custom:
    pass


def test_checkpoint_needing_code_execution_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": SmallCNN().state_dict(), "extra": _Custom()}, path)
    with pytest.raises(UserError, match="weights_only=False") as caught:
        load_checkpoint(path=path, model=SmallCNN())
    assert "_Custom" in str(caught.value) and "state_dict()" in caught.value.fix


def test_missing_and_stateless_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(path=tmp_path / "nope.pt", model=SmallCNN())
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 1, "lr": 0.1}, path)
    with pytest.raises(UserError, match="no state_dict"):
        load_checkpoint(path=path, model=SmallCNN())


def _entry_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    name = f"user_models_{uuid.uuid4().hex[:8]}"  # unique: sys.modules caches by name
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


ENTRY_SOURCE = """
    from torch import nn
    from edgepress.models.small_cnn import SmallCNN

    def build(num_classes=10, width=8):
        return SmallCNN(num_classes=num_classes, width=width)
    build.input_shape = (1, 12, 12)

    def plain(num_classes=10):
        return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes))

    def not_a_model():
        return "model"

    def broken(**kwargs):
        raise ValueError("width must be even")

    CONSTANT = 3
"""


def test_entry_point_works_like_a_zoo_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _entry_module(tmp_path, monkeypatch, ENTRY_SOURCE)
    model = build_model(name=None, entry=f"{module}:build", kwargs={"num_classes": 3}).eval()
    shape = default_input_shape(name=None, entry=f"{module}:build")
    assert shape == (1, 12, 12)
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 3)
    assert default_input_shape(name=None, entry=f"{module}:plain") is None


@pytest.mark.parametrize("target,kwargs,expected", [
    ("{m}:build", {"depth": 3}, "unexpected keyword argument 'depth'"),
    ("{m}:broken", {}, "width must be even"),
    ("{m}:not_a_model", {}, "not a torch.nn.Module"),
    ("{m}:biuld", {}, "has no function 'biuld'"),
    ("{m}:CONSTANT", {}, "not a function"),
    ("no_such_module_xyz:build", {}, "cannot import module 'no_such_module_xyz'"),
    ("{m}", {}, "not of the form"),
])
def test_bad_entry_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   target: str, kwargs: dict, expected: str) -> None:
    module = _entry_module(tmp_path, monkeypatch, ENTRY_SOURCE)
    with pytest.raises(UserError, match=expected) as caught:
        build_model(name=None, entry=target.format(m=module), kwargs=kwargs)
    assert "\n" not in str(caught.value)
    if "biuld" in target:
        assert "'build'" in caught.value.fix


def test_entry_module_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = _entry_module(tmp_path, monkeypatch, "import not_installed_dependency_xyz\n")
    with pytest.raises(UserError, match="needs 'not_installed_dependency_xyz'"):
        build_model(name=None, entry=f"{broken}:build", kwargs={})
    crashing = _entry_module(tmp_path, monkeypatch, "raise RuntimeError('boom')\n")
    with pytest.raises(UserError, match="RuntimeError: boom"):
        build_model(name=None, entry=f"{crashing}:build", kwargs={})


def test_unknown_zoo_name_suggests_the_closest() -> None:
    with pytest.raises(UserError) as caught:
        build_model(name="resnet56", entry=None, kwargs={})
    assert "'resnet56'" in str(caught.value) and "'cifar_resnet56'" in caught.value.fix
    with pytest.raises(UserError, match="mobilenetv2_cifar"):
        default_input_shape(name="mobilenet_cifar", entry=None)
    with pytest.raises(UserError, match="unexpected keyword argument"):
        build_model(name="cifar_resnet20", entry=None, kwargs={"width_mult": 2})


def test_exactly_one_of_name_and_entry() -> None:
    with pytest.raises(UserError, match="exactly one"):
        build_model(name=None, entry=None, kwargs={})
    with pytest.raises(UserError, match="exactly one"):
        build_model(name="cifar_resnet20", entry="a.b:c", kwargs={})


def test_entry_with_a_bad_input_shape_attribute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _entry_module(tmp_path, monkeypatch, """
        from edgepress.models.small_cnn import SmallCNN
        def build():
            return SmallCNN()
        build.input_shape = (1, 0, 28)
    """)
    with pytest.raises(UserError, match="not a tuple of positive ints"):
        default_input_shape(name=None, entry=f"{module}:build")
