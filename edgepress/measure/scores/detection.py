"""Detection mean average precision, computed by pycocotools (the COCO definitions), never by hand.

Boxes come in as xyxy pixels; COCO stores xywh. Both sides are built as COCO objects in memory (no json
files), and pycocotools' progress prints are kept off stdout, which the command line owns.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

__all__ = ["mean_average_precision", "padded_detections", "MAX_DETECTIONS"]

MAX_DETECTIONS = 100  # per image, COCO's default last maxDets: the one AP and AR@100 are read at

# Indices into COCOeval.stats for bbox evaluation (see COCOeval.summarize).
_STATS = {"map": 0, "map50": 1, "map75": 2, "recall100": 8}


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _annotations(samples: list[dict[str, np.ndarray]], *, scored: bool) -> list[dict]:
    """COCO annotation records; ids and category ids start at 1 because pycocotools reads an id of 0 as
    'no match' when it pairs detections with truths."""
    records = []
    for image_index, sample in enumerate(samples):
        xywh = _xywh(sample["boxes"])
        labels = np.asarray(sample["labels"]).reshape(-1)
        scores = np.asarray(sample["scores"], dtype=np.float64).reshape(-1) if scored else None
        if len(labels) != len(xywh) or (scored and len(scores) != len(xywh)):
            raise ValueError(f"image {image_index}: {len(xywh)} boxes, {len(labels)} labels"
                             + (f", {len(scores)} scores" if scored else ""))
        for row, (box, label) in enumerate(zip(xywh, labels)):
            record = {"id": len(records) + 1, "image_id": image_index + 1, "category_id": int(label) + 1,
                      "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": 0}
            if scored:
                record["score"] = float(scores[row])
            records.append(record)
    return records


def _coco(annotations: list[dict], *, images: int, categories: set[int]):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": [{"id": i + 1} for i in range(images)],
                    "categories": [{"id": c} for c in sorted(categories)], "annotations": annotations}
    coco.createIndex()
    return coco


def mean_average_precision(detections: list[dict[str, np.ndarray]],
                           truths: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """COCO bbox scores of per-image detections ({'boxes': K x 4 xyxy, 'scores': K, 'labels': K}) against
    per-image truths ({'boxes': M x 4 xyxy, 'labels': M}): {'map50', 'map' (AP@[.5:.95]), 'map75',
    'recall100' (AR@100)}, each in [0, 1]. As in COCO, a class no truth has does not count, so its
    detections cost nothing; with no truths at all every score is 0."""
    from pycocotools.cocoeval import COCOeval

    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} images of detections but {len(truths)} of truths")
    truth_records = _annotations(truths, scored=False)
    detection_records = _annotations(detections, scored=True)
    categories = {r["category_id"] for r in truth_records + detection_records}
    with contextlib.redirect_stdout(io.StringIO()):
        truth_coco = _coco(truth_records, images=len(truths), categories=categories)
        detection_coco = _coco(detection_records, images=len(truths), categories=categories)
        evaluation = COCOeval(truth_coco, detection_coco, iouType="bbox")
        evaluation.params.maxDets = [1, 10, MAX_DETECTIONS]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # COCOeval reports -1 where nothing could be scored (no truths): that is no precision found, so 0.
    return {name: float(max(evaluation.stats[index], 0.0)) for name, index in _STATS.items()}


def padded_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[dict[str, np.ndarray]]:
    """N x K x 4 boxes, N x K scores and N x K labels, padded -> per image {'boxes', 'scores', 'labels'},
    dropping the padding: rows with a label below 0 or a score of 0 or less."""
    kept = (labels >= 0) & (scores > 0)
    return [{"boxes": np.asarray(boxes[i][kept[i]], dtype=np.float32),
             "scores": np.asarray(scores[i][kept[i]], dtype=np.float32),
             "labels": np.asarray(labels[i][kept[i]], dtype=np.int64)} for i in range(len(labels))]
