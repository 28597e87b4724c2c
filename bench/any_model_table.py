"""The table of issue 18's families from finished runs: python bench/any_model_table.py RUN_DIR ...

Each RUN_DIR is an `edgepress run` output folder. For every stage after the reference: the recipe's headline
metric values, their drop against the reference stage, size, and p50 latency with its ratio to the run's first
ONNX stage (FP32), all read from report.json. The timings are the pipeline's, each artifact timed alone on the
recipe's target (1 thread), not interleaved: ratios within about 10 % are within this machine's noise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepress.measure.task import metric_of_report  # noqa: E402


def rows(run: Path) -> list[list[str]]:
    report = json.loads((run / "report.json").read_text())
    metric = metric_of_report(report)
    stages = report["stages"]
    reference = next(s for s in stages if s["name"] == report["reference_stage"])["metrics"]
    fp32 = next((s["metrics"] for s in stages if s["format"] == "onnx"), None)
    found = []
    for stage in stages[[s["name"] for s in stages].index(report["reference_stage"]):]:
        m = stage["metrics"]
        values = []
        for value in metric.shown:
            if value.key in m:
                change = m[value.key] - reference[value.key]
                scale = 100 if value.unit == "share" else 1
                values.append(f"{value.label} {value.show(m[value.key])} ({'+' if change >= 0 else ''}{scale * change:.2f}"
                              f"{' pt' if scale == 100 else ''})")
        latency = m.get("latency_ms", {}).get("p50")
        ratio = f"{latency / fp32['latency_ms']['p50']:.2f}x" if latency and fp32 and fp32.get("latency_ms") else "–"
        found.append([report["name"], stage["name"], stage["kind"], "; ".join(values),
                      f"{m['size_bytes'] / 1024:.1f} KiB", f"{latency:.3f}" if latency else "–", ratio])
    return found


def main(folders: list[str]) -> None:
    print("| recipe | stage | kind | metric (change vs reference) | size | p50 ms | p50 vs FP32 ONNX |")
    print("|---|---|---|---|---|---|---|")
    for folder in folders:
        for row in rows(Path(folder)):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
