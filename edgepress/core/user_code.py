"""The user's model code, by content, for the resume key: an edited model (a ReLU turned Sigmoid, same
parameters) is another model, and its stages are redone.

What counts: every file of the entry's top-level package (or its lone module), and the modules that code
imports from the folder it lies in (a `layers.py` beside `net.py`), found by reading their import statements,
so the digest is the same whatever else the process imported. Installed packages (site-packages) count by their
own files only: their neighbours are other libraries, versioned on their own.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from pathlib import Path

# Past these, a file counts by its size and modification time: a checkout with data or weights inside the
# package must not make every run read gigabytes.
HASHED_FILE_MAX_BYTES = 16 << 20
HASHED_FILES_MAX = 20_000
INSTALLED = ("site-packages", "dist-packages")


def digest(entry: str | None) -> str:
    """A digest of the code behind a `package.module:function` entry; "" for none, "unfound" when its top-level
    module cannot be found (then checking the recipe has failed already)."""
    if entry is None:
        return ""
    top = entry.partition(":")[0].split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.has_location:
        return "unfound"
    packages = [Path(p) for p in spec.submodule_search_locations or []]
    own = sorted(f for p in packages for f in _files(p)) if packages else [Path(spec.origin)]
    folder = packages[0].parent if packages else Path(spec.origin).parent
    found = own if folder.name in INSTALLED else _with_local_imports(own, folder=folder)
    hashed = hashlib.sha256()
    for count, path in enumerate(found):
        stat = path.stat()
        hashed.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0".encode())
        if count < HASHED_FILES_MAX and stat.st_size <= HASHED_FILE_MAX_BYTES:
            hashed.update(path.read_bytes())
        else:
            hashed.update(str(stat.st_mtime_ns).encode())
    return hashed.hexdigest()


def _files(package: Path) -> list[Path]:
    return [p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


def _with_local_imports(files: list[Path], *, folder: Path) -> list[Path]:
    """`files` and the modules and packages in `folder` that their Python sources import, transitively."""
    found, todo = set(files), [f for f in files if f.suffix == ".py"]
    while todo and len(found) < HASHED_FILES_MAX:
        for name in _imported(todo.pop()):
            module, package = folder / f"{name}.py", folder / name
            for path in [module] if module.is_file() else sorted(_files(package)) if package.is_dir() else []:
                if path not in found:
                    found.add(path)
                    if path.suffix == ".py":
                        todo.append(path)
    return sorted(found)


def _imported(source: Path) -> set[str]:
    """The top-level names of the absolute imports in `source` (relative ones stay inside its package)."""
    try:
        tree = ast.parse(source.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names
