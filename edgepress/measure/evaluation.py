"""Run an artifact over an evaluation set, every output by name, and score it with the recipe's task
(edgepress/measure/task.py: against the set's targets, and against the reference stage's outputs)."""

from __future__ import annotations

import os

import numpy as np

from edgepress.measure.metrics import Outputs
from edgepress.core.progress import Progress
from edgepress.io.artifact import Artifact

__all__ = ["outputs"]


def outputs(artifact: Artifact, dataset, *, batch_size: int, disabled_optimizers: tuple[str, ...] = ()) -> Outputs:
    """Every output of the artifact on the set, by name (N first): ONNX and ORT format under ONNX Runtime (skipping
    `disabled_optimizers`, graph transformers), torch under torch."""
    progress = Progress(f"evaluate on {dataset.name}", total=len(dataset))
    feeds = dataset.feeds
    if artifact.runs_on_onnxruntime:
        from edgepress.runtime.session import check_feeds, open_session, run_all

        # Scores do not depend on thread count, so evaluation uses every core.
        session = open_session(artifact.path, threads=os.cpu_count() or 1,
                               disabled_optimizers=tuple(disabled_optimizers))
        feeds = _by_session_names(session, feeds)
        check_feeds(session, feeds, source=f"evaluation set {dataset.name!r}")
        return run_all(session, feeds, batch_size=batch_size, on_batch=progress.update)
    from edgepress.io import torch_artifact
    from edgepress.io.torch_outputs import forward

    model, _, _ = torch_artifact.load(artifact.path)
    total = len(dataset)
    chunks = []
    for start in range(0, total, batch_size):
        chunks.append(forward(model, {k: v[start:start + batch_size] for k, v in feeds.items()}))
        progress.update(min(start + batch_size, total))
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def _by_session_names(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A one-input model takes a set's one array whatever either calls it."""
    inputs = session.get_inputs()
    if len(inputs) == 1 and len(feeds) == 1 and inputs[0].name not in feeds:
        return {inputs[0].name: next(iter(feeds.values()))}
    return feeds
