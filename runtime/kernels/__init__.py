"""Hand-written CPU kernels (``cpu_kernels.cpp`` binds ``quantized_linear.cpp``, ``small_ops.cpp``,
``attention.cpp`` and ``decode_step.cpp``, whose SIMD code is in ``simd/``): compiled from source on first
use with the C++ compiler PyTorch's extension builder finds and Google Highway (Debian's ``libhwy-dev``),
cached on disk (``TORCH_EXTENSIONS_DIR``, by default under ~/.cache). One build holds the kernels for every
instruction set Highway targets (AVX2 with FMA and F16C, AVX-512; NEON and SVE on Arm) and each call runs the
best the CPU has, so the machine that runs them decides, not the one that built them. Anywhere they cannot
run (no compiler or Highway, a CPU below AVX2, a GPU) callers keep PyTorch's own kernels, so the kernels are
a speed-up, never a requirement. ``TOKENYARD_CPU_KERNELS=0`` turns them off; ``TOKENYARD_CPU_ISA`` caps the
instruction set (``avx2``, ``avx512``, ``neon``; see ``tokenyard.runtime.cpu``) to measure or test a smaller
CPU's path.

Container images have no compiler at run time (and a read-only root filesystem): they build the module
ahead of time, ``python -m tokenyard.runtime.kernels DIR``, and point ``TOKENYARD_CPU_KERNELS_PATH`` at the
file it prints."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import platform
import shutil
from pathlib import Path
from types import ModuleType

import torch

from tokenyard.runtime.cpu import ISA_ENV, cpu_isa

log = logging.getLogger(__name__)
PREBUILT_ENV = "TOKENYARD_CPU_KERNELS_PATH"
_NAME = "tokenyard_cpu_kernels"
_HERE = Path(__file__).parent
_SOURCES = sorted(_HERE.glob("*.cpp")) + sorted(_HERE.glob("simd/*.cc"))
# Highway compiles each kernel once per target with the target's own instruction set; the flags set only the
# baseline, the target a CPU without the others runs (where the module refuses to serve: PyTorch's kernels are
# faster there). On x86-64 that is SSE4 (SSE4.2, CLMUL and AES: every x86-64 CPU since ~2010), not the scalar
# target, which lacks ops the kernels use (GCC before 12.3 cannot build Highway's emulated 128-bit target).
_BASELINE = ["-msse4.2", "-mpclmul", "-maes"] if platform.machine() == "x86_64" else []
_FLAGS = ["-O3", "-fopenmp", f"-I{_HERE}", *_BASELINE]
_LINK = ["-lhwy"]


@functools.cache
def cpu_kernels() -> ModuleType | None:
    """The compiled kernels, or None (with the reason logged once) where they cannot run."""
    if os.environ.get("TOKENYARD_CPU_KERNELS", "1") == "0":
        return None
    prebuilt = os.environ.get(PREBUILT_ENV)
    try:
        module = _import_built(Path(prebuilt)) if prebuilt else build()
    except Exception as error:  # a missing compiler or Highway, a stale module: PyTorch's kernels still serve
        log.warning("could not %s the CPU kernels (%s): using PyTorch's", "load" if prebuilt else "build", error)
        return None
    cpu_isa()  # a TOKENYARD_CPU_ISA this CPU cannot honour is refused there, with what it allows
    module.cap_targets(os.environ.get(ISA_ENV, "native").strip().lower())
    if not module.chosen_target_is_native():
        log.info(
            "the CPU kernels need AVX2 with FMA, or NEON (this CPU runs them as %s): using PyTorch's",
            module.chosen_target(),
        )
        return None
    log.info("CPU kernels on %s (compiled for %s)", module.chosen_target(), ", ".join(module.compiled_targets()))
    return module


def build(directory: Path | None = None) -> ModuleType:
    """Compile the kernels (into ``directory``, by default PyTorch's extension cache) and import them."""
    from torch.utils.cpp_extension import load

    _put_ninja_on_path()
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    return load(
        _NAME,
        [str(source) for source in _SOURCES],
        extra_cflags=_FLAGS,
        extra_ldflags=_LINK,
        build_directory=None if directory is None else str(directory),
        verbose=False,
    )


def _import_built(path: Path) -> ModuleType:
    """A module ``build`` made earlier, imported from its file (torch must be imported first: it links to it)."""
    spec = importlib.util.spec_from_file_location(_NAME, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise FileNotFoundError(f"{PREBUILT_ENV}={path}: no such extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernels_for(x: torch.Tensor) -> ModuleType | None:
    """The CPU kernels when they can compute on ``x`` (a float32 or bfloat16 CPU tensor), else None."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return None
    return cpu_kernels()


def _put_ninja_on_path() -> None:
    """PyTorch's builder runs ``ninja`` from PATH; the ``ninja`` wheel (a runtime dependency) puts it next to
    the interpreter, which is not on PATH when a virtualenv is used without being activated."""
    if shutil.which("ninja") is None:
        with contextlib.suppress(ImportError):
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
