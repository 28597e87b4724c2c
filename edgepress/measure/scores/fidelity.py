"""How closely an artifact's outputs follow the reference stage's, output by output: what any model can be
judged by, whatever its task (a detector's heads, a regressor's values, an encoder's embeddings)."""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_per_sample", "output_fidelity", "worst_fidelity"]

_TINY = 1e-12


def cosine_per_sample(output: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each sample's output flattened, against the reference's: 1.0 where both are zero (nothing to lose)."""
    ours = output.reshape(len(output), -1).astype(np.float64)
    theirs = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    dots = np.sum(ours * theirs, axis=1)
    both_zero = (np.abs(ours).max(axis=1, initial=0) == 0) & (np.abs(theirs).max(axis=1, initial=0) == 0)
    return np.where(both_zero, 1.0, dots / np.maximum(norms, _TINY))


def output_fidelity(output: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """cosine (mean over samples), snr_db (reference power over error power, whole set) and max_abs_error."""
    error = output.astype(np.float64) - reference.astype(np.float64)
    signal_power, error_power = float(np.mean(np.square(reference, dtype=np.float64))), float(np.mean(np.square(error)))
    # Capped: an exact copy has no error, and JSON holds no infinity.
    snr_db = 200.0 if error_power <= _TINY * max(signal_power, _TINY) else 10.0 * np.log10(max(signal_power, _TINY) / error_power)
    return {"cosine": float(np.mean(cosine_per_sample(output, reference))), "snr_db": float(min(snr_db, 200.0)),
            "max_abs_error": float(np.max(np.abs(error), initial=0.0))}


def worst_fidelity(per_output: dict[str, dict[str, float]]) -> dict[str, float]:
    """The set's headline: the worst output on each count, so a budget holds for every output."""
    if not per_output:
        return {}
    values = list(per_output.values())
    return {"cosine": min(v["cosine"] for v in values), "snr_db": min(v["snr_db"] for v in values),
            "max_abs_error": max(v["max_abs_error"] for v in values)}
