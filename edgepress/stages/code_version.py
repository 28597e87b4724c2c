"""Which code made a result: part of every resume key, so that a stage made by other code is made again."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from functools import lru_cache
from pathlib import Path

PACKAGES = ("edgepress", "edgepress.compress", "edgepress.export", "edgepress.runtime", "edgepress.models")
LIBRARIES = ("torch", "onnx", "onnxruntime", "numpy", "torch-pruning")


@lru_cache(maxsize=1)
def code_version() -> str:
    """Every source file of edgepress and the versions of the libraries that compute its results."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for path in sorted(Path(folder).rglob("*")):
                if path.suffix in (".py", ".toml") and "__pycache__" not in path.parts:
                    digest.update(f"{package}/{path.relative_to(folder).as_posix()}\0".encode())
                    digest.update(path.read_bytes())
    for library in LIBRARIES:
        try:
            version = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{library}=={version}\0".encode())
    # Kernels, and so results and automatic choices (the INT8 scheme, 7-bit weights), differ between
    # instruction sets: x86 with and without VNNI, ARM with and without dot products.
    from edgepress.runtime.isa import local_isa

    digest.update(local_isa().describe().encode())
    return digest.hexdigest()
