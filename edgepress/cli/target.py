"""`edgepress target setup qemu-aarch64`: prepare, once, a target that needs preparing on this machine."""

from __future__ import annotations

import argparse

from edgepress.core.errors import UserError

HELP = "prepare a target once: `target setup qemu-aarch64` fetches an aarch64 Python and onnxruntime for qemu-user"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    setup = actions.add_parser(
        "setup", help="prepare a target (qemu-aarch64: about 60 MB of downloads, under a minute or two)",
        description="Prepare qemu-aarch64 under $EDGEPRESS_CACHE (default ~/.cache/edgepress): Debian's arm64 "
                    "CPython and the onnxruntime and numpy aarch64 wheels, without root. Safe to rerun.")
    setup.add_argument("target", help="qemu-aarch64 (or qemu-aarch64:CPU: the setup serves every CPU)")
    setup.add_argument("--force", action="store_true", help="build it again even if it is ready")
    setup.add_argument("--onnxruntime", metavar="VERSION",
                       help="the onnxruntime version (default: this machine's, or the newest with an aarch64 wheel)")
    setup.add_argument("--mirror", metavar="URL",
                       help="a Debian mirror (default: the one this machine's apt uses, else deb.debian.org)")


def run(args: argparse.Namespace) -> int:
    from edgepress.targets import FORMS, SCHEMES, TargetOptions, scheme_of
    from edgepress.targets import qemu, qemu_setup

    if scheme_of(args.target) not in SCHEMES:
        raise UserError(f"unknown target {args.target!r}", fix=f"name one of {FORMS}")
    if scheme_of(args.target) != qemu.SCHEME:
        raise UserError(f"target {args.target!r} needs no setup",
                        fix="only qemu-aarch64 is set up here; local and ssh:// devices need `pip install onnxruntime "
                            "numpy` on the device")
    qemu.from_name(args.target, TargetOptions())  # a malformed name or an unknown CPU fails before any download
    found = qemu_setup.setup(force=args.force, onnxruntime_version=args.onnxruntime, mirror=args.mirror)
    folder = qemu.setup_folder()
    versions = (f"Python {found['python']} with onnxruntime {found['onnxruntime']} and numpy {found['numpy']} "
                f"(aarch64, Debian {found['debian']})")
    if found["already"]:
        print(f"qemu-aarch64 is ready: {versions} in {folder}, set up {found['created']}")
    else:
        print(f"qemu-aarch64 is ready: {versions} in {folder}; took {found['setup_seconds']:.0f} s, downloaded "
              f"{found['downloaded_bytes'] / 1e6:.0f} MB, {found['disk_bytes'] / 1e6:.0f} MB on disk")
    try:
        import onnxruntime
        host = onnxruntime.__version__
    except ImportError:
        host = None
    if host and host != found["onnxruntime"]:
        print(f"note: this machine has onnxruntime {host}; `edgepress target setup qemu-aarch64 --force` fetches "
              "the same version when it has an aarch64 wheel")
    offered = qemu.qemu_cpus(qemu.find_qemu())
    dot = [cpu for cpu in offered if qemu.CPUS[cpu].dot_product]
    plain = [cpu for cpu in offered if not qemu.CPUS[cpu].dot_product]
    print(f"use --target qemu-aarch64:CPU (default {qemu.DEFAULT_CPU}); without dot product: {', '.join(plain)}; "
          f"with: {', '.join(dot)}. Timings under qemu are emulated, never latency.")
    return 0
