# The tokenyard operator: `tokenyard operator` (kopf) reconciles LLMDeployment resources into runtime
# Deployments, Services, PodDisruptionBudgets and autoscalers; liveness at :8081/healthz.
#
#   docker build -f docker/operator.Dockerfile -t ghcr.io/tokenyard/operator:0.1.0 .
#
# Only the `operator` extra is installed (kopf, kubernetes, pydantic, pyyaml): no torch, no inference stack.
# The CLI imports each part lazily, so the runtime's and gateway's sources being in the wheel costs nothing.

FROM python:3.12-slim-trixie AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tokenyard/ tokenyard/
COPY runtime/ runtime/
COPY gateway/ gateway/
COPY operator/ operator/
COPY evals/ evals/
COPY benchmarks/ benchmarks/
# The project's own ranges (pyproject.toml) decide its dependencies; there is no lock file to pin them to.
# hadolint ignore=DL3013
RUN pip install ".[operator]" && pip check
# Checks run from /, not /src: with /src as the working directory, `python -c` would import the copied source's
# tokenyard/ and check it instead of the package pip installed.
WORKDIR /
# Fail the build if torch ever creeps in through a dependency, or if a module of the operator needs something
# its extra does not install.
RUN python -c "import importlib.util; assert importlib.util.find_spec('torch') is None, 'torch in the operator image'" \
 && python -c "import importlib, pkgutil, tokenyard.operator as p; [importlib.import_module(m.name) for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]" \
 && tokenyard operator --help >/dev/null

FROM python:3.12-slim-trixie
LABEL org.opencontainers.image.title="tokenyard-operator" \
      org.opencontainers.image.description="tokenyard's Kubernetes operator for LLMDeployment resources" \
      org.opencontainers.image.source="https://github.com/tokenyard/tokenyard" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 1000 tokenyard \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tokenyard
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 1000:1000
WORKDIR /tmp
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=4)"]
ENTRYPOINT ["tokenyard"]
CMD ["operator"]
