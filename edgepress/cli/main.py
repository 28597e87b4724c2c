"""`edgepress check | run | demo | bench | gate | metrics | stages | target | ops`: exit 0 ok, 1 a budget is violated,
2 bad input or any error."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib import resources
from pathlib import Path

from edgepress.core import children
from edgepress.compress.training import distributed
from edgepress.core.errors import UserError

EXIT_OK, EXIT_BUDGET, EXIT_ERROR = 0, 1, 2
# Commands with a module of their own: each has HELP, add_arguments(parser) and run(args) -> exit code.
COMMAND_MODULES = {"bench": "edgepress.cli.bench", "gate": "edgepress.cli.gate", "target": "edgepress.cli.target",
                   "metrics": "edgepress.cli.metrics", "stages": "edgepress.cli.stages", "ops": "edgepress.cli.ops"}


class _Parser(argparse.ArgumentParser):
    """Command-line mistakes are bad input too: one line and exit 2, not argparse's usage block."""

    def error(self, message: str):
        # A subcommand's prog is "edgepress bench"; the line already starts "edgepress:", so only "bench: " is added.
        command = self.prog.removeprefix("edgepress").strip()
        self.exit(EXIT_ERROR, f"edgepress: error: {command + ': ' if command else ''}{message}; "
                              f"fix: see `{self.prog} --help`\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgepress", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edgepress {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    check_help = ("validate a recipe, its files and data without running any stage; a [model] entry is your own code, "
                  "and check calls it (with its kwargs) to build the model and learn its input and output shapes")
    check = sub.add_parser("check", help=check_help, description=check_help)
    check.add_argument("recipe", type=Path)
    run = sub.add_parser("run", help="run a recipe's stages, write reports, gate on its budgets")
    run.add_argument("recipe", type=Path)
    run.add_argument("--out", type=Path, help="output folder (default: runs/<recipe name>)")
    redo = run.add_mutually_exclusive_group()
    redo.add_argument("--force", action="store_true",
                      help="redo every stage (by default a rerun keeps stages whose input, settings and code are unchanged)")
    redo.add_argument("--from", dest="rerun_from", metavar="STAGE", help="redo this stage and every stage after it")
    demo = sub.add_parser("demo", help="the built-in default: train an MLP on digits, export, INT8, gate")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    for command in (run, demo):
        command.add_argument("--adopt", action="store_true",
                             help="write into an existing folder that holds other files (by default refused); "
                                  "edgepress still replaces or deletes only what it created there")
    for command, module_name in COMMAND_MODULES.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(command, help=module.HELP, description=module.HELP))
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("edgepress")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        from edgepress import __version__

        return __version__


def _check(recipe_path: Path) -> int:
    from edgepress import api

    result = api.check(recipe_path)
    judged = result.metric + (f" on output {result.output!r}" if result.output else "")
    shapes = ", ".join(f"{name} {list(shape)}" for name, shape in result.input_shapes.items())
    shown = f"inputs {shapes}" if shapes else f"input shape {list(result.input_shape)}"
    print(f"recipe {result.recipe} is valid: {' -> '.join(result.stages)}; {shown}; "
          f"evaluation on {', '.join(result.evaluation_sets)}, judged by {judged}")
    return EXIT_OK


def _run(recipe_path: Path, out: Path | None, *, force: bool = False, rerun_from: str | None = None,
         adopt: bool = False) -> int:
    from edgepress import api

    recipe = api.load_recipe(recipe_path)
    # Under `torchrun --nproc_per_node N -m edgepress run ...` every rank trains; rank 0 alone writes and reports.
    joined = distributed.init()
    try:
        report = api.run(recipe, out=out, force=force, rerun_from=rerun_from, adopt=adopt)
    finally:
        if joined:
            distributed.teardown()
    code = EXIT_OK if report is None else _print_outcome(report, recipe, out)  # rank 0 reports for all ranks
    if joined:
        distributed.exit_rank(code)
    return code


def _print_outcome(report, recipe, out: Path | None) -> int:
    from edgepress import api

    for line in report.warnings:
        print(f"edgepress: warning: {line}", file=sys.stderr)
    for check in report.gate.checks:
        note = f" ({check.note})" if check.note else ""
        if not check.passed:
            print(f"edgepress: budget violated: {check.budget} = {check.value:.4g} (limit {check.limit:g})" + note,
                  file=sys.stderr)
        elif note:
            print(f"edgepress: budget held: {check.budget}{note}", file=sys.stderr)
    verdict = "passed" if report.gate.passed else "FAILED"
    print(f"gate {verdict}; report: {api.output_folder(recipe, out) / 'report.md'} and report.html, machine-readable report.json")
    return EXIT_OK if report.gate.passed else EXIT_BUDGET


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (CI runners, systemd), SIGINT and SIGHUP stop edgepress's child processes before it exits.
    with children.signals_stop_children():
        try:
            return _command(argv)
        except children.Interrupted as exc:
            _say_once(f"edgepress: interrupted by {exc.signal_name}; its child processes are stopped "
                      "(a run keeps its finished stages)")
            return exc.exit_code


def _command(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.recipe)
        if args.command == "run":
            return _run(args.recipe, args.out, force=args.force, rerun_from=args.rerun_from, adopt=args.adopt)
        if args.command in COMMAND_MODULES:
            return importlib.import_module(COMMAND_MODULES[args.command]).run(args)
        with resources.as_file(resources.files("edgepress") / "builtin" / "demo.toml") as demo_recipe:
            return _run(demo_recipe, args.out, adopt=args.adopt)
    except UserError as exc:
        _say_once(f"edgepress: error: {exc.one_line()}")
        return EXIT_ERROR
    except ModuleNotFoundError as exc:
        if os.environ.get("EDGEPRESS_DEBUG"):
            raise
        _say_once(f"edgepress: error: this command needs {exc.name!r}, which is not installed; "
                  "fix: pip install 'edgepress[host]' (devices need only the base install)")
        return EXIT_ERROR
    except OSError as exc:  # the file system said no (a path, its permissions, its disk): the user's to fix
        if os.environ.get("EDGEPRESS_DEBUG"):
            raise
        where = f": {str(exc.filename)[:300]}" if exc.filename else ""
        _say_once(f"edgepress: error: {exc.strerror or type(exc).__name__}{where}; fix: check that this path exists, "
                  "is writable and its disk has room, or pass another path")
        return EXIT_ERROR
    except MemoryError:
        _say_once("edgepress: error: ran out of memory; fix: use a smaller model, batch or data limit, or a machine "
                  "with more memory (finished stages are kept)")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _say_once("edgepress: interrupted; finished stages are kept")
        return 130
    except Exception as exc:  # a bug, not bad input: still one line, the traceback on request
        if os.environ.get("EDGEPRESS_DEBUG"):
            raise
        reason = " ".join(str(exc).split())[:300]
        where = f"rank {distributed.rank()}: " if distributed.is_distributed() else ""
        print(f"edgepress: internal error: {where}{type(exc).__name__}: {reason}; fix: rerun with EDGEPRESS_DEBUG=1 "
              "and report the traceback", file=sys.stderr)
        return EXIT_ERROR


def _say_once(line: str) -> None:
    """Under torchrun every rank checks the same recipe and data and meets the same error: rank 0 says it."""
    if distributed.is_main():
        print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
