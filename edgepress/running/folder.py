"""The run folder is edgepress's alone: what it may create, replace or delete there, and nothing else.

A run folder carries a marker file (MARKER) listing the top-level names edgepress created in it. A name is
replaced or deleted only if it is listed there, or is one of edgepress's own temporary names (atomic.py);
every other file in the folder is the user's and is never touched. `--out` at an existing non-empty folder
without a marker is refused unless the user adopts it (`--adopt`); even then edgepress writes only names
that are free or already its own.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgepress.core import atomic
from edgepress.core.errors import UserError
from edgepress.running.options import ADOPT, OUT
from edgepress.report.model import is_report_json

MARKER = ".edgepress-run.json"
MARKER_SCHEMA = "edgepress.run-folder/1"
# Created by the run lock before the marker can be written; the ".edgepress" prefix is edgepress's namespace.
ALWAYS_OURS = (MARKER, ".edgepress.lock")


def write_error(path: Path, exc: OSError, *, doing: str) -> UserError:
    """An OSError met while creating or writing the output folder, as a one-line problem and fix."""
    path = Path(path)
    if exc.errno == errno.ENAMETOOLONG:
        return UserError(f"the output path {path} is too long for the file system ({doing})",
                         fix=f"pass a shorter {OUT}, or a shorter recipe name")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), path)
        return UserError(f"the output folder {path} cannot be made: {blocker} is a file ({doing})",
                         fix=f"pass {OUT} a folder path that does not lie under a file")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        return UserError(f"cannot write to the output folder {path} ({reason}, {doing})",
                         fix=f"pass {OUT} a folder you can write to, or make this one writable")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"the disk holding {path} is full ({doing})",
                         fix=f"free space on it, or pass another {OUT}")
    return UserError(f"cannot write to the output folder {path} ({exc.strerror or exc}, {doing})",
                     fix=f"pass {OUT} a folder you can write to")


def check_output_file(path: Path, *, flag: str, inputs: tuple[Path | None, ...] = ()) -> None:
    """A file a command writes when it is done (bench --json, gate --junit): refused before any work when it
    could not be written then, or when it is one of the command's `inputs` (a model, a report) that it would
    destroy. Any other existing file is replaced: the user named it."""
    path = Path(path)
    fix = f"pass {flag} a file path in an existing folder you can write to"
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise UserError(f"{flag} {path} is also an input of this command ({source}), which writing would destroy",
                            fix=f"pass {flag} a new file path")
    try:
        if path.is_dir():
            raise UserError(f"{flag} {path} is a folder", fix=f"pass {flag} a file path, e.g. {path / 'out'}")
        parent = path.parent
        if not parent.is_dir():
            raise UserError(f"{flag} {path}: its folder {parent} does not exist or is not a folder", fix=fix)
        if len(path.name.encode()) > os.pathconf(parent, "PC_NAME_MAX") - len(atomic.TEMP_PREFIX) - 20:
            raise UserError(f"{flag} {path}: the file name is too long for the file system", fix="pass a shorter name")
        # A real write, not os.access: root passes every permission test, and /proc or a read-only mount refuse
        # files whatever the bits say.
        with tempfile.NamedTemporaryFile(dir=parent, prefix=atomic.TEMP_PREFIX, suffix=".probe"):
            pass
    except OSError as exc:
        raise UserError(f"{flag} {path}: {exc.strerror or exc}", fix=fix) from None


def _same_file(one: Path, other: Path) -> bool:
    try:
        return one.resolve() == other.resolve() or (one.exists() and other.exists() and one.samefile(other))
    except OSError:
        return False


_STAGE_FOLDER = re.compile(r"\d{2,}-[A-Za-z0-9_-]{1,64}")


def earlier_run_names(folder: Path) -> set[str]:
    """What a run of an edgepress without markers (before 2026-12) left in `folder`, recognised by its structure
    alone: NN-stage folders holding a stage record, a report.json of edgepress's schema with its report.md,
    report.html and plots, resume folders and target records of stages. A rerun on such a folder goes on from
    it; anything else in the folder stays the user's."""
    ours_report = is_report_json(_json_table(folder / "report.json"))
    owned = set()
    for entry in folder.iterdir():
        name = entry.name
        resumed, measured = name.removeprefix(".resume-"), name.removesuffix(".targets-incomplete.json")
        if _STAGE_FOLDER.fullmatch(name):
            record = _json_table(entry / "stage.json") if entry.is_dir() and not entry.is_symlink() else {}
            ours = {"key", "record"} <= record.keys()
        elif resumed != name:  # a killed stage's epoch checkpoints
            ours = entry.is_dir() and bool(_STAGE_FOLDER.fullmatch(resumed))
        elif measured != name:
            ours = (bool(_STAGE_FOLDER.fullmatch(measured))
                    and {"stage", "complete", "targets"} <= _json_table(entry).keys())
        else:
            ours = ours_report and (name in ("report.json", "report.md", "report.html")
                                    or (name.startswith("sensitivity-") and name.endswith(".svg")))
        if ours:
            owned.add(name)
    return owned


def _json_table(path: Path) -> dict:
    """The top-level table of a JSON file, or {} when it is missing, unreadable or no table."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


@dataclass
class RunFolder:
    path: Path
    adopt: bool = False
    owned: set[str] = field(default_factory=set)
    created: list[Path] = field(default_factory=list)  # folders this run made, deepest last

    def check(self) -> None:
        """Refuse, before anything is written, an --out that is a file, lies under a file, or is a folder
        of the user's that edgepress was not asked to adopt."""
        try:
            self._check()
        except OSError as exc:  # a name too long, a folder that cannot be listed
            raise write_error(self.path, exc, doing="looking at it") from None

    def _check(self) -> None:
        path = self.path
        for ancestor in [path, *path.parents]:
            if ancestor.exists() or ancestor.is_symlink():
                if not ancestor.is_dir():
                    where = "is" if ancestor == path else f"lies under {ancestor}, which is"
                    raise UserError(f"the output folder {path} {where} a file",
                                    fix=f"pass {OUT} a new or existing folder, e.g. a subfolder beside that file")
                break
        if not path.is_dir():
            return
        marker = self._read_marker()
        if marker is not None:
            self.owned = marker
            return
        try:
            self.owned = earlier_run_names(path)
            entries = [p.name for p in path.iterdir() if p.name not in ALWAYS_OURS and p.name not in self.owned]
        except OSError as exc:
            raise write_error(path, exc, doing="listing it") from None
        if entries and not self.adopt:
            raise UserError(f"the output folder {path} already holds files that edgepress did not create "
                            f"({', '.join(sorted(entries)[:3])}{', ...' if len(entries) > 3 else ''})",
                            fix=f"pass {OUT} a new subfolder such as {path / 'edgepress-run'}, or add {ADOPT} to "
                                "write beside them (edgepress then touches none of them)")

    def _read_marker(self) -> set[str] | None:
        data = _json_table(self.path / MARKER)
        if data.get("schema") != MARKER_SCHEMA or not isinstance(data.get("owned"), list):
            return None
        return {name for name in data["owned"]
                if isinstance(name, str) and "/" not in name and name not in ("", ".", "..")}

    def make(self) -> None:
        """Create the folder (and missing parents), remembering which were new, so that a run refused on bad
        input can leave no trace."""
        missing = []
        for ancestor in [self.path, *self.path.parents]:
            if ancestor.is_dir():
                break
            missing.append(ancestor)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.path, exc, doing="creating it") from None
        self.created = list(reversed(missing))
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise write_error(self.path, PermissionError(errno.EACCES, "permission denied"), doing="opening it")

    def claim(self, *names: str) -> None:
        """Mark `names` (top-level entries about to be written) as edgepress's, refusing any that already exist
        and are not. The marker is written before the entries, so that a run killed in between still owns them."""
        clashes = [n for n in names if n not in self.owned and n not in ALWAYS_OURS
                   and ((self.path / n).exists() or (self.path / n).is_symlink())]
        if clashes:
            raise UserError(f"{self.path / clashes[0]} exists and is not edgepress's (a run would replace it)",
                            fix=f"move it out of the way, or pass {OUT} a new folder")
        new = set(names) - self.owned
        if new or not (self.path / MARKER).exists():
            self.owned |= new
            try:
                atomic.write_json(self.path / MARKER, {"schema": MARKER_SCHEMA, "owned": sorted(self.owned)})
            except OSError as exc:
                raise write_error(self.path, exc, doing="writing its marker") from None

    def remove_leftovers(self) -> None:
        atomic.remove_leftovers(self.path)

    def remove_if_untouched(self) -> None:
        """The folders this run created, if nothing but the lock's traces is in them (a run refused on bad input)."""
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                return
