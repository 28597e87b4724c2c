"""A deterministic object-detection set built from real images: Fashion-MNIST objects on a black canvas.

Numpy only, no torch: the set is read on devices too. Each canvas holds 1 to `max_objects` garments, each
rescaled (nearest neighbour, so its non-zero pixels stay exactly its own), placed where it barely overlaps
the others, and boxed by the tight extent of its non-zero pixels. Box corners are pixel edges (continuous
coordinates, COCO style): an object covering columns 3..7 has x1 = 3, x2 = 8.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepress.models import data

__all__ = ["fashion_mnist_boxes", "DetectionSet", "paste_objects", "load_fashion_mnist_boxes", "to_lists",
           "MIN_SCALE", "MAX_SCALE", "MAX_IOU", "MAX_COVERED", "DEFAULT_COUNTS", "SEEDS"]

MIN_SCALE, MAX_SCALE = 0.6, 1.4  # object size relative to the 28 x 28 source
MAX_IOU = 0.1  # a placement overlapping a placed box more than this is drawn again
# IoU alone lets a small object sit inside a large one (IoU 0.03 for 5 x 5 in 30 x 30), hidden under its
# pixels: a placement covering more than this share of the smaller box is drawn again too.
MAX_COVERED = 0.2
_PLACEMENT_TRIES = 30  # after which the canvas keeps the objects it has (always at least one)

# Canvases per part, and a seed per part so train and test canvases never share a layout stream.
DEFAULT_COUNTS = {"train": 6000, "test": 1000}
SEEDS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class DetectionSet:
    images: np.ndarray  # uint8, N x H x W (grayscale canvases)
    boxes: np.ndarray  # float32, N x M x 4 (x1, y1, x2, y2 pixels), padded rows are 0
    labels: np.ndarray  # int64, N x M, class index 0..9, padding -1


def _resize_nearest(image: np.ndarray, scale: float) -> np.ndarray:
    """Nearest-neighbour rescale: every output pixel is a source pixel, so zero stays zero."""
    height, width = image.shape
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    rows = np.minimum(((np.arange(new_height) + 0.5) * height / new_height).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(new_width) + 0.5) * width / new_width).astype(np.int64), width - 1)
    return image[rows[:, None], cols[None, :]]


def _tight_crop(image: np.ndarray) -> np.ndarray | None:
    """The object cut to its non-zero pixels; None for an all-black image."""
    rows, cols = np.nonzero(image.any(axis=1))[0], np.nonzero(image.any(axis=0))[0]
    if not len(rows):
        return None
    return image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _overlaps(box: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU of one xyxy box with each row of `others` (K x 4), and the share of the smaller box covered."""
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (area + areas - inter), inter / np.minimum(area, areas)


def _place(crop: np.ndarray, placed: list[np.ndarray], *, canvas_px: int,
           rng: np.random.Generator) -> np.ndarray | None:
    """A free xyxy box for `crop`, or None when every try overlaps a placed box too much."""
    height, width = crop.shape
    for _ in range(_PLACEMENT_TRIES):
        x1, y1 = int(rng.integers(0, canvas_px - width + 1)), int(rng.integers(0, canvas_px - height + 1))
        box = np.array([x1, y1, x1 + width, y1 + height], dtype=np.float32)
        if not placed:
            return box
        iou, covered = _overlaps(box, np.stack(placed))
        if iou.max() <= MAX_IOU and covered.max() <= MAX_COVERED:
            return box
    return None


def _one_canvas(images: np.ndarray, labels: np.ndarray, *, canvas_px: int, max_objects: int,
                rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    canvas = np.zeros((canvas_px, canvas_px), dtype=np.uint8)
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    wanted = int(rng.integers(1, max_objects + 1))
    while len(boxes) < wanted:
        source = int(rng.integers(len(images)))
        scale = float(rng.uniform(MIN_SCALE, MAX_SCALE))
        crop = _tight_crop(images[source])
        if crop is None:
            continue  # a blank source image has no object to box
        scale = min(scale, canvas_px / max(crop.shape))  # never larger than the canvas
        crop = _tight_crop(_resize_nearest(crop, scale))
        box = _place(crop, boxes, canvas_px=canvas_px, rng=rng)
        if box is None:
            break  # the canvas is too full for this object: keep what is there
        x1, y1, x2, y2 = box.astype(np.int64)
        # Maximum, not overwrite: a slight overlap leaves each object's own pixels inside its box.
        np.maximum(canvas[y1:y2, x1:x2], crop, out=canvas[y1:y2, x1:x2])
        boxes.append(box)
        classes.append(int(labels[source]))
    return canvas, boxes, classes


def paste_objects(images: np.ndarray, labels: np.ndarray, *, count: int, canvas: int = 64,
                  max_objects: int = 3, seed: int = 0) -> DetectionSet:
    """`count` canvases of `canvas` x `canvas` pixels from uint8 N x H x W objects and their class labels.

    One random stream per call, consumed canvas by canvas: the first k canvases are the same whatever
    `count`, so a smaller set is a prefix of a larger one with the same seed."""
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels) or not len(images):
        raise ValueError(f"images must be uint8 N x H x W with one label each, got {images.dtype} "
                         f"{list(images.shape)} and {len(labels)} labels")
    if not images.any():
        raise ValueError("every source image is blank: there is no object to paste")
    if count < 0 or max_objects < 1 or canvas < 1:
        raise ValueError(f"count, max_objects and canvas must be positive, got {count}, {max_objects}, {canvas}")
    rng = np.random.default_rng(seed)
    out_images = np.zeros((count, canvas, canvas), dtype=np.uint8)
    out_boxes = np.zeros((count, max_objects, 4), dtype=np.float32)
    out_labels = np.full((count, max_objects), -1, dtype=np.int64)
    for index in range(count):
        picture, boxes, classes = _one_canvas(images, labels, canvas_px=canvas, max_objects=max_objects, rng=rng)
        out_images[index] = picture
        if boxes:
            out_boxes[index, :len(boxes)] = np.stack(boxes)
            out_labels[index, :len(classes)] = classes
    return DetectionSet(images=out_images, boxes=out_boxes, labels=out_labels)


def load_fashion_mnist_boxes(part: str, *, root: Path, count: int | None = None) -> DetectionSet:
    """The fixed detection split: 'train' canvases (default 6000) from the 60,000 training garments, 'test'
    (default 1000) from the 10,000 t10k ones, each with its own seed. `root` is the shared data folder
    (edgepress.core.datapath.data_root())."""
    if part not in DEFAULT_COUNTS:
        raise ValueError(f"part must be one of {sorted(DEFAULT_COUNTS)}, got {part!r}")
    image_file, label_file = (Path(root) / "fashion_mnist" / name for name in data._FASHION_FILES[part])
    images, labels = data._read_idx(image_file), data._read_idx(label_file).astype(np.int64)
    wanted = DEFAULT_COUNTS[part] if count is None else count
    return paste_objects(images, labels, count=wanted, seed=SEEDS[part])


def fashion_mnist_boxes(part: str = "train", count: int | None = None) -> dict[str, np.ndarray]:
    """A recipe's data entry: {'input': float32 N x 1 x H x W in [0, 1], 'boxes', 'labels'} from the shared
    data folder (EDGEPRESS_DATA)."""
    from edgepress.core.datapath import data_root

    found = load_fashion_mnist_boxes(part, root=data_root(), count=count)
    return {"input": (found.images[:, None].astype(np.float32) / 255.0), "boxes": found.boxes, "labels": found.labels}


def to_lists(boxes: np.ndarray, labels: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Padded N x M x 4 boxes and N x M labels -> per sample {'boxes': K x 4, 'labels': K}, padding dropped."""
    kept = labels >= 0
    return [{"boxes": boxes[i][kept[i]].astype(np.float32), "labels": labels[i][kept[i]].astype(np.int64)}
            for i in range(len(labels))]
