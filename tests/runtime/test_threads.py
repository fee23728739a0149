"""The engine's CPU threads: as many as the cores this process may really use (its cgroup CPU quota, which a
Kubernetes CPU limit sets, and its affinity mask), shared among tensor-parallel ranks; `--num-threads` overrides
it; and the engine's commands make OpenMP threads sleep at barriers instead of spinning, unless the user chose a
wait policy. The quota files are temp files here; the real ones are read by the same code with default paths."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tokenyard.runtime import threads
from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.engine.model_runner import use_cpu_threads
from tokenyard.runtime.threads import ThreadChoice, choose_threads, cpu_quota, resolve_threads, set_wait_policy


def quota_files(tmp_path: Path, v2: str | None = None, v1: tuple[str, str] | None = None) -> dict[str, Path]:
    """cpu_quota's arguments, pointing at files holding these contents (None: that file does not exist)."""
    paths = {"cpu_max": tmp_path / "cpu.max", "v1_quota": tmp_path / "quota", "v1_period": tmp_path / "period"}
    if v2 is not None:
        paths["cpu_max"].write_text(v2 + "\n")
    if v1 is not None:
        paths["v1_quota"].write_text(v1[0] + "\n")
        paths["v1_period"].write_text(v1[1] + "\n")
    return paths


# --- the cgroup quota ---


def test_cgroup_v2_max_means_no_quota(tmp_path):
    assert cpu_quota(**quota_files(tmp_path, v2="max 100000")) is None


def test_cgroup_v2_quota_is_cpus_per_period(tmp_path):
    assert cpu_quota(**quota_files(tmp_path, v2="150000 100000")) == 1.5
    assert cpu_quota(**quota_files(tmp_path, v2="400000 100000")) == 4.0


def test_cgroup_v1_quota_is_cpus_per_period(tmp_path):
    assert cpu_quota(**quota_files(tmp_path, v1=("50000", "100000"))) == 0.5


def test_cgroup_v1_minus_one_means_no_quota(tmp_path):
    assert cpu_quota(**quota_files(tmp_path, v1=("-1", "100000"))) is None


def test_cgroup_v2_is_read_before_v1(tmp_path):
    assert cpu_quota(**quota_files(tmp_path, v2="200000 100000", v1=("50000", "100000"))) == 2.0


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert cpu_quota(**quota_files(tmp_path)) is None


@pytest.mark.parametrize(
    "v2", ["", "max", "banana 100000", "150000", "150000 0", "0 100000", "-5 100000", "1.5 1", "1 2 3"]
)
def test_a_v2_file_that_makes_no_sense_counts_as_no_quota(tmp_path, v2):
    assert cpu_quota(**quota_files(tmp_path, v2=v2)) is None


@pytest.mark.parametrize("v1", [("banana", "100000"), ("50000", "0"), ("50000", ""), ("0", "100000")])
def test_a_v1_pair_that_makes_no_sense_counts_as_no_quota(tmp_path, v1):
    assert cpu_quota(**quota_files(tmp_path, v1=v1)) is None


def test_a_v1_quota_without_its_period_counts_as_no_quota(tmp_path):
    files = quota_files(tmp_path, v1=("50000", "100000"))
    files["v1_period"].unlink()
    assert cpu_quota(**files) is None


# --- quota and affinity together ---


def test_the_quota_caps_the_affinity_mask_rounded_up():
    assert choose_threads(quota=1.5, affinity=64) == ThreadChoice(2, "the cgroup CPU quota of 1.5 CPUs")
    assert choose_threads(quota=4.0, affinity=64).threads == 4


def test_the_affinity_mask_caps_a_larger_quota():
    assert choose_threads(quota=16.0, affinity=2) == ThreadChoice(2, "the affinity mask of 2 CPUs")


def test_without_a_quota_the_affinity_mask_decides():
    assert choose_threads(quota=None, affinity=3) == ThreadChoice(3, "the affinity mask of 3 CPUs")


def test_a_quota_under_one_cpu_still_gets_one_thread():
    assert choose_threads(quota=0.25, affinity=8).threads == 1


def test_usable_cores_follow_the_real_affinity_mask():
    """A process pinned to one CPU (taskset, a cpuset) gets one thread, whatever the host has."""
    first = min(os.sched_getaffinity(0))
    child = f"import os; os.sched_setaffinity(0, {{{first}}}); import {threads.__name__} as t; print(t.usable_cores())"
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "1"


# --- what the engine uses ---


@pytest.fixture
def machine(monkeypatch) -> Iterator[None]:
    """A machine with 8 CPUs in the affinity mask and a 2-CPU quota; torch's thread count restored afterwards."""
    monkeypatch.setattr(threads, "affinity_cores", lambda: 8)
    monkeypatch.setattr(threads, "cpu_quota", lambda: 2.0)
    monkeypatch.setattr(threads, "_logged", set())
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_no_flag_means_the_usable_cores(machine):
    assert resolve_threads(None) == ThreadChoice(2, "the cgroup CPU quota of 2 CPUs")


def test_the_flag_wins_over_quota_and_affinity(machine):
    assert resolve_threads(6) == ThreadChoice(6, "--num-threads")
    assert resolve_threads(1, ranks=4) == ThreadChoice(1, "--num-threads")  # per rank, as given


def test_tensor_parallel_ranks_share_the_usable_cores(machine, monkeypatch):
    monkeypatch.setattr(threads, "cpu_quota", lambda: None)
    assert resolve_threads(None, ranks=2).threads == 4
    assert resolve_threads(None, ranks=3).threads == 2
    assert resolve_threads(None, ranks=16).threads == 1  # more ranks than cores: one each, never none


def test_the_engine_runs_with_the_usable_cores_when_no_count_is_given(machine):
    torch.set_num_threads(5)  # what torch (or an earlier engine) had
    use_cpu_threads(EngineConfig())
    assert torch.get_num_threads() == 2


def test_the_engine_runs_with_the_flags_count(machine):
    use_cpu_threads(EngineConfig(num_threads=3))
    assert torch.get_num_threads() == 3


def test_a_tensor_parallel_engine_takes_its_share(machine, monkeypatch):
    monkeypatch.setattr(threads, "cpu_quota", lambda: None)
    use_cpu_threads(EngineConfig(tensor_parallel_size=4))
    assert torch.get_num_threads() == 2


def test_the_start_up_log_names_the_count_and_its_source_once(machine, caplog):
    with caplog.at_level(logging.INFO, logger=threads.__name__):
        use_cpu_threads(EngineConfig())
        use_cpu_threads(EngineConfig())  # a draft model's runner in the same process
    lines = [r.getMessage() for r in caplog.records if r.name == threads.__name__]
    assert len(lines) == 1
    assert lines[0].startswith("CPU threads: 2, from the cgroup CPU quota of 2 CPUs")


# --- how idle threads wait ---


def test_the_wait_policy_is_set_where_the_user_set_none():
    environ: dict[str, str] = {"PATH": "/bin"}
    assert set_wait_policy(environ)
    assert environ == {"PATH": "/bin", **threads.WAIT_POLICY}


@pytest.mark.parametrize("users", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "5000"}])
def test_a_users_own_wait_policy_is_left_alone(users):
    environ = dict(users)
    assert not set_wait_policy(environ)
    assert environ == users


def openmp_spin_count(subcommand: str, **env: str) -> str:
    """libgomp's spin count in ``tokenyard <subcommand> --help`` (which imports torch): libgomp prints its settings
    as it loads when OMP_DISPLAY_ENV is set. Its default is 300000 (~9 ms here); PASSIVE is 0."""
    clean = {k: v for k, v in os.environ.items() if k not in threads.WAIT_POLICY_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "tokenyard.cli", subcommand, "--help"],
        env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    [line] = [line for line in result.stderr.splitlines() if line.strip().startswith("GOMP_SPINCOUNT =")]
    return line.split("=")[1].strip().strip("'")


@pytest.mark.parametrize("subcommand", ["serve", "generate"])
def test_the_engines_threads_spin_a_thousand_times_then_sleep(subcommand):
    assert openmp_spin_count(subcommand) == "1000"


def test_tokenyard_serve_keeps_the_users_spin_count():
    assert openmp_spin_count("serve", GOMP_SPINCOUNT="12345") == "12345"


def test_tokenyard_serve_keeps_the_users_wait_policy():
    assert openmp_spin_count("serve", OMP_WAIT_POLICY="PASSIVE") == "0"
