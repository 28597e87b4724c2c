"""Metrics for any model artifact: predictions or embeddings (torch or ONNX Runtime), size, MACs (latency: on_target.py)."""

from __future__ import annotations

import os

import numpy as np

from edgepress.datasets import LabeledSet, TextSet
from edgepress.progress import Progress
from edgepress.stage import Artifact


def predict(artifact: Artifact, labeled: LabeledSet, *, batch_size: int) -> np.ndarray:
    """Top-1 class per sample. ONNX models run under ONNX Runtime, torch ones under torch."""
    progress = Progress(f"evaluate on {labeled.name}", total=len(labeled.inputs))
    if artifact.format == "onnx":
        from edgepress.runtime.session import check_feed, open_session, predict as ort_predict

        # Accuracy does not depend on thread count, so evaluation uses every core.
        session = open_session(artifact.path, threads=os.cpu_count() or 1)
        check_feed(session, labeled.inputs[:1], source=f"evaluation set {labeled.name!r}")
        logits = ort_predict(session, labeled.inputs, batch_size=batch_size, on_batch=progress.update)
        return logits.argmax(axis=1)
    import torch

    from edgepress import torch_artifact

    model, _, _ = torch_artifact.load(artifact.path)
    tops = []
    with torch.no_grad():
        for start in range(0, len(labeled.inputs), batch_size):
            tops.append(model(torch.from_numpy(labeled.inputs[start:start + batch_size])).argmax(1).numpy())
            progress.update(min(start + batch_size, len(labeled.inputs)))
    return np.concatenate(tops)


def embed(artifact: Artifact, text: TextSet, *, batch_size: int) -> np.ndarray:
    """Sentence embeddings, N x hidden: ONNX models under ONNX Runtime, torch ones under torch."""
    progress = Progress(f"embed {text.name}", total=len(text))
    if artifact.format == "onnx":
        from edgepress.runtime.session import check_feeds, open_session, predict_feeds

        session = open_session(artifact.path, threads=os.cpu_count() or 1)
        check_feeds(session, text.feeds, source=f"evaluation set {text.name!r}")
        return predict_feeds(session, text.feeds, batch_size=batch_size, on_batch=progress.update)
    import torch

    from edgepress import torch_artifact

    model, _, _ = torch_artifact.load(artifact.path)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(text), batch_size):
            chunks.append(model(*[torch.from_numpy(text.feeds[name][start:start + batch_size])
                                  for name in model.input_names]).numpy())
            progress.update(min(start + batch_size, len(text)))
    return np.concatenate(chunks)


def gzip_size_bytes(path) -> int:
    """What the artifact costs to download: zeroed (sparse) weights only pay off here, not in latency."""
    import gzip

    return len(gzip.compress(path.read_bytes(), compresslevel=6))


def structure(artifact: Artifact) -> dict[str, int]:
    size_bytes = artifact.path.stat().st_size
    if artifact.format == "onnx":
        from edgepress.onnx_stats import count_params_and_macs

        params, macs = count_params_and_macs(artifact.path)
    else:
        from edgepress import torch_artifact

        model, input_shape, _ = torch_artifact.load(artifact.path)
        params, macs = torch_artifact.count_params(model), torch_artifact.count_macs(model, input_shape)
    return {"size_bytes": int(size_bytes), "size_gzip_bytes": gzip_size_bytes(artifact.path), "params": int(params),
            "macs": int(macs)}
