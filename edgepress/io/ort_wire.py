"""The few parts of an ORT-format model (.ort) that edgepress/io/ort_check.py checks, read from its FlatBuffers
bytes alone.

An .ort file is ONNX Runtime's own FlatBuffers format (schema onnxruntime/core/flatbuffers/schema/ort.fbs, root
table InferenceSession, file identifier "ORTM"). A device-only install has no flatbuffers reader of its own that
edgepress may rely on (onnxruntime.tools' generated one rewrites sys.path and reads without bounds checks), and
`edgepress bench` still checks a model before any session opens it. This reads the identifier, the ORT format
version, the IR version and the names of the graph's inputs and outputs. Every offset is checked against the
file's size, so a truncated or corrupt file is a WireError, never an IndexError. Only ONNX Runtime verifies the
whole buffer, when it loads it (on the device: its version decides which ORT format versions it reads).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from edgepress.runtime.device_runner import has_ort_identifier

MAX_VERSION_CHARS = 16  # "6" in ONNX Runtime 1.32; anything this long is not a version


class WireError(ValueError):
    """The bytes are not an ORT-format model of the shape ONNX Runtime writes."""


class NotOrt(WireError):
    """The file lacks the ORT format's identifier: it is something else altogether (often an ONNX protobuf)."""


@dataclass(frozen=True)
class OrtModel:
    format_version: str  # InferenceSession.ort_version: which ORT format, not which onnxruntime
    ir_version: int
    has_graph: bool
    graph_inputs: tuple[str, ...]
    graph_outputs: tuple[str, ...]


def read_model(path: Path) -> OrtModel:
    """Raises NotOrt for a file without the identifier, WireError for one whose tables do not hold together."""
    data = Path(path).read_bytes()
    if not has_ort_identifier(data[:8]):
        raise NotOrt("it lacks the ORT format's file identifier 'ORTM'")
    buffer = _Buffer(data)
    session = buffer.table(buffer.u32(0), "InferenceSession")
    model = buffer.table_field(session, 1, "Model")  # InferenceSession: ort_version 0, model 1
    if model is None:
        raise WireError("it holds no model")
    graph = buffer.table_field(model, 7, "Graph")  # Model: ir_version 0, graph 7
    version = buffer.string_field(session, 0)
    if len(version) > MAX_VERSION_CHARS:
        raise WireError(f"its ORT format version is {len(version)} characters long")
    return OrtModel(format_version=version, ir_version=buffer.i64_field(model, 0), has_graph=graph is not None,
                    graph_inputs=buffer.strings_field(graph, 5) if graph is not None else (),  # Graph: inputs 5
                    graph_outputs=buffer.strings_field(graph, 6) if graph is not None else ())  # outputs 6


class _Buffer:
    """FlatBuffers' layout: a table starts with a signed offset back to its vtable (u16 size of the vtable, u16 size
    of the table, then one u16 per field: where the field lies in the table, 0 if absent); a string, table or
    vector field holds an unsigned offset from the field itself; strings and vectors begin with a u32 length."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _read(self, fmt: str, at: int, what: str) -> int:
        size = struct.calcsize(fmt)
        if at < 0 or at + size > len(self.data):
            raise WireError(f"its {what} at byte {at} lies beyond the end of the file ({len(self.data)} bytes)")
        return struct.unpack_from(fmt, self.data, at)[0]

    def u32(self, at: int, what: str = "root offset") -> int:
        return self._read("<I", at, what)

    def table(self, at: int, what: str) -> int:
        vtable = at - self._read("<i", at, f"{what} table")
        size = self._read("<H", vtable, f"{what} vtable")
        if size < 4 or size % 2:
            raise WireError(f"its {what} vtable has size {size}")
        self._read("<H", vtable + size - 2, f"{what} vtable")  # the whole vtable lies inside the file
        return at

    def _field(self, table: int, index: int) -> int | None:
        vtable = table - self._read("<i", table, "table")
        size = self._read("<H", vtable, "vtable")
        if 4 + 2 * index >= size:
            return None
        offset = self._read("<H", vtable + 4 + 2 * index, "vtable")
        return table + offset if offset else None

    def _follow(self, at: int, what: str) -> int:
        return at + self._read("<I", at, what)

    def table_field(self, table: int, index: int, what: str) -> int | None:
        at = self._field(table, index)
        return None if at is None else self.table(self._follow(at, what), what)

    def string_field(self, table: int, index: int) -> str:
        at = self._field(table, index)
        return "" if at is None else self._string(self._follow(at, "string"))

    def _string(self, at: int) -> str:
        length = self._read("<I", at, "string")
        if at + 4 + length >= len(self.data) or self.data[at + 4 + length] != 0:  # FlatBuffers ends each with NUL
            raise WireError(f"a string of {length} bytes at byte {at} runs past the end of the file")
        try:
            return self.data[at + 4:at + 4 + length].decode("utf-8")
        except UnicodeDecodeError:
            raise WireError(f"the string at byte {at} is not UTF-8 text") from None

    def strings_field(self, table: int, index: int) -> tuple[str, ...]:
        at = self._field(table, index)
        if at is None:
            return ()
        vector = self._follow(at, "vector")
        count = self._read("<I", vector, "vector")
        if vector + 4 + 4 * count > len(self.data):
            raise WireError(f"a vector of {count} names at byte {vector} runs past the end of the file")
        return tuple(self._string(self._follow(vector + 4 + 4 * i, "name")) for i in range(count))

    def i64_field(self, table: int, index: int) -> int:
        at = self._field(table, index)
        return 0 if at is None else self._read("<q", at, "integer")
