"""Hand-written CPU kernels (``cpu_kernels.cpp`` binds ``quantized_linear.cpp``, ``small_ops.cpp``,
``attention.cpp`` and ``decode_step.cpp``): compiled from source on first use with the C++ compiler
PyTorch's extension builder finds, cached on disk (``TORCH_EXTENSIONS_DIR``, by default under ~/.cache),
and used where the CPU has AVX-512. Anywhere else (no compiler, another CPU, a GPU) callers keep
PyTorch's own kernels, so the kernels are a speed-up, never a requirement. ``TOKENYARD_CPU_KERNELS=0``
turns them off."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)
_SOURCES = [
    Path(__file__).with_name(name)
    for name in ("cpu_kernels.cpp", "quantized_linear.cpp", "small_ops.cpp", "attention.cpp", "decode_step.cpp")
]
_FLAGS = ["-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"]


@functools.cache
def cpu_kernels() -> ModuleType | None:
    """The compiled kernels, or None (with the reason logged once) where they cannot run."""
    if os.environ.get("TOKENYARD_CPU_KERNELS", "1") == "0":
        return None
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        log.info("CPU kernels need AVX-512 (this CPU: %s): using PyTorch's", torch.backends.cpu.get_cpu_capability())
        return None
    from torch.utils.cpp_extension import load

    _put_ninja_on_path()
    try:
        return load("tokenyard_cpu_kernels", [str(source) for source in _SOURCES], extra_cflags=_FLAGS, verbose=False)
    except Exception as error:  # a missing or failing compiler: PyTorch's kernels still serve
        log.warning("could not build the CPU kernels (%s): using PyTorch's", error)
        return None


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
