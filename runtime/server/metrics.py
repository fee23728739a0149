"""Prometheus metrics under vLLM's names (routers, KEDA scalers and dashboards already read them), plus
``tokenyard_*`` for what vLLM has no name for."""

from __future__ import annotations

import contextlib
import resource

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from tokenyard.runtime.engine.llm_engine import LLMEngine
from tokenyard.runtime.outputs import RequestOutput

# vLLM's bucket choices, so dashboards built for vLLM read ours the same way.
_LATENCY = [
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
]
_TOKEN_GAP = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0]
_REQUEST = [
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
]


def _token_buckets(max_len: int) -> list[float]:
    buckets, mantissas, exponent = [], (1, 2, 5), 0
    while True:
        for m in mantissas:
            value = m * 10**exponent
            if value > max_len:
                return buckets
            buckets.append(value)
        exponent += 1


class ServerMetrics:
    def __init__(self, model_name: str, max_model_len: int) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        label = ["model_name"]
        r = self.registry
        self.running = Gauge("vllm:num_requests_running", "Requests in the running batch", label, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled", label, registry=r)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc", "KV cache usage (1 = full)", label, registry=r)
        self.prefix_queries = Counter("vllm:prefix_cache_queries", "Prefix cache lookups, in tokens", label, registry=r)
        self.prefix_hits = Counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens", label, registry=r)
        self.preemptions = Counter("vllm:num_preemptions", "Preemptions (recompute)", label, registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefilled prompt tokens", label, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens", label, registry=r)
        self.success = Counter("vllm:request_success", "Finished requests", [*label, "finished_reason"], registry=r)
        self.aborted = Counter(
            "tokenyard_requests_aborted",
            "Requests ended before they finished, by reason (client_disconnect, shutdown, error)",
            [*label, "reason"],
            registry=r,
        )
        self.spec_drafts = Counter("vllm:spec_decode_num_drafts", "Speculative drafts", label, registry=r)
        self.spec_draft_tokens = Counter("vllm:spec_decode_num_draft_tokens", "Draft tokens", label, registry=r)
        self.spec_accepted = Counter("vllm:spec_decode_num_accepted_tokens", "Accepted draft tokens", label, registry=r)
        self.spec_accepted_per_pos = Counter(
            "vllm:spec_decode_num_accepted_tokens_per_pos",
            "Accepted draft tokens by position in the draft",
            [*label, "position"],
            registry=r,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token", label, buckets=_LATENCY, registry=r
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "Gap between output tokens", label, buckets=_TOKEN_GAP, registry=r
        )
        self.tpot = Histogram(
            "vllm:request_time_per_output_token_seconds",
            "Per request: (e2e - TTFT) / (n - 1)",
            label,
            buckets=_TOKEN_GAP,
            registry=r,
        )
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Request latency", label, buckets=_REQUEST, registry=r)
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds",
            "Time waiting before first scheduled",
            label,
            buckets=_REQUEST,
            registry=r,
        )
        tokens = _token_buckets(max_model_len)
        self.request_prompt = Histogram(
            "vllm:request_prompt_tokens", "Prompt tokens per request", label, buckets=tokens, registry=r
        )
        self.request_generation = Histogram(
            "vllm:request_generation_tokens", "Generated tokens per request", label, buckets=tokens, registry=r
        )
        self.cache_config = Info("tokenyard_cache_config", "KV cache configuration", label, registry=r)
        self.weights_bytes = Gauge("tokenyard_model_weights_bytes", "Bytes of model weights", label, registry=r)
        self.peak_rss = Gauge("tokenyard_process_peak_resident_memory_bytes", "Peak resident memory", label, registry=r)
        self.event_loop_lag = Histogram(
            "tokenyard_event_loop_lag_seconds",
            "How late the server's event loop woke for a 10 ms timer: what every request and probe waits extra",
            buckets=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            registry=r,
        )
        self.gpu_memory = Gauge("tokenyard_gpu_memory_used_bytes", "GPU memory allocated by torch", label, registry=r)
        self.gpu_utilization = Gauge(
            "tokenyard_gpu_utilization",
            "GPU busy share over the last sample period (NVML; 1 = busy)",
            label,
            registry=r,
        )
        self.constrained = Counter(
            "tokenyard_structured_output_requests",
            "Requests with a structured-output constraint, by kind (json, json_object, regex, choice, grammar)",
            [*label, "kind"],
            registry=r,
        )
        self.mask_time = Histogram(
            "tokenyard_structured_output_mask_seconds",
            "Time a step spent computing its constrained rows' allowed-token masks",
            label,
            buckets=[1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1],
            registry=r,
        )
        self._seen_constrained: dict[str, int] = {}
        self.model_name = model_name
        self._seen = {
            "queries": 0,
            "hits": 0,
            "preemptions": 0,
            "prompt": 0,
            "generation": 0,
            "drafts": 0,
            "draft_tokens": 0,
            "accepted": 0,
        }
        self._seen_per_position: list[int] = []

    def describe_engine(self, engine: LLMEngine) -> None:
        kv = engine.kv_cache
        self.cache_config.labels(self.model_name).info(
            {
                "block_size": str(kv.block_size),
                "num_blocks": str(kv.num_blocks),
                "enable_prefix_caching": str(kv.enable_prefix_caching).lower(),
                "kv_bytes_per_token": str(engine.executor.runner.kv_bytes_per_token),
                "dtype": str(engine.executor.runner.loaded.dtype),
                "max_model_len": str(engine.max_model_len),
            }
        )
        self.weights_bytes.labels(self.model_name).set(engine.executor.runner.loaded.weights_bytes)

    def record_load(self, engine: LLMEngine) -> None:
        """The gauges autoscalers and routers read: running and waiting requests, KV cache usage."""
        name = self.model_name
        self.running.labels(name).set(len(engine.scheduler.running))
        self.waiting.labels(name).set(len(engine.scheduler.waiting))
        self.kv_usage.labels(name).set(engine.kv_cache.usage)

    def record_aborted(self, reason: str) -> None:
        self.aborted.labels(self.model_name, reason).inc()

    def record_step(self, engine: LLMEngine) -> None:
        """Gauges now, and counters by what the engine's own totals moved since the last step."""
        name = self.model_name
        self.record_load(engine)
        totals = {
            "queries": engine.kv_cache.prefix_cache_queries,
            "hits": engine.kv_cache.prefix_cache_hits,
            "preemptions": engine.scheduler.num_preemptions,
            "prompt": engine.num_prompt_tokens,
            "generation": engine.num_generation_tokens,
            "drafts": engine.spec_decode_stats.num_drafts,
            "draft_tokens": engine.spec_decode_stats.num_draft_tokens,
            "accepted": engine.spec_decode_stats.num_accepted_tokens,
        }
        counters = {
            "queries": self.prefix_queries,
            "hits": self.prefix_hits,
            "preemptions": self.preemptions,
            "prompt": self.prompt_tokens,
            "generation": self.generation_tokens,
            "drafts": self.spec_drafts,
            "draft_tokens": self.spec_draft_tokens,
            "accepted": self.spec_accepted,
        }
        for key, total in totals.items():
            if total > self._seen[key]:
                counters[key].labels(name).inc(total - self._seen[key])
                self._seen[key] = total
        self._record_accepted_per_position(engine.spec_decode_stats.accepted_per_position)
        self._record_structured_outputs(engine)
        self.peak_rss.labels(name).set(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        if engine.executor.runner.device.type == "cuda":
            import torch

            self.gpu_memory.labels(name).set(torch.cuda.memory_allocated(engine.executor.runner.device))
            with contextlib.suppress(ModuleNotFoundError, RuntimeError):  # without NVML (pynvml) it stays unset
                self.gpu_utilization.labels(name).set(torch.cuda.utilization(engine.executor.runner.device) / 100)

    def _record_accepted_per_position(self, totals: list[int]) -> None:
        seen = self._seen_per_position
        seen += [0] * (len(totals) - len(seen))
        for position, total in enumerate(totals):
            if total > seen[position]:
                self.spec_accepted_per_pos.labels(self.model_name, str(position)).inc(total - seen[position])
                seen[position] = total

    def _record_structured_outputs(self, engine: LLMEngine) -> None:
        stats = engine.structured_outputs.stats
        for kind, total in stats.requests.items():
            if total > self._seen_constrained.get(kind, 0):
                self.constrained.labels(self.model_name, kind).inc(total - self._seen_constrained.get(kind, 0))
                self._seen_constrained[kind] = total
        for seconds in stats.mask_seconds:
            self.mask_time.labels(self.model_name).observe(seconds)
        stats.mask_seconds.clear()

    def record_token_gap(self, seconds: float) -> None:
        self.itl.labels(self.model_name).observe(seconds)

    def record_finished(self, output: RequestOutput, finished_at: float) -> None:
        name = self.model_name
        times = output.metrics
        completion = output.outputs[0]
        self.success.labels(name, completion.finish_reason).inc()
        arrival = times["arrival_time"]
        self.e2e.labels(name).observe(finished_at - arrival)
        if "first_scheduled_time" in times:
            self.queue_time.labels(name).observe(times["first_scheduled_time"] - arrival)
        if "first_token_time" in times:
            ttft = times["first_token_time"] - arrival
            self.ttft.labels(name).observe(ttft)
            if len(completion.token_ids) > 1:
                self.tpot.labels(name).observe((finished_at - arrival - ttft) / (len(completion.token_ids) - 1))
        self.request_prompt.labels(name).observe(len(output.prompt_token_ids))
        self.request_generation.labels(name).observe(len(completion.token_ids))
