"""The CPU KV cache budget respects the container's memory limit. The cgroup files are written by the test into a
folder laid out like /sys/fs/cgroup (this machine has no limit set)."""

from __future__ import annotations

from pathlib import Path

from tokenyard.runtime.engine.memory import available_host_memory, cgroup_room


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return root


def test_cgroup_v2_limit_leaves_limit_minus_usage(tmp_path):
    root = write(tmp_path, {"memory.max": str(6 << 30), "memory.current": str(2 << 30)})
    assert cgroup_room(root) == 4 << 30
    assert available_host_memory(root) <= 4 << 30


def test_cgroup_v1_limit_is_read_too(tmp_path):
    root = write(tmp_path, {"memory/memory.limit_in_bytes": str(1 << 30), "memory/memory.usage_in_bytes": "0"})
    assert cgroup_room(root) == 1 << 30


def test_no_limit_means_the_machine_decides(tmp_path):
    assert cgroup_room(write(tmp_path / "v2", {"memory.max": "max", "memory.current": "123"})) is None
    v1_unlimited = {"memory/memory.limit_in_bytes": "9223372036854771712", "memory/memory.usage_in_bytes": "1"}
    assert cgroup_room(write(tmp_path / "v1", v1_unlimited)) is None
    assert cgroup_room(tmp_path / "absent") is None
    assert available_host_memory(tmp_path / "absent") > 0


def test_usage_above_the_limit_leaves_nothing(tmp_path):
    root = write(tmp_path, {"memory.max": "100", "memory.current": "150"})
    assert cgroup_room(root) == 0
