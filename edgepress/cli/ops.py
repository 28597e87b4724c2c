"""`edgepress ops RUN_OR_FILE... --out FILE [--types] [--force] [--json]`: the operators the .ort models of several
runs need, merged into one ONNX Runtime config for a reduced build that ships them all (docs/mobile.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = ("merge the required operators of the .ort models of several runs (run folders, report.json files or .ort "
        "files) into one ONNX Runtime config for a reduced build (--include_ops_by_config)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", type=Path, metavar="RUN_OR_FILE",
                        help="a run folder or its report.json (every ort_format stage of the run), or an .ort file")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="the config file to write")
    # An explicit flag, not inferred from the runs: the build must pass --enable_reduced_operator_type_support
    # exactly when the config holds types, so the choice belongs in the build script beside that flag.
    parser.add_argument("--types", action="store_true",
                        help="also list each operator's types (a smaller build; build ONNX Runtime with "
                             "--enable_reduced_operator_type_support)")
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists (by default refused)")
    parser.add_argument("--json", action="store_true", help="print what was merged as JSON")


def summary(merged) -> str:
    models = [f"  {model}" for model in merged.models]
    domains = ", ".join(f"{domain} {count}" for domain, count in merged.by_domain.items())
    typed = "with each operator's types" if merged.types else "operators only (--types adds their types)"
    # ONNX Runtime's own flags (its "Build a custom ONNX Runtime package"); edgepress builds nothing itself.
    build = (f"./build.sh --minimal_build --include_ops_by_config {merged.out}"
             + (" --enable_reduced_operator_type_support" if merged.types else "") + " --skip_tests")
    return "\n".join([f"merged {len(merged.models)} .ort model(s) into {merged.out}, {typed}:", *models,
                      f"{merged.operator_count} operators: {domains}", f"a reduced ONNX Runtime build: {build}"])


def run(args: argparse.Namespace) -> int:
    from edgepress import api

    merged = api.merge_operators(args.sources, args.out, types=args.types, force=args.force)
    print(json.dumps(merged.to_json(), indent=2) if args.json else summary(merged))
    return 0
