"""The files the fuzz test corrupts: the valid originals, and the broken and hostile versions made of them.

`Assets` makes the valid files once (a small CNN exported to ONNX, its checkpoint in the zip and the legacy
format, another architecture's checkpoint, a digits npz). `onnx_files`, `checkpoint_files` and `npz_files`
each write a few hundred (or few dozen) files from them: the byte-level mutants of fuzz_mutations, and files
made by hand to be hostile (external data pointing outside, subgraphs nested past protobuf's limits, a pickle
that runs os.mkdir, weights of the wrong type or shape, .npy headers that lie about their size).
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

from tests.fuzz_mutations import byte_mutants


class Assets:
    """The valid files every mutation starts from, made once in `folder`."""

    def __init__(self, folder: Path) -> None:
        import numpy as np
        import torch

        from edgepress.models.cifar_resnet import resnet20
        from edgepress.models.small_cnn import small_cnn

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = small_cnn(width=8).eval()
        self.state = model.state_dict()
        self.onnx = folder / "tiny.onnx"
        with warnings.catch_warnings():  # the torchscript exporter's deprecation notice: it is the quick one
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(self.onnx), dynamo=False, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
        self.checkpoint = folder / "tiny.pt"
        torch.save(self.state, self.checkpoint)
        self.legacy_checkpoint = folder / "tiny-legacy.pt"
        torch.save(self.state, self.legacy_checkpoint, _use_new_zipfile_serialization=False)
        self.other_architecture = folder / "resnet20.pt"
        torch.save(resnet20().state_dict(), self.other_architecture)
        rng = np.random.default_rng(0)
        np.savez(folder / "digits.npz", images=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
                 labels=rng.integers(0, 10, 40))
        self.pwned = folder / "PWNED"  # a checkpoint's pickle tries to create it: weights_only must refuse


class _Pwn:
    """Pickled as a call to os.mkdir: what torch.load(weights_only=False) would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def onnx_files(assets: Assets, folder: Path, rng: random.Random) -> list[tuple[str, Path]]:
    """(label, path) of a few hundred broken or hostile ONNX files, each in a folder of its own."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    folder.mkdir()
    base = assets.onnx.read_bytes()
    made: list[tuple[str, Path]] = []

    def place(label: str, data: bytes | None = None, *, model=None, extra=None) -> Path:
        home = folder / f"{len(made):04d}"
        home.mkdir()
        path = home / "model.onnx"
        if model is not None:
            onnx.save(model, str(path))
        elif data is not None:
            path.write_bytes(data)
        if extra:
            extra(home)
        made.append((label, path))
        return path

    place("the original (valid)", base)
    for label, data in byte_mutants(base, rng, truncations=40, flips=150, overwrites=40):
        place(label, data)
    for size in (1, 7, 64, 4096, 100_000):
        place(f"{size} random bytes", bytes(rng.randrange(256) for _ in range(size)))
    place("empty file", b"")
    place("a checkpoint given as ONNX", assets.checkpoint.read_bytes())
    place("a recipe given as ONNX", b'name = "x"\n[model]\nname = "small_cnn_8"\n')
    place("a zip given as ONNX", assets.checkpoint.read_bytes()[:200])
    home = folder / f"{len(made):04d}"
    (home / "model.onnx").mkdir(parents=True)
    made.append(("a folder named model.onnx", home / "model.onnx"))
    made.append(("a path that does not exist", folder / "absent" / "model.onnx"))

    # Structurally odd but parseable models.
    model = onnx.load(str(assets.onnx))
    variants = {
        "no graph": lambda m: m.ClearField("graph"),
        "IR version 0": lambda m: setattr(m, "ir_version", 0),
        "no opset import": lambda m: m.ClearField("opset_import"),
        "opset 1": lambda m: [setattr(o, "version", 1) for o in m.opset_import],
        "opset 9999": lambda m: [setattr(o, "version", 9999) for o in m.opset_import],
        "no nodes": lambda m: m.graph.ClearField("node"),
        "no outputs": lambda m: m.graph.ClearField("output"),
        "two inputs": lambda m: m.graph.input.append(helper.make_tensor_value_info("y", 1, [1])),
        "unknown operator": lambda m: setattr(m.graph.node[0], "op_type", "NoSuchOp"),
        "unknown domain": lambda m: setattr(m.graph.node[0], "domain", "com.example.fuzz"),
        "initializer dims lie": lambda m: m.graph.initializer[0].dims.extend([1 << 20, 1 << 20]),
        "input of a billion images": lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[0], "dim_value",
                                                       1_000_000_000),
        "input of huge images": lambda m: [setattr(d, "dim_value", 1 << 20)
                                           for d in m.graph.input[0].type.tensor_type.shape.dim[2:]],
        "string input": lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", 8),
        "cycle": lambda m: m.graph.node[0].input.__setitem__(0, m.graph.node[-1].output[0]),
        "node output renamed": lambda m: m.graph.node[-1].output.__setitem__(0, "nowhere"),
    }
    for label, change in variants.items():
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        change(copy)
        place(label, copy.SerializeToString())
    place("a TensorProto given as ONNX", numpy_helper.from_array(np.zeros((3, 3), np.float32), "t").SerializeToString())
    place("a GraphProto given as ONNX", model.graph.SerializeToString())
    place("subgraphs nested 500 deep", _nested_model(500))
    place("subgraphs nested 30 deep", _nested_model(30))

    # External data: kept beside the model, then pointed elsewhere.
    outside = folder / "outside.data"
    outside.write_bytes(b"\0" * 4096)

    def external(location: str | None, *, offset: str | None = None, length: str | None = None,
                 files=None) -> onnx.ModelProto:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        tensor = max(copy.graph.initializer, key=lambda t: len(t.raw_data))
        size = len(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", offset or "0"), ("length", length or str(size))):
            if value is not None:
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
        return copy

    weights = max(model.graph.initializer, key=lambda t: len(t.raw_data)).raw_data

    def beside(name: str):
        def make(home: Path) -> None:
            (home / name).parent.mkdir(parents=True, exist_ok=True)
            (home / name).write_bytes(weights)
        return make

    def link(home: Path) -> None:
        (home / "link.data").symlink_to(outside)

    cases = [
        ("external data beside the model (valid)", external("w.data"), beside("w.data")),
        ("external data in a subfolder", external("sub/w.data"), beside("sub/w.data")),
        ("external data '../outside.data'", external("../outside.data"), None),
        ("external data 'sub/../../outside.data'", external("sub/../../outside.data"), beside("sub/w.data")),
        ("external data at an absolute path", external(str(outside)), None),
        ("external data at /etc/passwd", external("/etc/passwd"), None),
        ("external data at /dev/zero", external("/dev/zero", length=str(1 << 40)), None),
        ("external data through a symlink out", external("link.data"), link),
        ("external data missing", external("missing.data"), None),
        ("external data without location", external(None), beside("w.data")),
        ("external data location ''", external(""), None),
        ("external data location '.'", external("."), None),
        ("external data location with NUL", external("w.data\x00../x"), beside("w.data")),
        ("external data length 1 TB", external("w.data", length=str(1 << 40)), beside("w.data")),
        ("external data offset past the end", external("w.data", offset=str(1 << 40)), beside("w.data")),
        ("external data negative offset", external("w.data", offset="-8"), beside("w.data")),
        ("external data offset not a number", external("w.data", offset="abc"), beside("w.data")),
        ("external data short file", external("w.data"), lambda home: (home / "w.data").write_bytes(b"\0" * 8)),
    ]
    for label, proto, extra in cases:
        place(label, proto.SerializeToString(), extra=extra)
    return made


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
            value >>= 7
            if not value:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _nested_model(depth: int) -> bytes:
    """A ModelProto whose If nodes nest subgraphs `depth` deep, written by hand: protobuf's own writer refuses
    to go past its recursion limit, which is the point."""
    graph = _field(1, _field(4, b"Identity"))  # GraphProto.node[0].op_type
    for _ in range(depth):
        attribute = _field(1, b"then_branch") + _field(6, graph) + b"\xa0\x01\x05"  # name, g, type = GRAPH
        graph = _field(1, _field(4, b"If") + _field(5, attribute))  # node: op_type, attribute
    graph += _field(12, _field(1, b"y"))  # an output named y
    return b"\x08\x08" + _field(7, graph) + _field(8, b"\x10\x11")  # ir_version 8, graph, opset_import version 17


def checkpoint_files(assets: Assets, folder: Path, rng: random.Random) -> list[tuple[str, Path]]:
    import numpy as np
    import torch

    folder.mkdir()
    made: list[tuple[str, Path]] = []

    def place(label: str, data: bytes | None = None, *, obj=None, legacy: bool = False) -> None:
        path = folder / f"{len(made):04d}.pt"
        if obj is not None:
            torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        else:
            path.write_bytes(data or b"")
        made.append((label, path))

    for label, data in byte_mutants(assets.checkpoint.read_bytes(), rng, truncations=30, flips=110, overwrites=30):
        place(f"zip checkpoint {label}", data)
    legacy = assets.legacy_checkpoint.read_bytes()
    for label, data in byte_mutants(legacy, rng, truncations=20, flips=50, overwrites=15):
        place(f"legacy checkpoint {label}", data)
    state = assets.state
    pwn = _Pwn(assets.pwned)
    place("a pickle that runs os.mkdir", obj={**state, "features.0.weight": pwn})
    place("a legacy pickle that runs os.mkdir", obj={"x": pwn}, legacy=True)
    place("a plain pickle that runs os.mkdir", __import__("pickle").dumps(pwn))
    place("a pickle of a Path (not weights-only)", obj={"state_dict": state, "where": Path("/tmp")})
    place("another architecture", assets.other_architecture.read_bytes())
    place("an ONNX file given as checkpoint", assets.onnx.read_bytes())
    place("empty file", b"")
    place("random bytes", bytes(rng.randrange(256) for _ in range(2048)))
    place("a list of tensors", obj=list(state.values()))
    place("one tensor", obj=torch.zeros(3))
    place("a dict of numbers", obj={"a": 1, "b": 2.0})
    place("an empty dict", obj={})
    place("a string", obj="weights")
    place("integer keys", obj={i: v for i, v in enumerate(state.values())})
    place("complex weights", obj={k: v.to(torch.complex64) if v.is_floating_point() else v for k, v in state.items()})
    place("int8 weights", obj={k: v.to(torch.int8) for k, v in state.items()})
    place("NaN weights", obj={k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                              for k, v in state.items()})
    place("a missing key", obj={k: v for i, (k, v) in enumerate(state.items()) if i})
    place("an extra key", obj={**state, "extra.weight": torch.zeros(2)})
    place("a wrong shape", obj={**state, "classifier.weight": torch.zeros(3, 3)})
    huge_view = torch.zeros(1, 1).expand(1 << 30, 1 << 30)  # stride 0: a 4-byte storage
    place("a huge view of a tiny storage", obj={**state, "classifier.weight": huge_view})
    place("a non-tensor value", obj={**state, "classifier.weight": "zeros"})
    place("a numpy array value", obj={**state, "classifier.weight": np.zeros((10, 16), np.float32)})
    place("DataParallel prefix (valid)", obj={f"module.{k}": v for k, v in state.items()})
    place("wrapped under state_dict (valid)", obj={"state_dict": state, "epoch": 3, "best_prec1": 90.0})
    place("wrapped under model, not a dict", obj={"model": "resnet"})
    place("a meta tensor", obj={**state, "classifier.weight": torch.empty(10, 16, device="meta")})
    place("a sparse tensor", obj={**state, "classifier.weight": torch.zeros(10, 16).to_sparse()})
    home = folder / "folder.pt"
    home.mkdir()
    made.append(("a folder", home))
    made.append(("a path that does not exist", folder / "absent.pt"))
    return made


def npz_files(assets: Assets, folder: Path, rng: random.Random) -> list[tuple[str, Path]]:
    """Dataset files: the npz mutated byte by byte, and .npy headers that lie about their size."""
    import io
    import zipfile

    import numpy as np

    folder.mkdir()
    made: list[tuple[str, Path]] = []

    def place(label: str, data: bytes) -> None:
        path = folder / f"{len(made):04d}.npz"
        path.write_bytes(data)
        made.append((label, path))

    original = (assets.folder / "digits.npz").read_bytes()
    place("the original (valid)", original)
    for label, data in byte_mutants(original, rng, truncations=15, flips=30, overwrites=15):
        place(f"npz {label}", data)
    for shape in [(10**12, 8, 8), (2**62, 1), (-1, 8, 8), (40, 8, 8, 10**9)]:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr("images.npy", header.getvalue() + bytes(64))
            labels = io.BytesIO()
            np.save(labels, np.zeros(40, np.int64))
            zipped.writestr("labels.npy", labels.getvalue())
        place(f"npy header declaring shape {list(shape)}", archive.getvalue())
    return made
