"""Detection mAP through pycocotools: cases whose COCO score can be worked out by hand, and one random case
against an independent re-implementation of COCO's matching and 101-point interpolation."""

from __future__ import annotations

import numpy as np
import pytest

from edgepress.measure.scores.detection import mean_average_precision, padded_detections

RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's recall thresholds
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def truth(boxes, labels) -> dict[str, np.ndarray]:
    return {"boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4), "labels": np.array(labels, dtype=np.int64)}


def detection(boxes, scores, labels) -> dict[str, np.ndarray]:
    return {**truth(boxes, labels), "scores": np.array(scores, dtype=np.float32)}


def test_perfect_detections_score_one() -> None:
    truths = [truth([[10, 10, 30, 40], [40, 5, 60, 20]], [3, 7]), truth([[0, 0, 64, 64]], [3])]
    detections = [detection(t["boxes"], np.full(len(t["labels"]), 0.9), t["labels"]) for t in truths]
    assert mean_average_precision(detections, truths) == {"map50": 1.0, "map": 1.0, "map75": 1.0, "recall100": 1.0}


def test_a_shifted_box_scores_at_the_thresholds_its_iou_clears() -> None:
    # A 20 x 20 box moved 4 px right: IoU = 16 * 20 / (24 * 20) = 2/3, a match at IoU .50, .55, .60 and .65
    # (4 of the 10 COCO thresholds) and a miss from .70 on.
    truths = [truth([[10, 10, 30, 30]], [0])]
    scores = mean_average_precision([detection([[14, 10, 34, 30]], [0.8], [0])], truths)
    assert scores["map50"] == pytest.approx(1.0) and scores["map75"] == 0.0
    assert scores["map"] == pytest.approx(0.4) and scores["recall100"] == pytest.approx(0.4)


def test_the_right_box_with_the_wrong_label_scores_zero() -> None:
    truths = [truth([[10, 10, 30, 30], [40, 40, 60, 60]], [1, 2])]
    detections = [detection([[10, 10, 30, 30], [40, 40, 60, 60]], [0.9, 0.9], [2, 1])]
    assert set(mean_average_precision(detections, truths).values()) == {0.0}


def test_no_detections_score_zero_and_images_without_truths_count() -> None:
    truths = [truth([[10, 10, 30, 30]], [4]), truth(np.zeros((0, 4)), [])]
    empty = [detection(np.zeros((0, 4)), [], []), detection(np.zeros((0, 4)), [], [])]
    assert set(mean_average_precision(empty, truths).values()) == {0.0}
    # The one truth found, and a false positive of its class on the image with no truths, scored higher:
    # precision 1/2 at recall 1, so AP = 0.5 at every threshold.
    found = [detection([[10, 10, 30, 30]], [0.5], [4]), detection([[0, 0, 9, 9]], [0.9], [4])]
    assert mean_average_precision(found, truths)["map"] == pytest.approx(0.5)


def test_no_truths_at_all_scores_zero() -> None:
    scores = mean_average_precision([detection([[0, 0, 9, 9]], [0.9], [1])], [truth(np.zeros((0, 4)), [])])
    assert set(scores.values()) == {0.0}


def test_two_images_by_hand() -> None:
    # Ranked by score: a hit (0.9, image 1), a miss far from any truth (0.8, image 2), a hit (0.7, image 2).
    # Precision 1 up to recall 1/2, then 2/3 up to recall 1: 51 of COCO's 101 recall points (0 to .50) at 1,
    # the other 50 at 2/3.
    truths = [truth([[5, 5, 25, 25]], [6]), truth([[30, 30, 50, 60]], [6])]
    detections = [detection([[5, 5, 25, 25]], [0.9], [6]),
                  detection([[0, 0, 10, 10], [30, 30, 50, 60]], [0.8, 0.7], [6, 6])]
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    scores = mean_average_precision(detections, truths)
    assert scores["map50"] == pytest.approx(expected) and scores["map"] == pytest.approx(expected)
    assert scores["recall100"] == 1.0


def test_a_duplicate_detection_lowers_precision() -> None:
    truths = [truth([[5, 5, 25, 25]], [2]), truth([[30, 30, 50, 60]], [2])]
    single = [detection([[5, 5, 25, 25]], [0.9], [2]), detection([[30, 30, 50, 60]], [0.7], [2])]
    assert mean_average_precision(single, truths)["map"] == 1.0
    # The same box twice: only one may match its truth, the other is a false positive ranked above the
    # second image's hit, which is the hand case above.
    doubled = [detection([[5, 5, 25, 25], [5, 5, 25, 25]], [0.9, 0.8], [2, 2]), single[1]]
    assert mean_average_precision(doubled, truths)["map"] == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_padded_detections_drop_padding() -> None:
    boxes = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    scores = np.array([[0.9, 0.0, 0.5], [0.3, 0.2, 0.1]], dtype=np.float32)
    labels = np.array([[1, 2, -1], [0, -1, 4]])
    lists = padded_detections(boxes, scores, labels)
    assert [d["labels"].tolist() for d in lists] == [[1], [0, 4]]
    np.testing.assert_array_equal(lists[1]["boxes"], boxes[1][[0, 2]])
    assert lists[1]["scores"].tolist() == pytest.approx([0.3, 0.1])


# An independent reference: COCO's greedy matching and 101-point interpolated AP, for area 'all'.

def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    low, high = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _matches(det: dict, gt: dict, label: int, threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores and hit flags of one image's detections of `label`, best score first, and its truth count."""
    d, g = det["labels"] == label, gt["labels"] == label
    order = np.argsort(-det["scores"][d], kind="mergesort")
    boxes, scores, truths = det["boxes"][d][order], det["scores"][d][order], gt["boxes"][g]
    taken, hits = np.zeros(len(truths), bool), np.zeros(len(boxes), bool)
    ious = _iou(boxes, truths) if len(boxes) and len(truths) else np.zeros((len(boxes), len(truths)))
    for i in range(len(boxes)):
        candidates = np.where(~taken & (ious[i] >= threshold))[0]
        if len(candidates):  # the free truth it overlaps most
            best = candidates[np.argmax(ious[i][candidates])]
            taken[best], hits[i] = True, True
    return scores, hits, len(truths)


def _reference_ap(detections: list[dict], truths: list[dict], label: int, threshold: float) -> float:
    parts = [_matches(d, g, label, threshold) for d, g in zip(detections, truths)]
    scores, hits = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    total = sum(p[2] for p in parts)
    hits = hits[np.argsort(-scores, kind="mergesort")]
    true_positives = np.cumsum(hits)
    recall, precision = true_positives / total, true_positives / np.arange(1, len(hits) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or beyond
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    return float(np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0).mean())


def test_a_random_case_matches_an_independent_reference() -> None:
    rng = np.random.default_rng(7)
    truths, detections = [], []
    for _ in range(6):
        corners = rng.uniform(0, 40, size=(3, 2))
        boxes = np.concatenate([corners, corners + rng.uniform(8, 24, size=(3, 2))], axis=1)
        labels = rng.integers(0, 2, size=3)
        truths.append(truth(boxes, labels))
        # Jittered copies of the truths (some with a flipped label) plus random false positives.
        noisy = boxes + rng.normal(0, 2.5, size=boxes.shape)
        noisy_labels = np.where(rng.uniform(size=3) < 0.2, 1 - labels, labels)
        extra_corners = rng.uniform(0, 40, size=(2, 2))
        extra = np.concatenate([extra_corners, extra_corners + rng.uniform(8, 24, size=(2, 2))], axis=1)
        detections.append(detection(np.concatenate([noisy, extra]), rng.uniform(0.05, 1, size=5),
                                    np.concatenate([noisy_labels, rng.integers(0, 2, size=2)])))
    scores = mean_average_precision(detections, truths)
    per_threshold = [np.mean([_reference_ap(detections, truths, c, t) for c in (0, 1)]) for t in IOU_THRESHOLDS]
    assert 0.0 < scores["map"] < scores["map50"] < 1.0
    assert scores["map50"] == pytest.approx(per_threshold[0], abs=1e-9)
    assert scores["map75"] == pytest.approx(per_threshold[5], abs=1e-9)
    assert scores["map"] == pytest.approx(np.mean(per_threshold), abs=1e-9)
