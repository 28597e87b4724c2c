"""The few parts of an ONNX file that edgepress/io/onnx_check.py checks, read from protobuf's wire format alone.

A device-only install (numpy and onnxruntime) has neither onnx nor protobuf, and `edgepress bench` still
checks a model before any session opens it. This reads what the check needs: the IR version, whether there is
a graph and how many outputs it has, and every tensor that may keep its data outside the file (name, data
location, external data entries), in the graph, its subgraphs and the model's functions. Field numbers are
onnx.proto's. Every message on that path is read whole; the bytes of other fields are skipped by their length.
Protobuf's rules hold: a message field given twice is the two merged, a scalar given twice is the last one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MAX_DEPTH = 100  # protobuf's own nesting limit: a graph inside an attribute inside a graph, ...
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
Fields = dict[int, list[tuple[int, object]]]  # field number -> (wire type, value) in the order they came


class WireError(ValueError):
    """The bytes are not a protobuf message of the shape ONNX writes."""


@dataclass(frozen=True)
class Tensor:
    name: str
    data_location: int  # 1: TensorProto.EXTERNAL
    external_data: tuple[tuple[str, str], ...]  # (key, value) entries: location, offset, length, checksum


@dataclass(frozen=True)
class Model:
    ir_version: int
    has_graph: bool
    graph_outputs: int
    tensors: tuple[Tensor, ...]  # every tensor that may hold external data


def read_model(path: Path) -> Model:
    """Raises WireError for bytes that are not such a message."""
    model = _fields(memoryview(Path(path).read_bytes()))
    graph = _message(model, 7)
    tensors = list(_graph_tensors(graph, depth=1)) if graph is not None else []
    for function in _messages(model, 25):
        for node in _messages(function, 7):
            tensors.extend(_attribute_tensors(node, depth=2))
    ir_version = _scalar(model, 1, default=0)
    return Model(ir_version=ir_version - (1 << 64) if ir_version >= 1 << 63 else ir_version,
                 has_graph=graph is not None, graph_outputs=len(_values(graph or {}, 12, _LENGTH)),
                 tensors=tuple(tensors))


def _graph_tensors(graph: Fields, *, depth: int) -> Iterator[Tensor]:
    """Initializers (5), sparse initializers (15) and, through nodes (1), attribute tensors and subgraphs."""
    if depth > MAX_DEPTH:
        raise WireError(f"graphs nest more than {MAX_DEPTH} deep")
    yield from map(_tensor, _messages(graph, 5))
    for sparse in _messages(graph, 15):
        yield from _sparse_tensors(sparse)
    for node in _messages(graph, 1):
        yield from _attribute_tensors(node, depth=depth)


def _attribute_tensors(node: Fields, *, depth: int) -> Iterator[Tensor]:
    """AttributeProto (node field 5): t (5), tensors (10), sparse_tensor (22), sparse_tensors (23), g (6) and
    graphs (11)."""
    for attribute in _messages(node, 5):
        single = _message(attribute, 5)
        yield from ([_tensor(single)] if single is not None else [])
        yield from map(_tensor, _messages(attribute, 10))
        sparse = _message(attribute, 22)
        yield from (_sparse_tensors(sparse) if sparse is not None else [])
        for sparse in _messages(attribute, 23):
            yield from _sparse_tensors(sparse)
        graph = _message(attribute, 6)
        yield from (_graph_tensors(graph, depth=depth + 1) if graph is not None else [])
        for subgraph in _messages(attribute, 11):
            yield from _graph_tensors(subgraph, depth=depth + 1)


def _sparse_tensors(sparse: Fields) -> Iterator[Tensor]:
    for number in (1, 2):  # values, indices
        tensor = _message(sparse, number)
        if tensor is not None:
            yield _tensor(tensor)


def _tensor(fields: Fields) -> Tensor:
    """TensorProto: name (8), external_data (13: key 1, value 2), data_location (14)."""
    entries = tuple((_text(entry, 1), _text(entry, 2)) for entry in _messages(fields, 13))
    return Tensor(name=_text(fields, 8), data_location=_scalar(fields, 14, default=0), external_data=entries)


# ---------------------------------------------------------------- the wire format

def _fields(data: memoryview) -> Fields:
    found: Fields = {}
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("a field numbered 0")
        if wire == _VARINT:
            value, position = _varint(data, position)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            value, position = data[position:position + size], position + size
        elif wire == _LENGTH:
            size, position = _varint(data, position)
            value, position = data[position:position + size], position + size
        else:  # 3 and 4 are protobuf groups, which onnx.proto never uses; 6 and 7 do not exist
            raise WireError(f"field {number} has wire type {wire}")
        if position > len(data):
            raise WireError(f"field {number} runs past the end of its message")
        found.setdefault(number, []).append((wire, value))
    return found


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if position >= len(data):
            raise WireError("the data ends inside a number")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & ((1 << 64) - 1), position
    raise WireError("a number longer than 10 bytes")


def _values(fields: Fields, number: int, wire: int) -> list:
    """A field's values of the wire type the schema gives it; another wire type is an unknown field, as in protobuf."""
    return [value for found_wire, value in fields.get(number, ()) if found_wire == wire]


def _messages(fields: Fields, number: int) -> list[Fields]:
    return [_fields(value) for value in _values(fields, number, _LENGTH)]


def _message(fields: Fields, number: int) -> Fields | None:
    """A singular message field; several occurrences merge, which is parsing them one after the other."""
    chunks = _values(fields, number, _LENGTH)
    if not chunks:
        return None
    return _fields(chunks[0] if len(chunks) == 1 else memoryview(b"".join(chunks)))


def _scalar(fields: Fields, number: int, *, default: int) -> int:
    values = _values(fields, number, _VARINT)
    return values[-1] if values else default


def _text(fields: Fields, number: int) -> str:
    values = _values(fields, number, _LENGTH)
    try:
        return bytes(values[-1]).decode("utf-8") if values else ""
    except UnicodeDecodeError:
        raise WireError(f"field {number} is not UTF-8 text") from None
