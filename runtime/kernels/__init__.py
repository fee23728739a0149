"""Hand-written CPU kernels (``cpu_kernels.cpp`` binds ``quantized_linear.cpp``, ``small_ops.cpp``,
``attention.cpp`` and ``decode_step.cpp``): compiled from source on first use with the C++ compiler
PyTorch's extension builder finds, cached on disk (``TORCH_EXTENSIONS_DIR``, by default under ~/.cache),
and used where the CPU has AVX-512. Anywhere else (no compiler, another CPU, a GPU) callers keep
PyTorch's own kernels, so the kernels are a speed-up, never a requirement. ``TOKENYARD_CPU_KERNELS=0``
turns them off.

Container images have no compiler at run time (and a read-only root filesystem): they build the module
ahead of time, ``python -m tokenyard.runtime.kernels DIR`` (any x86-64 build machine will do: compiling
needs no AVX-512), and point ``TOKENYARD_CPU_KERNELS_PATH`` at the file it prints."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)
PREBUILT_ENV = "TOKENYARD_CPU_KERNELS_PATH"
_NAME = "tokenyard_cpu_kernels"
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
    prebuilt = os.environ.get(PREBUILT_ENV)
    try:
        return _import_built(Path(prebuilt)) if prebuilt else build()
    except Exception as error:  # a missing or failing compiler, a stale module: PyTorch's kernels still serve
        log.warning("could not %s the CPU kernels (%s): using PyTorch's", "load" if prebuilt else "build", error)
        return None


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
