"""An artifact's own numbers: size on disk and gzipped, parameters, MACs, operators (outputs: evaluation.py; latency:
on_target.py)."""

from __future__ import annotations

from edgepress.io.artifact import Artifact


def gzip_size_bytes(path) -> int:
    """What the artifact costs to download: zeroed (sparse) weights only pay off here, not in latency."""
    import gzip

    return len(gzip.compress(path.read_bytes(), compresslevel=6))


def structure(artifact: Artifact) -> dict[str, int]:
    """Size, gzipped size, params and MACs; for what ONNX Runtime runs also `operator_count`, the distinct
    operators its graph uses (for an .ort: the kernels a reduced build needs). An .ort's params and MACs are its
    source's, which the ort_format stage reports: its flatbuffer is read for operators only."""
    found = {"size_bytes": int(artifact.path.stat().st_size), "size_gzip_bytes": gzip_size_bytes(artifact.path)}
    if artifact.runs_on_onnxruntime:
        from edgepress.io.operators import operators

        found["operator_count"] = len(operators(artifact.path))
    if artifact.format == "onnx":
        from edgepress.io.onnx_stats import count_params_and_macs

        params, macs = count_params_and_macs(artifact.path)
        found.update(params=int(params), macs=int(macs))
    elif artifact.format == "torch":
        from edgepress.io import torch_artifact

        model, input_shape, builder = torch_artifact.load(artifact.path)
        found["params"] = int(torch_artifact.count_params(model))
        found["macs"] = int(torch_artifact.count_macs(model, input_shape, inputs=builder.get("inputs")))
    return found
