"""Untrusted files, case by case (issue 6, point 3; tests/test_fuzz.py throws thousands at the same code):
external data outside a model's folder, checkpoints that would run code, oversized recipes, zip bombs and
lying array headers, models whose declared inputs would exhaust a device's memory."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepress.core.errors import UserError
from edgepress.io.onnx_check import check_onnx_file
from edgepress.core.schema import MAX_TOML_BYTES, read_toml
from tests.conftest import ROOT, assert_one_line_error, run_main, write_recipe

RUNNER = ROOT / "runtime" / "device_runner.py"
WEIGHTS = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096


def external_model(folder: Path, location: str, *, write: str | None = None, batch: int | str = "batch") -> Path:
    """y = x @ W with W in external data at `location`; `write` puts the bytes there (relative to `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensor = numpy_helper.from_array(WEIGHTS, "W")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(WEIGHTS.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 64])], [tensor])
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    if write is not None:
        (folder / write).parent.mkdir(parents=True, exist_ok=True)
        WEIGHTS.tofile(folder / write)
    return path


def hostile_locations(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """{case: (model, the text ONNX Runtime's refusal contains)}: each reads weights that exist, outside its folder."""
    outside = tmp_path / "outside.data"
    WEIGHTS.tofile(outside)
    link_folder = tmp_path / "link"
    linked = external_model(link_folder, "w.data")
    (link_folder / "w.data").symlink_to(outside)
    return {
        "dot-dot": (external_model(tmp_path / "a", "../outside.data"), "escapes model directory"),
        "dot-dot inside a subfolder": (external_model(tmp_path / "b", "sub/../../outside.data", write="sub/x"),
                                       "escapes model directory"),
        "absolute": (external_model(tmp_path / "c", str(outside)), "Absolute path not allowed"),
        "symlink out": (linked, "escapes model directory"),
    }


def test_onnx_runtime_itself_refuses_external_data_outside_the_models_folder(tmp_path):
    """What ONNX Runtime (1.32) does on its own, so the device runner needs no check of its own: it refuses
    absolute locations, '..' that leaves the folder and symlinks that point out, and reads a valid one."""
    for case, (model, refusal) in hostile_locations(tmp_path).items():
        with pytest.raises(Exception, match=refusal):
            ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        done = subprocess.run([sys.executable, str(RUNNER), "bench", str(model), "--runs", "3", "--warmup", "1"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and refusal in json.loads(done.stdout)["error"], (case, done.stdout, done.stderr)
    valid = external_model(tmp_path / "valid", "w.data", write="w.data")
    session = ort.InferenceSession(str(valid), providers=["CPUExecutionProvider"])
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ WEIGHTS, rtol=1e-5)


def test_host_check_names_the_outside_location_before_any_session(tmp_path):
    for case, (model, _) in hostile_locations(tmp_path).items():
        with pytest.raises(UserError) as caught:
            check_onnx_file(model, what="MODEL")
        message = caught.value.one_line()
        assert "model.onnx" in message and ("outside" in message or "symbolic link" in message), (case, message)
    missing = external_model(tmp_path / "missing", "nowhere.data")
    with pytest.raises(UserError, match="'nowhere.data' of tensor 'W' is missing"):
        check_onnx_file(missing)
    short = external_model(tmp_path / "short", "w.data")
    (short.parent / "w.data").write_bytes(b"\0" * 16)
    with pytest.raises(UserError, match="reads bytes 0..16384 of 'w.data', which has 16"):
        check_onnx_file(short)


def test_bench_carries_external_data_beside_the_model_and_refuses_it_outside(tmp_path):
    valid = external_model(tmp_path / "valid", "w.data", write="w.data")
    proc = run_main("bench", str(valid), "--runs", "5", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["runs"] == 5
    model, _ = hostile_locations(tmp_path)["dot-dot"]
    assert_one_line_error(run_main("bench", str(model), "--runs", "5"), "'../outside.data'", "outside")


def test_a_recipe_refuses_a_source_model_with_external_data(tmp_path):
    """The run copies only the .onnx file into its stage folder: the weights would be left behind."""
    model = external_model(tmp_path / "m", "w.data", write="w.data")
    recipe = write_recipe(tmp_path, text=f"""
        [model]
        onnx = "{model}"
        [data]
        evaluation = [{{ dataset = "digits:test", limit = 8 }}]
    """)
    assert_one_line_error(run_main("check", str(recipe)), "external data (w.data)", "onnx.save")


def test_runner_refuses_random_inputs_that_would_exhaust_memory(tmp_path):
    """A model may declare any input size; the runner refuses more than 1 GiB of random inputs up front."""
    model = external_model(tmp_path / "huge", "w.data", write="w.data", batch=1_000_000_000)
    done = subprocess.run([sys.executable, str(RUNNER), "bench", str(model), "--runs", "3", "--warmup", "1"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path / "huge")
    assert done.returncode == 2, done.stderr
    assert "more than 1 GiB of random values" in json.loads(done.stdout)["error"]
    assert "Traceback" not in done.stderr


def test_recipe_files_larger_than_a_mebibyte_are_refused_unread(tmp_path):
    big = tmp_path / "big.toml"
    big.write_bytes(b"# padding\n" * (MAX_TOML_BYTES // 10) + b'name = "x"\n')
    with pytest.raises(UserError, match="larger than 1 MiB"):
        read_toml(big, what="recipe")
    nested = tmp_path / "nested.toml"
    nested.write_text("a = " + "[" * 50_000 + "]" * 50_000)
    with pytest.raises(UserError, match="nests arrays or tables too deeply"):
        read_toml(nested, what="budgets file")
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # reading it would wait forever for a writer
    with pytest.raises(UserError, match="is not a file"):
        read_toml(fifo, what="recipe")
    bom = tmp_path / "bom.toml"
    bom.write_bytes("\ufeffname = 'x'\n".encode())
    assert read_toml(bom, what="recipe") == {"name": "x"}


class _Mkdir:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_never_run(tmp_path, legacy):
    import torch

    from edgepress.models.checkpoint import load_checkpoint
    from edgepress.models.small_cnn import small_cnn

    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"features.0.weight": _Mkdir(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UserError, match=r"holds Python objects \(posix.mkdir\)"):
        load_checkpoint(path=path, model=small_cnn(width=8))
    assert not marker.exists()


def test_a_checkpoint_value_that_is_no_tensor_is_named(tmp_path):
    import torch

    from edgepress.models.checkpoint import load_checkpoint
    from edgepress.models.small_cnn import small_cnn

    state = small_cnn(width=8).state_dict()
    path = tmp_path / "odd.pt"
    torch.save({**state, "classifier.weight": "zeros", "classifier.bias": torch.empty(10, device="meta")}, path)
    with pytest.raises(UserError, match=r"2 values are not dense tensors with data \(classifier.weight: a str, "
                                        r"classifier.bias: a meta tensor without data\)"):
        load_checkpoint(path=path, model=small_cnn(width=8))


def test_schema_refuses_what_no_setting_means(tmp_path):
    from edgepress import recipe as recipe_mod
    from tests.conftest import TINY_RECIPE

    text = TINY_RECIPE.format(epochs=1, budgets="")
    cases = {
        "epochs = 1": ("epochs = 18446744073709551616", "'stages[0].epochs' = 18446744073709551616 is out of range"),
        "std = [0.5]": ("std = [nan]", "'data.preprocess.std[0]' must be a finite number, got nan"),
        "limit = 400 }": ("limit = 400, limits = 1 }", "unknown key 'data.training.limits'"),
        'kind = "ptq"': ('kind = ["ptq"]', "unknown stage kind ['ptq']"),
        'reference_stage = "train"': ('reference_stage = ["train"]', "reference_stage ['train'] names no stage"),
        'name = "small_cnn_8"': ('name = "small_cnn_8"\ncheckpoint = "w\\u0000.pt"', "contains a NUL character"),
        'name = "small_cnn_8"\n': ('name = "small_cnn_8"\ncheckpoint = "~nobody-edgepress/w.pt"\n',
                                   "'model.checkpoint' = '~nobody-edgepress/w.pt' is not a usable path"),
    }
    for old, (new, expected) in cases.items():
        assert old in text, old
        recipe = write_recipe(tmp_path, text=text.replace(old, new, 1))
        with pytest.raises(UserError) as caught:
            recipe_mod.load(recipe)
        assert expected in caught.value.one_line()


def _zip_bomb_entries(path: Path, *, count: int) -> None:
    """Append `count` entries of 1 MiB of zeros whose central directory records each claim 4 GiB unpacked: what a
    reader allocates by, at no cost to write (a real 12 GiB bomb would take minutes to deflate)."""
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        for index in range(count):
            archive.writestr(f"bomb/data/{90 + index}", bytes(1 << 20))
    data = bytearray(path.read_bytes())
    for index in range(count):
        name = f"bomb/data/{90 + index}".encode()
        record = data.rindex(b"PK\x01\x02", 0, data.rindex(name))  # its central directory record
        data[record + 24: record + 28] = (0xFFFFFFF0).to_bytes(4, "little")  # uncompressed size
    path.write_bytes(bytes(data))


def test_zip_bombs_and_lying_npy_headers_are_refused_before_anything_is_allocated(tmp_path):
    import torch

    from edgepress.models.checkpoint import load_checkpoint
    from edgepress.models.data import load_dataset
    from edgepress.models.small_cnn import small_cnn
    from edgepress.core.data_spec import DatasetSpec

    checkpoint = tmp_path / "bomb.pt"
    torch.save(small_cnn(width=8).state_dict(), checkpoint)
    _zip_bomb_entries(checkpoint, count=3)
    assert checkpoint.stat().st_size < 4 << 20
    with pytest.raises(UserError, match=r"would unpack to 122\d\d MiB, more than the \d+ MiB edgepress unpacks"):
        load_checkpoint(path=checkpoint, model=small_cnn(width=8))

    fake = io.BytesIO()  # an .npy header that promises 64 TB, and 256 bytes of data
    np.lib.format.write_array_header_1_0(fake, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 8, 8)})
    fake.write(bytes(256))
    liar = tmp_path / "liar.npz"
    with zipfile.ZipFile(liar, "w") as archive:
        archive.writestr("images.npy", fake.getvalue())
        archive.writestr("labels.npy", b"")
    with pytest.raises(UserError, match=r"array 'images' declares shape \[1000000000000, 8, 8\] .* holds 384 bytes"):
        load_dataset(DatasetSpec(path=liar))
