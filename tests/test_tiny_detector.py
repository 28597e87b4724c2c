"""The detection family's building blocks: Fashion-MNIST canvases with boxes, the tiny CenterNet, its numpy
decoder and its ONNX export (that training beats an untrained model on COCO mAP: test_detector_recipe.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from edgepress.core.datapath import data_root
from edgepress.models import data
from edgepress.models.detection_data import load_fashion_mnist_boxes, paste_objects, to_lists
from edgepress.models.tiny_detector import OUTPUT_NAMES, decode, detection_loss, tiny_centernet

FASHION = data_root() / "fashion_mnist"
needs_fashion_mnist = pytest.mark.skipif(not FASHION.is_dir(), reason=f"Fashion-MNIST not found in {FASHION} "
                                         "(set EDGEPRESS_DATA to the shared data folder)")



pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("exporter", "opset"), [("torchscript", 17), ("dynamo", 18)])
def test_onnx_export_runs_under_onnxruntime_and_matches_torch(tmp_path, exporter: str, opset: int) -> None:
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = tiny_centernet().eval()
    path = tmp_path / "detector.onnx"
    if exporter == "dynamo":
        torch.onnx.export(model, (torch.rand(2, 1, 64, 64),), str(path), dynamo=True, opset_version=opset,
                          external_data=False, input_names=["input"], output_names=list(OUTPUT_NAMES),
                          dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    else:
        torch.onnx.export(model, (torch.rand(2, 1, 64, 64),), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={name: {0: "batch"} for name in ("input", *OUTPUT_NAMES)})
    graph = onnx.load(str(path)).graph
    # Only what INT8 quantization handles well: no Sigmoid, TopK, MaxPool or Gather in the graph.
    assert {node.op_type for node in graph.node} <= {"Conv", "Relu", "Resize", "Concat", "Constant", "Identity"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.rand(5, 1, 64, 64)  # another batch size than the export's
    onnx_outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": images.numpy()})))
    with torch.no_grad():
        torch_outputs = {name: value.numpy() for name, value in model(images).items()}
    assert list(onnx_outputs) == list(OUTPUT_NAMES)
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(onnx_outputs[name], torch_outputs[name], atol=1e-4, rtol=1e-4)
    for ours, theirs in zip(decode(onnx_outputs), decode(torch_outputs)):
        np.testing.assert_array_equal(ours["labels"], theirs["labels"])
        np.testing.assert_allclose(ours["boxes"], theirs["boxes"], atol=1e-3)


def test_decode_reads_a_peak_into_a_box() -> None:
    heatmap = np.full((1, 10, 16, 16), -10.0, dtype=np.float32)
    heatmap[0, 3, 5, 7] = 4.0
    heatmap[0, 3, 5, 8] = 2.0  # a neighbour of the peak: suppressed by the 3 x 3 maximum
    heatmap[0, 1, 12, 2] = -3.5  # sigmoid 0.029: under the score threshold
    size, offset = np.zeros((1, 2, 16, 16), np.float32), np.zeros((1, 2, 16, 16), np.float32)
    size[0, :, 5, 7] = (10.0, 20.0)
    offset[0, :, 5, 7] = (0.25, 0.5)
    (found,) = decode({"heatmap": heatmap, "size": size, "offset": offset})
    # Centre at cell (7.25, 5.5) of stride 4: (29, 22) in pixels, 10 wide and 20 high.
    np.testing.assert_allclose(found["boxes"], [[24.0, 12.0, 34.0, 32.0]])
    assert found["labels"].tolist() == [3] and found["scores"][0] == pytest.approx(1 / (1 + np.exp(-4.0)))
    assert len(decode({"heatmap": heatmap, "size": size, "offset": offset}, top_k=0)[0]["boxes"]) == 0


def test_loss_is_finite_and_smallest_at_the_targets() -> None:
    boxes = torch.tensor([[[8.0, 12.0, 30.0, 40.0], [0.0, 0.0, 0.0, 0.0]], [[0.0] * 4, [0.0] * 4]])
    labels = torch.tensor([[2, -1], [-1, -1]])  # the second image has no object at all
    # The ideal outputs: a confident peak at the centre cell, the true size and offset there.
    heatmap = torch.full((2, 10, 16, 16), -12.0)
    heatmap[0, 2, 6, 4] = 12.0  # centre (19, 26) px -> cell (4.75, 6.5) -> (4, 6)
    size, offset = torch.zeros(2, 2, 16, 16), torch.zeros(2, 2, 16, 16)
    size[0, :, 6, 4] = torch.tensor([22.0, 28.0])
    offset[0, :, 6, 4] = torch.tensor([0.75, 0.5])
    ideal = detection_loss({"heatmap": heatmap, "size": size, "offset": offset}, boxes, labels)
    off = detection_loss({"heatmap": heatmap, "size": size + 3, "offset": offset}, boxes, labels)
    assert ideal < 1e-3 < off and torch.isfinite(off)
    outputs = tiny_centernet()(torch.rand(2, 1, 64, 64))
    loss = detection_loss(outputs, boxes, labels)
    loss.backward()
    assert torch.isfinite(loss) and outputs["heatmap"].shape == (2, 10, 16, 16)
    assert outputs["size"].shape == outputs["offset"].shape == (2, 2, 16, 16)


# The canvases.

def _coded_sources(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """28 x 28 rectangles of random size whose pixel value encodes their label (20 * (label + 1))."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count)
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels):
        y, x = rng.integers(0, 10, size=2)
        height, width = rng.integers(6, 18, size=2)
        image[y:y + height, x:x + width] = 20 * (label + 1)
    return images, labels


def _inside_some_box(shape: tuple[int, int], boxes: np.ndarray) -> np.ndarray:
    covered = np.zeros(shape, dtype=bool)
    for x1, y1, x2, y2 in boxes.astype(np.int64):
        covered[y1:y2, x1:x2] = True
    return covered


@needs_fashion_mnist
def test_boxes_tightly_contain_the_pasted_pixels() -> None:
    images = data._read_idx(FASHION / "train-images-idx3-ubyte.gz", limit=500)
    labels = data._read_idx(FASHION / "train-labels-idx1-ubyte.gz", limit=500)
    single = paste_objects(images, labels, count=40, max_objects=1, seed=3)
    for canvas, box in zip(single.images, single.boxes[:, 0]):
        rows, cols = np.nonzero(canvas.any(axis=1))[0], np.nonzero(canvas.any(axis=0))[0]
        assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]  # corners are pixel edges
    several = paste_objects(images, labels, count=60, max_objects=3, seed=4)
    for canvas, boxes, classes in zip(several.images, several.boxes, several.labels):
        boxes = boxes[classes >= 0]
        assert not (canvas.astype(bool) & ~_inside_some_box(canvas.shape, boxes)).any()
        for x1, y1, x2, y2 in boxes.astype(np.int64):  # every edge of a box touches a pixel of its object
            assert canvas[y1, x1:x2].any() and canvas[y2 - 1, x1:x2].any()
            assert canvas[y1:y2, x1].any() and canvas[y1:y2, x2 - 1].any()


def test_canvases_are_deterministic_and_hold_at_most_max_objects() -> None:
    images, labels = _coded_sources(200)
    first = paste_objects(images, labels, count=50, max_objects=2, seed=5)
    again = paste_objects(images, labels, count=50, max_objects=2, seed=5)
    shorter = paste_objects(images, labels, count=20, max_objects=2, seed=5)
    other = paste_objects(images, labels, count=50, max_objects=2, seed=6)
    for name in ("images", "boxes", "labels"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
        np.testing.assert_array_equal(getattr(first, name)[:20], getattr(shorter, name))  # a prefix
    assert not np.array_equal(first.images, other.images)
    objects = (first.labels >= 0).sum(axis=1)
    assert first.images.shape == (50, 64, 64) and first.images.dtype == np.uint8
    assert first.boxes.shape == (50, 2, 4) and first.boxes.dtype == np.float32 and first.labels.dtype == np.int64
    assert objects.min() == 1 and objects.max() == 2 and (first.boxes[first.labels < 0] == 0).all()


def test_labels_are_the_source_images_labels() -> None:
    images, labels = _coded_sources(300, seed=1)
    canvases = paste_objects(images, labels, count=80, canvas=48, seed=2)
    checked = 0
    for canvas, sample in zip(canvases.images, to_lists(canvases.boxes, canvases.labels)):
        for (x1, y1, x2, y2), label in zip(sample["boxes"].astype(np.int64), sample["labels"]):
            values = canvas[y1:y2, x1:x2]
            # Overlaps are small (IoU <= 0.1), so the object's own value fills most of its box.
            assert np.bincount(values[values > 0]).argmax() == 20 * (label + 1)
            checked += 1
    assert checked > 80


@needs_fashion_mnist
def test_the_fixed_splits() -> None:
    test = load_fashion_mnist_boxes("test", root=data_root())
    assert len(test.images) == 1000 and set(np.unique(test.labels)) == set(range(-1, 10))
    prefix = load_fashion_mnist_boxes("test", root=data_root(), count=10)
    np.testing.assert_array_equal(prefix.boxes, test.boxes[:10])
    train = load_fashion_mnist_boxes("train", root=data_root(), count=10)
    assert not np.array_equal(train.images, prefix.images)
    with pytest.raises(ValueError, match="part"):
        load_fashion_mnist_boxes("validation", root=data_root())


def test_the_data_module_imports_without_torch() -> None:
    probe = ("import sys, edgepress.models.detection_data, edgepress.measure.scores.detection\n"
             "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
