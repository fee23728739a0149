"""How much host memory the KV cache may take: what the machine has free, capped by the container's cgroup
limit (a pod with `memory: 6Gi` on a 512 GiB node must not size its cache from the node)."""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge page-aligned number


def available_host_memory(cgroup_root: Path = CGROUP_ROOT) -> int:
    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    room = cgroup_room(cgroup_root)
    return free if room is None else min(free, room)


def cgroup_room(root: Path) -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, then v1), or None when there is no limit."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(root / limit_file), _read_int(root / usage_file)
        if limit is not None and usage is not None and limit < _UNLIMITED:
            return max(limit - usage, 0)
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2) means no limit
