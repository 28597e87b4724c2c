"""An artifact's own numbers: size on disk and gzipped, parameters, MACs (outputs: evaluation.py; latency: on_target.py)."""

from __future__ import annotations

from edgepress.io.artifact import Artifact


def gzip_size_bytes(path) -> int:
    """What the artifact costs to download: zeroed (sparse) weights only pay off here, not in latency."""
    import gzip

    return len(gzip.compress(path.read_bytes(), compresslevel=6))


def structure(artifact: Artifact) -> dict[str, int]:
    size_bytes = artifact.path.stat().st_size
    if artifact.format == "onnx":
        from edgepress.io.onnx_stats import count_params_and_macs

        params, macs = count_params_and_macs(artifact.path)
    else:
        from edgepress.io import torch_artifact

        model, input_shape, builder = torch_artifact.load(artifact.path)
        params = torch_artifact.count_params(model)
        macs = torch_artifact.count_macs(model, input_shape, inputs=builder.get("inputs"))
    return {"size_bytes": int(size_bytes), "size_gzip_bytes": gzip_size_bytes(artifact.path), "params": int(params),
            "macs": int(macs)}
