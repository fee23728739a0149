"""tokenyard's benchmarks, installed as ``tokenyard.benchmarks`` (as vLLM ships ``vllm.benchmarks``).

Two kinds live here:

- the ``make bench`` suite: one module per benchmark (``engine``, ``serve``, ``gateway``, ``semantic``,
  ``quantization``, ``spec_decode``, ``structured_output``, ``schema_conformance``, ``tensor_parallel``, ``accuracy``,
  ``gpu``), each run as
  ``python -m tokenyard.benchmarks.<name> --out docs/benchmarks.md``; every figure sits beside a baseline
  measured in the same run, and each module rewrites its own section of docs/benchmarks.md (``report``);
- the ``tokenyard bench`` client (``cli``): ``tokenyard bench serve`` (``serve_client``) is a load generator
  shaped like ``vllm bench serve`` for any OpenAI-compatible server.

Shared by both: the classifier workload (``workloads``) and perplexity on held-out text (``perplexity``).
The runtime never imports this package.
"""
