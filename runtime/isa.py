"""What integer kernels a CPU gives ONNX Runtime, read from the CPU itself (no torch)."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Isa:
    arch: str  # "x86_64" or "aarch64"
    vnni: bool = False  # x86 AVX-VNNI / AVX512-VNNI: u8 x s8 dot products accumulate in int32
    dot_product: bool = False  # ARM SDOT/UDOT

    @property
    def u8s8_saturates(self) -> bool:
        """x86 without VNNI adds pairs of u8 x s8 products in int16 (VPMADDUBSW), which saturates."""
        return self.arch == "x86_64" and not self.vnni

    def slow_schemes(self) -> dict[str, str]:
        """scheme -> why ONNX Runtime has no fast kernel for it on this CPU."""
        if self.arch == "x86_64" and not self.vnni:
            return {"s8s8": "x86 without VNNI runs S8S8 through a slower kernel than FP32",
                    "u8u8": "x86 without VNNI runs U8U8 through a slower kernel than U8S8"}
        if self.arch == "x86_64":
            return {"u8u8": "x86 runs U8U8 through a slower kernel than U8S8"}
        return {}

    def describe(self) -> str:
        extras = [name for name, on in (("VNNI", self.vnni), ("dot product", self.dot_product)) if on]
        return self.arch + (f" ({', '.join(extras)})" if extras else " (no VNNI)" if self.arch == "x86_64" else "")


def parse_cpuinfo(text: str, *, machine: str) -> Isa:
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if machine in ("aarch64", "arm64"):
        return Isa(arch="aarch64", dot_product="asimddp" in flags)
    return Isa(arch="x86_64", vnni=bool(flags & {"avx512_vnni", "avx_vnni"}))


def saturation_guard_for(isas: "list[Isa | None]") -> tuple[bool, str]:
    """(guard needed, why) for a model that runs on these CPUs; None is a CPU not known here (a device over ssh),
    which may be x86 without VNNI."""
    risky = [isa.describe() if isa else "a device whose CPU is not known before it is reached" for isa in isas
             if isa is None or isa.u8s8_saturates]
    if risky:
        return True, f"U8S8 kernels may add products in int16 and saturate on {', '.join(dict.fromkeys(risky))}"
    shown = ", ".join(dict.fromkeys(isa.describe() for isa in isas if isa))
    return False, f"every target's U8S8 kernels add products in int32 ({shown}): nothing saturates"


def local_isa() -> Isa:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    return parse_cpuinfo(text, machine=platform.machine().lower())
