"""The gate's outcomes as JUnit XML, the format CI dashboards read: one testsuite per target, one testcase
per budget check and per p50 regression check. A violated budget or a regression is a <failure>; an
inconclusive regression check and a check skipped under emulation are <skipped>, so that they stay
visible without failing the build."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from edgepress.core import atomic
from edgepress.gating.verdicts import Outcome


def _counts(outcomes: list[Outcome]) -> dict[str, str]:
    return {"tests": str(len(outcomes)), "failures": str(sum(o.status == "failed" for o in outcomes)),
            "errors": "0", "skipped": str(sum(o.status in ("inconclusive", "skipped") for o in outcomes)),
            "time": "0"}


def xml_text(outcomes: list[Outcome], *, recipe: str, targets: list[str]) -> str:
    """`targets` orders the suites; a target with no check still gets its (empty) suite."""
    root = ET.Element("testsuites", {"name": f"edgepress gate: {recipe}", **_counts(outcomes)})
    for target in targets + sorted({o.target for o in outcomes} - set(targets)):
        mine = [o for o in outcomes if o.target == target]
        suite = ET.SubElement(root, "testsuite", {"name": target, **_counts(mine)})
        for outcome in mine:
            case = ET.SubElement(suite, "testcase", {"classname": f"edgepress.{recipe}.{target}",
                                                     "name": outcome.name, "time": "0"})
            if outcome.status == "failed":
                kind = "regression" if outcome.check == "p50 growth" else "budget"
                ET.SubElement(case, "failure", {"message": outcome.message, "type": kind}).text = (
                    f"stage {outcome.stage} on {target}: {outcome.message}")
            elif outcome.status in ("inconclusive", "skipped"):
                prefix = "inconclusive: " if outcome.status == "inconclusive" else ""
                ET.SubElement(case, "skipped", {"message": prefix + outcome.message})
            else:
                ET.SubElement(case, "system-out").text = outcome.message
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write(path: Path, outcomes: list[Outcome], *, recipe: str, targets: list[str]) -> None:
    atomic.write_text(path, xml_text(outcomes, recipe=recipe, targets=targets))
