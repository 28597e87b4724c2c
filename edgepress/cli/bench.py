"""`edgepress bench MODEL.onnx|MODEL.ort`: latency on a target, with statistics that hold up on a noisy machine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgepress.core import atomic
from edgepress.core.errors import UserError
from edgepress.running.folder import check_output_file
from edgepress.core.schema import THREADS, Bounds
from edgepress.targets import FORMS

HELP = f"time an ONNX or ORT-format model on a target ({FORMS}) and print JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL",
                        help="MODEL.onnx, or MODEL.ort (ORT format: ONNX Runtime reads a file by its name's suffix)")
    parser.add_argument("--target", default="local", help=f"{FORMS}; default local")
    parser.add_argument("--compare", type=Path,
                        help="a second model (.onnx or .ort), timed interleaved with MODEL in one process")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--inter-op-threads", type=int, default=1)
    parser.add_argument("--spinning", choices=("default", "on", "off"), default="default",
                        help="ONNX Runtime's thread spinning between runs")
    parser.add_argument("--cpus", help="pin the runner to these CPUs, e.g. 0,1 (Linux)")
    parser.add_argument("--denormals", choices=("keep", "zero"), default="keep",
                        help="zero: flush denormal floats to zero (x86; padded attention masks make them)")
    parser.add_argument("--disable-optimizer", action="append", default=[], dest="disabled_optimizers", metavar="NAME",
                        help="an ONNX Runtime graph transformer the session skips, e.g. SkipLayerNormFusion")
    count = parser.add_mutually_exclusive_group()
    count.add_argument("--runs", type=int, default=200, help="timed runs per model (default 200)")
    count.add_argument("--duration", type=float, help="seconds of timed runs, instead of --runs")
    parser.add_argument("--warmup", default="auto", help="untimed runs first: a count, or auto (until timings settle)")
    parser.add_argument("--inputs", type=Path, help="an .npz of inputs named after the model's inputs (default random)")
    parser.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                        help="size of a free input dimension, e.g. batch=1 or sequence=128 (default 1)")
    parser.add_argument("--json", type=Path, dest="json_path", help="also write the JSON here")
    parser.add_argument("--samples", action="store_true", help="keep every timing in the JSON")
    parser.add_argument("--profile", action="store_true",
                        help="ONNX Runtime's per-operator profile of each model too: ms per op type and per node")
    parser.add_argument("--python", help="the device's Python (default: python3 on ssh, this one locally)")
    parser.add_argument("--identity-file", type=Path, help="ssh: private key")
    parser.add_argument("--workdir", help="ssh: folder on the device for the temporary working folder")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="ssh: seconds to wait for the device")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before the run is abandoned")


def runner_args(args: argparse.Namespace) -> list[str]:
    """The device runner's command line; files by base name, as the target places them."""
    out = ["bench", args.model.name, "--threads", str(args.threads), "--inter-op-threads", str(args.inter_op_threads),
           "--spinning", args.spinning, "--warmup", str(args.warmup)]
    if args.duration is not None:
        out += ["--duration", str(args.duration)]
    else:
        out += ["--runs", str(args.runs)]
    if args.compare is not None:
        out += ["--compare", args.compare.name]
    if args.inputs is not None:
        out += ["--inputs", args.inputs.name]
    for pair in args.dim:
        out += ["--dim", pair]
    if args.cpus:
        out += ["--cpus", args.cpus]
    out += ["--denormals", args.denormals]
    for name in args.disabled_optimizers:
        out += ["--disable-optimizer", name]
    if args.samples:
        out.append("--samples")
    if args.profile:
        out.append("--profile")
    return out


def _check(args: argparse.Namespace) -> list[Path]:
    """The files the device needs, by distinct base names: the models, their external data, the inputs.
    Each model is checked here, before any session opens it (edgepress/io/onnx_check.py, or ort_check.py for an
    .ort: ONNX Runtime reads a file as ORT format by its name, and the check follows it)."""
    from edgepress.core.archives import check_npz
    from edgepress.io.onnx_check import check_onnx_file
    from edgepress.io.ort_check import check_ort_file
    from edgepress.runtime.session import is_ort_path

    files = [args.model] + [p for p in (args.compare, args.inputs) if p is not None]
    for path in files:
        if not path.exists():
            raise UserError(f"{path} does not exist", fix="pass the path of an existing file")
    for flag, model in (("MODEL", args.model), ("--compare", args.compare)):
        if model is not None:
            carried = (check_ort_file(model, what=flag) if is_ort_path(model) else
                       check_onnx_file(model, what=flag, takes_ort=True))
            files += _carried(carried, model=model)
    if args.inputs is not None:
        if not args.inputs.is_file():
            raise UserError(f"--inputs {args.inputs} is not a file", fix="pass an .npz written by numpy.savez")
        check_npz(args.inputs, what="--inputs", fix="pass an .npz written by numpy.savez")
    by_name: dict[str, Path] = {}
    for path in files:
        other = by_name.setdefault(path.name, path)
        if other.resolve() != path.resolve():
            raise UserError(f"{path} has the same file name as {other}",
                            fix="rename one of them: all are copied into one folder on the device")
    _check_ranges(args)
    for name in args.disabled_optimizers:
        if not name.isidentifier():
            raise UserError(f"--disable-optimizer {name!r} is not an ONNX Runtime transformer name",
                            fix="pass a name such as SkipLayerNormFusion")
    if args.warmup != "auto" and not (str(args.warmup).isdigit() and int(args.warmup) <= MAX_RUNS):
        raise UserError(f"--warmup {args.warmup!r} is neither a count up to {MAX_RUNS} nor auto",
                        fix="pass e.g. --warmup 50 or auto")
    if args.json_path is not None:
        check_output_file(args.json_path, flag="--json", inputs=tuple(files))
    return list({p.resolve(): p for p in files}.values())


MAX_RUNS = 1_000_000
# Far beyond any real use, short of a typo's extra zeros (a bench that would never end).
RANGES = {"threads": Bounds(*THREADS), "inter_op_threads": Bounds(*THREADS), "runs": Bounds(1, MAX_RUNS),
          "duration": Bounds(0, 3600, low_open=True), "timeout": Bounds(0, 7 * 86400, low_open=True),
          "connect_timeout": Bounds(0, 3600, low_open=True)}


def _check_ranges(args: argparse.Namespace) -> None:
    for name, bounds in RANGES.items():
        value = getattr(args, name)
        if value is not None and not bounds.holds(value):
            flag = "--" + name.replace("_", "-")
            shown = f"{'(' if bounds.low_open else '['}{bounds.low}, {bounds.high}]"
            raise UserError(f"{flag} {value:g} is outside {shown}", fix=f"pass {flag} within that range")


def _carried(external: tuple[Path, ...], *, model: Path) -> list[Path]:
    """External data files travel with the model by base name, so they must sit right beside it."""
    folder = model.resolve().parent
    for path in external:
        if path.parent != folder:
            raise UserError(f"{model} reads external data from {path.relative_to(folder)}, in a subfolder; the "
                            "device gets every file in one folder",
                            fix="save the external data beside the model (location='NAME.data' in onnx.save)")
    return list(external)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The bench JSON; a runner that stopped after some timed runs raises PartialMeasurement whose result is
    labelled like a whole one."""
    from edgepress.targets import PartialMeasurement, TargetOptions, open_target

    files = _check(args)
    options = TargetOptions(python=args.python, identity_file=args.identity_file, workdir=args.workdir,
                            connect_timeout_s=args.connect_timeout)
    target = open_target(args.target, options=options)
    print(f"edgepress: timing {args.model.name}" + (f" against {args.compare.name}" if args.compare else "")
          + f" on {target.name}", file=sys.stderr, flush=True)
    try:
        result = target.run(files=files, args=runner_args(args), timeout_s=args.timeout)
    except PartialMeasurement as exc:
        exc.result = _labelled(exc.result, target)
        raise
    return _labelled(result, target)


def _labelled(result: dict[str, Any], target) -> dict[str, Any]:
    result = {"target": target.name, "emulated": target.emulated, **result}
    if target.emulated:
        result["note"] = "timings under emulation: use them to compare kernels' answers, never as latency"
    return result


def _top_op_types(profile: dict[str, Any], count: int = 4) -> str:
    return ", ".join(f"{row['op_type']} {100 * row['share']:.0f}%" for row in profile["by_op_type"][:count])


def summary_line(result: dict[str, Any]) -> str:
    lat, ci = result["latency_ms"], result["p50_ci95_ms"]
    line = (f"{result['model']} on {result['target']}{' (emulated)' if result['emulated'] else ''}: "
            f"p50 {lat['p50']:.3f} ms [95% CI {ci[0]:.3f}-{ci[1]:.3f}], p90 {lat['p90']:.3f}, p99 {lat['p99']:.3f}, "
            f"cv {100 * lat['cv']:.1f}% over {result['runs']} runs in {result.get('epochs', 1)} epochs")
    if result.get("peak_memory_bytes"):
        line += f", peak memory {result['peak_memory_bytes'] / 2**20:.1f} MiB"
    if "profile" in result:
        line += "; time by op type: " + _top_op_types(result["profile"])
    if "compare" in result:
        c = result["compare"]
        line += (f"; vs {c['model']}: p50 {c['latency_ms']['p50']:.3f} ms, ratio {c['p50_ratio']:.3f} "
                 f"[95% CI {c['p50_ratio_ci95'][0]:.3f}-{c['p50_ratio_ci95'][1]:.3f}]")
        if "profile" in c:
            line += f"; its time by op type: {_top_op_types(c['profile'])}"
    return line


def run(args: argparse.Namespace) -> int:
    from edgepress.targets import PartialMeasurement

    try:
        result = measure(args)
    except PartialMeasurement as exc:
        # What was measured before the runner stopped is written as a result would be, marked, then the error.
        _write(args, exc.result)
        where = args.json_path if args.json_path is not None else "stdout"
        raise UserError(f"{exc.problem}; their statistics are written to {where} with \"complete\": false",
                        fix=exc.fix) from None
    _write(args, result)
    print(summary_line(result), file=sys.stderr)
    return 0


def _write(args: argparse.Namespace, result: dict[str, Any]) -> None:
    text = json.dumps(result, indent=2)
    if args.json_path is not None:
        atomic.write_text(args.json_path, text + "\n")
    print(text)
