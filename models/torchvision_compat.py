"""Let torchvision's classifiers import where its C++ extension cannot load.

PyPI's torchvision wheel is built against the CUDA torch: its `_C` extension links libc10_cuda.so,
which the CPU torch build (the one edgepress pins) does not ship. `torch.ops.load_library` then
fails, torchvision carries on without its ops, and its import dies a few lines later when
`torchvision/_meta_registrations.py` registers fake kernels for `torchvision::nms` and
`torchvision::qnms`, ops that do not exist. The models themselves (mobilenet_v3, resnet,
efficientnet, ...) are plain Python over torch.nn and need none of those ops.

So, only when torchvision is installed and its extension cannot load, this defines the two op
schemas (with no kernel) before torchvision is imported. Classifiers then build and run as usual;
calling `torchvision.ops.nms` (detection models) still fails, with torch's "no kernel" error,
because there really is no kernel for it on this install.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

# The ops whose fake kernels torchvision registers at import time (torchvision/_meta_registrations.py),
# with the schemas torchvision's C++ code declares for them.
_MISSING_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

_checked = False
# The registration lives only as long as this object: dropping it would remove the ops again.
_library = None


def _extension_path() -> Path | None:
    """torchvision's compiled `_C` extension, found without importing torchvision (whose import is
    what fails); None when torchvision or its extension is not installed."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        # The lookup torchvision itself does (torchvision/_internally_replaced_utils.py).
        finder = importlib.machinery.FileFinder(
            folder, (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES))
        extension = finder.find_spec("torchvision._C")
        if extension is not None and extension.origin:
            return Path(extension.origin)
    return None


def _extension_loads(path: Path) -> bool:
    import torch

    try:
        torch.ops.load_library(str(path))  # what torchvision does first; loading twice is harmless
    except OSError:  # e.g. libc10_cuda.so missing: a CUDA wheel beside a CPU torch
        return False
    return True


def _define_missing_ops() -> None:
    global _library
    import torch

    missing = [schema for name, schema in _MISSING_OP_SCHEMAS.items() if not hasattr(torch.ops.torchvision, name)]
    if not missing:
        return
    # FRAGMENT, not DEF: another library may already own part of the torchvision namespace.
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in missing:
        _library.define(schema)


def make_torchvision_importable() -> None:
    """Call before importing a module that may import torchvision; does nothing where torchvision
    is absent, already imported, or its extension loads. Cheap after the first call."""
    global _checked
    if _checked or "torchvision" in sys.modules:
        return
    _checked = True
    extension = _extension_path()
    if extension is not None and not _extension_loads(extension):
        _define_missing_ops()
