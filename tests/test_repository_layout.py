"""The checkout's layout against the standard library: `python -c` and `python -m` put the working directory first
on sys.path, so from the repository root its top-level folders compete with the standard library's modules.

`operator/` is the one that collides. As a regular package (with an `__init__.py`) it would win `import operator`
and break the standard library (`enum` does `from operator import or_`, so even `import re` fails). It is a
namespace portion instead, which loses to the standard library's regular module, and `tokenyard.operator` still
finds it (operator/README.md says how, in the editable install and in a wheel).

The project's venv cannot show the collision on its own: its editable install's .pth imports `pathlib` (and with it
`operator`) while `site` starts, before the working directory is searched. So the child runs with `-S`, which skips
`site`: it imports `operator` with only the working directory and the standard library on sys.path, as a plain
venv or a bare `python3` would, and only then calls `site.main()` to add the venv's site-packages and the editable
finder, and imports `tokenyard.operator`. With an `operator/__init__.py` put back, the first check fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys
assert "operator" not in sys.modules, "the interpreter preloaded operator: this check would prove nothing"
import operator
assert hasattr(operator, "or_"), f"`import operator` got {operator!r}, not the standard library's"
import re  # imports operator itself (through enum)
import site
site.main()  # -S skipped it: now the venv's site-packages and its .pth files (the editable finder)
import json
import tokenyard.operator
import tokenyard.operator.resource
print(json.dumps({
    "stdlib": operator.__file__,
    "package": list(tokenyard.operator.__path__),
    "module": tokenyard.operator.resource.__file__,
}))
"""


def run_in_root(*args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    return subprocess.run([sys.executable, "-S", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_root_does_not_shadow_the_standard_librarys_operator():
    result = run_in_root("-c", CHILD)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert not Path(found["stdlib"]).resolve().is_relative_to(ROOT), found["stdlib"]
    assert [Path(path).resolve() for path in found["package"]] == [ROOT / "operator"]
    assert Path(found["module"]).resolve() == ROOT / "operator" / "resource.py"


def test_python_m_runs_from_the_root():
    """As `python -m venv` does in the Makefile: a module run with -m whose imports need the standard library's
    operator (argparse imports re)."""
    result = run_in_root("-m", "json.tool", "--help")
    assert result.returncode == 0, result.stderr
