"""Score an artifact on an evaluation set against the reference stage's outputs on it.

Image classifiers: top-1 accuracy on the labels, agreement with the reference's top-1.
Text encoders: cosine similarity of each sentence embedding with the reference's (mean, min,
5th percentile) and how many of each sentence's 5 nearest neighbours in the set stay the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepress import measure
from edgepress.datasets import LabeledSet, TextSet
from edgepress.stage import Artifact

# Per-set scores that also become the stage's headline metrics (from the primary set), in order.
HEADLINE = ("accuracy", "agreement", "cosine", "cosine_min", "cosine_p5", "top5_agreement")
NEIGHBOURS = 5


def outputs(artifact: Artifact, dataset: LabeledSet | TextSet, *, batch_size: int) -> np.ndarray:
    """Top-1 classes (images) or embeddings (text) of the artifact on the set."""
    if isinstance(dataset, TextSet):
        return measure.embed(artifact, dataset, batch_size=batch_size)
    return measure.predict(artifact, dataset, batch_size=batch_size)


def score(dataset: LabeledSet | TextSet, output: np.ndarray, reference: np.ndarray | None) -> dict[str, Any]:
    """The set's scores; the comparisons only once the reference stage has run."""
    if isinstance(dataset, TextSet):
        scores: dict[str, Any] = {"samples": int(len(output))}
        if reference is not None:
            scores.update(embedding_similarity(output, reference))
        return scores
    scores = {"samples": int(len(output)), "accuracy": float(np.mean(output == dataset.labels))}
    if reference is not None:
        scores["agreement"] = float(np.mean(output == reference))
    return scores


def same_answers(output: np.ndarray, host: np.ndarray) -> float:
    """How far one model's answers on a target match its answers on the host: the share of equal top-1
    classes, or the mean cosine of the embeddings."""
    if output.ndim == 1:
        return float(np.mean(output == host))
    return float(np.mean(np.sum(_unit(output) * _unit(host), axis=1)))


def embedding_similarity(embeddings: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Cosine with the reference per sentence (mean, min, p5), and top-5 neighbour agreement."""
    ours, theirs = _unit(embeddings), _unit(reference)
    cosine = np.sum(ours * theirs, axis=1)
    return {"cosine": float(cosine.mean()), "cosine_min": float(cosine.min()),
            "cosine_p5": float(np.percentile(cosine, 5)), "top5_agreement": neighbour_agreement(ours, theirs)}


def neighbour_agreement(embeddings: np.ndarray, reference: np.ndarray, *, k: int = NEIGHBOURS) -> float:
    """Mean share of each sentence's k nearest others (by cosine) that the reference also ranks in its k nearest."""
    k = min(k, len(embeddings) - 1)
    if k < 1:
        return 1.0
    ours, theirs = _nearest(_unit(embeddings), k), _nearest(_unit(reference), k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours, theirs)]))


def _nearest(unit: np.ndarray, k: int) -> np.ndarray:
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argpartition(-similarity, k - 1, axis=1)[:, :k]


def _unit(embeddings: np.ndarray) -> np.ndarray:
    embeddings = embeddings.astype(np.float64)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
