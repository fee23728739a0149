"""How many CPU threads the engine computes with, and how they wait.

A compute thread that loses its core stalls every step: each of torch's (and the CPU kernels') parallel regions
ends at a barrier that waits for the slowest thread. So the default is the cores this process may really use
(its cgroup's CPU quota, which is what a Kubernetes CPU limit sets, and its affinity mask), not the host's core
count, which is what torch would take. And the threads that reach a barrier first soon sleep rather than spin: a
spinning thread burns the very CPU time the late one, or another process on the same cores, needs.

Nothing here imports torch: the CLI (``tokenyard serve``, ``tokenyard generate``) calls ``set_wait_policy`` before
torch is first imported, because libgomp (torch's OpenMP runtime, which the CPU kernels and MKL share) reads its
wait policy from the environment once, when it is loaded. The library API (``LLM(...)``) sets no policy: a program
that imports torch before it would be too late anyway, and the environment is the program's own. Such a program
still gets the thread count (``torch.set_num_threads`` works at any time); for the waits, it sets
``GOMP_SPINCOUNT=1000`` (or ``OMP_WAIT_POLICY=PASSIVE``) in its environment, or calls ``set_wait_policy()`` before
its first ``import torch``. (These are libgomp's, which torch's Linux wheels use; Intel's OpenMP reads others.)"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# cgroup v2 (one file: "<quota> <period>" or "max <period>") and v1 (two files; quota -1 = no limit). Inside a
# container these are the container's own cgroup: the runtime mounts it (v1) or a cgroup namespace roots it (v2).
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")

# What libgomp reads; either one set by the user means the user chose, and we leave both alone.
WAIT_POLICY_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# A thread that reaches a barrier first spins at most 1,000 times (~30 us here) before it sleeps. libgomp's default
# spins 300,000 times (~9 ms: longer than a decode step), on a core the late thread or another process needs.
# (libgomp spins only 100-1,000 times when its own threads outnumber the CPUs, but it cannot see other processes.)
# Measured on 2 cores (AMD EPYC VM; classifier workload, one request at a time, a 2-thread matmul process as the
# competitor, engines interleaved; output tok/s alone -> beside it):
#   libgomp default 45-54 -> 1-13 | GOMP_SPINCOUNT=1000 44-50 -> 17-24 | OMP_WAIT_POLICY=PASSIVE 34-38 -> 23-34.
# PASSIVE shares best but costs a quarter to a half of the solo speed (waking a sleeping thread costs tens of us,
# hundreds of times per step; 8 requests at once: 84 tok/s against 139 with 1,000 spins and 177 with libgomp's
# default); 300 spins was no faster than PASSIVE, 2,000-3,000 fell below 40% of solo beside the busy process.
# On a node known to be crowded, OMP_WAIT_POLICY=PASSIVE (which this leaves alone) is the better choice.
WAIT_POLICY = {"GOMP_SPINCOUNT": "1000"}


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    source: str  # where the count came from, for the start-up log line


def cpu_quota(
    cpu_max: Path = CGROUP_V2_CPU_MAX,
    v1_quota: Path = CGROUP_V1_QUOTA,
    v1_period: Path = CGROUP_V1_PERIOD,
) -> float | None:
    """CPUs per period the cgroup may use (1.5 = one and a half cores), or None where no quota is set or none can
    be read. A file we cannot make sense of counts as no quota: the affinity mask still bounds the threads."""
    v2 = _read(cpu_max)
    if v2 is not None:
        fields = v2.split()
        return _ratio(fields[0], fields[1]) if len(fields) == 2 and fields[0] != "max" else None
    quota, period = _read(v1_quota), _read(v1_period)
    if quota is None or period is None or quota.startswith("-"):  # v1 writes -1 for no limit
        return None
    return _ratio(quota, period)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # no such file (no cgroup, or the other cgroup version), or not readable
        return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        value = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def affinity_cores() -> int:
    """CPUs this process may be scheduled on (taskset, cpuset, Kubernetes' static CPU manager)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # macOS and Windows: no affinity call


def choose_threads(quota: float | None, affinity: int) -> ThreadChoice:
    """The cores a process can keep busy: its ``affinity`` (a CPU count), capped by its cgroup ``quota`` rounded up
    (a 1.5-CPU quota still lets two threads run at once, for part of each period). At least 1."""
    if quota is not None and math.ceil(quota) < affinity:
        return ThreadChoice(max(math.ceil(quota), 1), f"the cgroup CPU quota of {quota:g} CPUs")
    return ThreadChoice(max(affinity, 1), f"the affinity mask of {affinity} CPUs")


def usable_cores() -> int:
    """This process's usable cores: see ``choose_threads``."""
    return choose_threads(cpu_quota(), affinity_cores()).threads


def default_threads() -> int:
    """The engine's CPU thread count when none is asked for: the usable cores."""
    return usable_cores()


def resolve_threads(num_threads: int | None, ranks: int = 1) -> ThreadChoice:
    """The thread count of one engine process: ``num_threads`` (``--num-threads``) when given, otherwise the usable
    cores shared out among the ``ranks`` tensor-parallel processes on this machine (each gets at least one)."""
    if num_threads is not None:
        return ThreadChoice(num_threads, "--num-threads")
    cores = choose_threads(cpu_quota(), affinity_cores())
    if ranks == 1:
        return cores
    return ThreadChoice(max(cores.threads // ranks, 1), f"{cores.source}, shared by {ranks} tensor-parallel ranks")


_logged: set[ThreadChoice] = set()


def log_threads(choice: ThreadChoice) -> None:
    """Say once per process which count the engine uses and why (a draft model's runner would repeat it)."""
    if choice not in _logged:
        _logged.add(choice)
        policy = ", ".join(f"{name}={os.environ[name]}" for name in WAIT_POLICY_ENV if name in os.environ)
        log.info("CPU threads: %d, from %s; OpenMP waits: %s", choice.threads, choice.source, policy or "default")


def set_wait_policy(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Put the wait policy in ``environ`` unless the user set one (OMP_WAIT_POLICY or GOMP_SPINCOUNT). Only takes
    effect if torch is imported afterwards; child processes (tensor-parallel ranks) inherit it. Returns whether
    it set anything."""
    if any(name in environ for name in WAIT_POLICY_ENV):
        return False
    environ.update(WAIT_POLICY)
    return True
