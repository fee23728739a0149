"""What this CPU can compute: the one place that reads it (``/proc/cpuinfo``), so the dtype policy, the
oneDNN prepack and the kernels' dispatch all agree.

API (small on purpose; other modules build on it)::

    cpu_isa() -> CpuIsa        # cached; raises ValueError for a bad TOKENYARD_CPU_ISA
    CpuIsa.name                # the level, one of LEVELS[arch]: "x86-64" < "avx2" < "avx512" < "avx512_bf16"
                               # (x86_64), "neon" < "neon_bf16" (aarch64), "generic" (anything else)
    CpuIsa.arch                # "x86_64", "aarch64" or "unknown"
    CpuIsa.native_bfloat16     # bfloat16 dot products in hardware: x86 avx512_bf16 (or amx_bf16), aarch64 bf16
    CpuIsa.onednn_bfloat16     # oneDNN's bfloat16 matmuls (and so its prepacked bf16 weights) run here: x86
                               # AVX-512 BW+VL+DQ or AVX-NE-CONVERT, aarch64 bf16. Without it they raise mid-load
    CpuIsa.vnni                # int8 dot products: x86 avx512_vnni or avx_vnni, aarch64 asimddp
    CpuIsa.flags               # the (capped) flags, as the kernel names them
    CpuIsa.describe()          # one line for logs and error messages

The levels: ``avx2`` is an x86-64-v3 CPU (AVX2 + FMA + F16C), ``avx512`` adds AVX-512 F/CD/BW/DQ/VL (the set
Highway's AVX3 target and oneDNN's avx512_core need), ``avx512_bf16`` adds AVX512_BF16; ``x86-64`` is anything
older. ``neon_bf16`` is an aarch64 CPU with the BF16 extension, ``neon`` one without.

``TOKENYARD_CPU_ISA`` caps what the process believes of the CPU (to test an older CPU's paths on a newer one):
``native`` (or unset) is what the CPU reports; ``avx2`` behaves as an x86-64-v3 CPU without AVX-512 or bfloat16
(every ``avx512*``, ``amx*`` and ``avx_*`` extension above v3 is dropped); ``avx512`` as AVX-512 without bfloat16
(``avx512_bf16``, ``avx512_fp16``, ``amx*`` and ``avx_ne_convert`` dropped); ``neon`` as aarch64 without BF16 or
SVE. A value the CPU cannot honour (``avx512`` on an AVX2 CPU, ``avx2`` on aarch64) is a ValueError, as is an
unknown one. The cap binds this package only: PyTorch and oneDNN read their own, set before torch is imported;
the three together emulate an AVX2 machine::

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 TOKENYARD_CPU_ISA=avx2
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

ISA_ENV = "TOKENYARD_CPU_ISA"
LEVELS = {
    "x86_64": ("x86-64", "avx2", "avx512", "avx512_bf16"),
    "aarch64": ("neon", "neon_bf16"),
    "unknown": ("generic",),
}
CAPS = ("native", "avx2", "avx512", "neon")  # the values TOKENYARD_CPU_ISA takes

_AVX2 = frozenset({"avx2", "fma", "f16c"})
_AVX512 = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
# the flags describe() names, in this order, where the CPU has them
_SHOWN = {
    "x86_64": (
        *("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx_vnni"),
        *("avx512_bf16", "amx_bf16", "amx_tile", "avx_ne_convert"),
    ),
    "aarch64": ("asimd", "asimddp", "i8mm", "bf16", "sve", "sve2"),
    "unknown": (),
}


@dataclass(frozen=True)
class CpuIsa:
    name: str
    arch: str
    native_bfloat16: bool
    onednn_bfloat16: bool
    vnni: bool
    flags: frozenset[str]
    model: str = ""
    capped_from: str | None = None  # the CPU's own level when TOKENYARD_CPU_ISA lowered it

    def describe(self) -> str:
        """E.g. ``avx2 (AMD EPYC 7B12; avx2 fma f16c; no native bfloat16)``."""
        shown = " ".join(flag for flag in _SHOWN.get(self.arch, ()) if flag in self.flags) or "no SIMD flags read"
        parts = [self.model or self.arch, shown]
        parts.append("native bfloat16" if self.native_bfloat16 else "no native bfloat16")
        if self.capped_from is not None:
            parts.append(f"capped from {self.capped_from} by {ISA_ENV}")
        return f"{self.name} ({'; '.join(parts)})"


def from_cpuinfo(text: str, arch: str | None = None) -> CpuIsa:
    """The ISA a ``/proc/cpuinfo`` text describes (its first processor: all are alike). ``arch`` defaults to
    what the text itself shows: x86 lists ``flags``, aarch64 ``Features``."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    if arch is None:
        arch = "x86_64" if "flags" in fields else "aarch64" if "Features" in fields else "unknown"
    flags_field = {"x86_64": "flags", "aarch64": "Features"}.get(arch)
    flags = frozenset(fields.get(flags_field, "").split()) if flags_field else frozenset()
    return _classify(arch, flags, fields.get("model name", ""))


def _classify(arch: str, flags: frozenset[str], model: str, capped_from: str | None = None) -> CpuIsa:
    if arch == "x86_64":
        avx512 = flags >= _AVX512
        native_bf16 = avx512 and bool(flags & {"avx512_bf16", "amx_bf16"})
        name = "avx512_bf16" if native_bf16 else "avx512" if avx512 else "avx2" if flags >= _AVX2 else "x86-64"
        onednn_bf16 = flags >= {"avx512bw", "avx512vl", "avx512dq"} or "avx_ne_convert" in flags
        vnni = bool(flags & {"avx512_vnni", "avx_vnni"})
    elif arch == "aarch64":
        native_bf16 = onednn_bf16 = "bf16" in flags
        name = "neon_bf16" if native_bf16 else "neon"
        vnni = "asimddp" in flags
    else:
        arch, name, native_bf16, onednn_bf16, vnni = "unknown", "generic", False, False, False
    return CpuIsa(name, arch, native_bf16, onednn_bf16, vnni, flags, model, capped_from)


def capped(isa: CpuIsa, cap: str | None) -> CpuIsa:
    """``isa`` lowered to ``cap`` (a TOKENYARD_CPU_ISA value); ValueError for an unknown or unattainable cap."""
    value = (cap or "native").strip().lower()
    if value not in CAPS:
        raise ValueError(f"{ISA_ENV}={cap!r} is invalid: must be one of {', '.join(CAPS)}")
    if value == "native":
        return isa
    levels = LEVELS["aarch64" if value == "neon" else "x86_64"]
    if LEVELS.get(isa.arch) != levels or levels.index(isa.name) < levels.index(value):
        raise ValueError(
            f"{ISA_ENV}={value} asks for more than this CPU has: it is {isa.describe()}; "
            f"allowed here: {', '.join(_attainable(isa))}"
        )
    if value == "avx2":
        drop = {f for f in isa.flags if f.startswith(("avx512", "amx", "avx_"))}
    elif value == "avx512":
        drop = {f for f in isa.flags if f.startswith("amx")} | {"avx512_bf16", "avx512_fp16", "avx_ne_convert"}
    else:  # neon
        drop = {f for f in isa.flags if f.startswith(("sve", "sme"))} | {"bf16", "ebf16"}
    return _classify(isa.arch, isa.flags - drop, isa.model, capped_from=isa.name) if drop & isa.flags else isa


def _attainable(isa: CpuIsa) -> list[str]:
    levels = LEVELS.get(isa.arch, ())
    below = levels[: levels.index(isa.name) + 1] if isa.name in levels else ()
    return ["native", *(cap for cap in CAPS[1:] if cap in below)]


@functools.cache
def cpu_isa() -> CpuIsa:
    """This process's CPU, capped by TOKENYARD_CPU_ISA (read once; tests call ``cpu_isa.cache_clear()``)."""
    machine = platform.machine().lower()
    arch = "x86_64" if machine in ("x86_64", "amd64") else "aarch64" if machine in ("aarch64", "arm64") else "unknown"
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux: no flags to read, so nothing is assumed
        text = ""
    return capped(from_cpuinfo(text, arch), os.environ.get(ISA_ENV))
