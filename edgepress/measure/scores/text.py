"""Sentence embeddings against the reference's: the spread of the cosines and how many of each sentence's
nearest neighbours in the set stay its neighbours (what a retrieval or clustering system sees)."""

from __future__ import annotations

import numpy as np

from edgepress.measure.scores.fidelity import cosine_per_sample

__all__ = ["embedding_similarity", "neighbour_agreement", "NEIGHBOURS"]

NEIGHBOURS = 5


def embedding_similarity(embeddings: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    cosine = cosine_per_sample(embeddings, reference)
    return {"cosine_min": float(cosine.min()), "cosine_p5": float(np.percentile(cosine, 5)),
            "top5_agreement": neighbour_agreement(embeddings, reference)}


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
    embeddings = embeddings.reshape(len(embeddings), -1).astype(np.float64)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
