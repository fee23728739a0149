"""All device work of one rank: the KV cache tensors, flat inputs for a scheduled batch, the forward pass, sampling.
The runner is the same on every tensor-parallel rank; the executor (executor.py) decides which of it runs where."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tokenyard.runtime.config import DEFAULT_CPU_KV_CACHE_BYTES, EngineConfig
from tokenyard.runtime.engine.cpu_decode import CpuDecodePath
from tokenyard.runtime.engine.memory import available_host_memory
from tokenyard.runtime.engine.scheduler import ScheduledBatch
from tokenyard.runtime.engine.sequence import Sequence
from tokenyard.runtime.layers.attention import (
    AttentionMetadata,
    TorchAttentionBackend,
    check_kv_cache_dtype,
    kv_cache_entry,
)
from tokenyard.runtime.layers.sampler import Sampled, SamplingRow, sample
from tokenyard.runtime.loaders import LoadedModel, load_model, resolve_model
from tokenyard.runtime.spec_decode.rejection import verify
from tokenyard.runtime.threads import log_threads, resolve_threads

log = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        if self.device.type == "cpu":
            use_cpu_threads(config)
        check_kv_cache_dtype(config.kv_cache_dtype, self.device)
        self.backend = TorchAttentionBackend(config.kv_cache_dtype)
        self.loaded: LoadedModel = load_model(
            resolve_model(config.model),
            config.dtype,
            self.device,
            self.backend,
            config.quantization,
            config.quantization_group_size,
        )
        self.model = self.loaded.model
        self.cpu_decode = None if config.enforce_eager else CpuDecodePath.build(self.model, self.backend)
        self.block_size = config.block_size
        self.kv_caches: list[torch.Tensor] = []
        # Static-shaped decode steps, which CUDA graphs will need (none are captured yet); on CPU padding would only
        # cost time.
        self.pad_decode_batches = self.device.type == "cuda" and not config.enforce_eager
        self.padding_block = -1  # set by allocate_kv_cache: one block past the pool, owned by nobody

    def shutdown(self) -> None:
        """Let go of the KV cache and the weights, so that their memory can go back (to the GPU: see
        LLMEngine.shutdown). The runner cannot run a step afterwards."""
        self.kv_caches = []
        for name in ("model", "loaded", "cpu_decode"):  # the references that hold the weights
            self.__dict__.pop(name, None)

    @property
    def kv_entry(self) -> tuple[torch.dtype, int]:
        """(storage dtype, width) of one token's key or value per KV head: see layers/attention.py."""
        return kv_cache_entry(self.loaded.config.head_dim, self.config.kv_cache_dtype, self.loaded.dtype)

    @property
    def kv_bytes_per_token(self) -> int:
        storage, width = self.kv_entry
        return 2 * self.loaded.config.num_layers * self.model.kv_heads_per_rank * width * storage.itemsize

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Allocate the block pool once, ``num_blocks`` blocks (see ``kv_blocks_that_fit``) and a padding block."""
        self.padding_block = num_blocks
        cfg = self.loaded.config
        storage, width = self.kv_entry
        shape = (2, (num_blocks + 1) * self.block_size, self.model.kv_heads_per_rank, width)
        self.kv_caches = [torch.zeros(shape, dtype=storage, device=self.device) for _ in range(cfg.num_layers)]
        log.info(
            "KV cache: %d bytes per token, %d blocks of %d tokens (%.1f MiB, %d tokens)",
            self.kv_bytes_per_token,
            num_blocks,
            self.block_size,
            num_blocks * self.block_size * self.kv_bytes_per_token / 2**20,
            num_blocks * self.block_size,
        )

    def kv_blocks_that_fit(self) -> int:
        return self._kv_budget_bytes() // (self.kv_bytes_per_token * self.block_size) - 1

    def _kv_budget_bytes(self) -> int:
        if self.config.kv_cache_memory_bytes is not None:
            return self.config.kv_cache_memory_bytes
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            activations = self._profile_activation_bytes()
            return max(int(total * self.config.gpu_memory_utilization) - (total - free) - activations, 0)
        return min(DEFAULT_CPU_KV_CACHE_BYTES, available_host_memory() // 4)

    def _profile_activation_bytes(self) -> int:
        """Peak memory of the largest step (a full token budget of prefill), measured on the device."""
        n = self.config.max_num_batched_tokens
        cfg = self.loaded.config
        storage, width = self.kv_entry
        scratch = torch.zeros((2, n, self.model.kv_heads_per_rank, width), dtype=storage, device=self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        meta = AttentionMetadata(
            torch.arange(n, device=self.device),
            [0, n],
            [n],
            [list(range(-(-n // self.block_size)))],
            0,
            self.block_size,
        )
        self.backend.prepare(meta, self.device)
        with torch.inference_mode():
            hidden = self.model(
                torch.zeros(n, dtype=torch.long, device=self.device),
                torch.arange(n, device=self.device),
                [scratch] * cfg.num_layers,
                meta,
            )
            self.model.compute_logits(hidden[-self.config.max_num_seqs :])
        peak = torch.cuda.max_memory_allocated(self.device) - before
        del scratch, hidden
        torch.cuda.empty_cache()
        return peak

    @torch.inference_mode()
    def run_model(self, inputs: StepInputs) -> torch.Tensor | None:
        """The forward pass for prepared inputs: logits (float32) of the ``sample_index`` rows, or None."""
        self.backend.prepare(inputs.meta, self.device)
        forward = self.cpu_decode if self.cpu_decode is not None and self.cpu_decode.serves(inputs.meta) else self.model
        hidden = forward(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)
        if not inputs.sample_index:
            return None
        return self.model.compute_logits(hidden[torch.tensor(inputs.sample_index, device=self.device)])

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor | None, rows: list[SamplingRow]) -> list[list[Sampled]]:
        """``rows`` describe the sequences that finish their input this step, in batch order; each gets its
        accepted draft tokens (if it had any) and one sampled token."""
        if logits is None:
            return []
        if any(row.draft_token_ids for row in rows):
            return verify(logits, rows)
        return [[sampled] for sampled in sample(logits, rows)]

    def prepare(self, batch: ScheduledBatch) -> StepInputs:
        """The flat step inputs of a scheduled batch (padded to a captured size where that applies)."""
        input_ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        query_start_loc = [0]
        sample_index: list[int] = []
        bs = self.block_size
        for seq, num_tokens in batch.items():
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + num_tokens
            input_ids += _tokens(seq, start, end)
            positions += range(start, end)
            table = seq.block_table
            slot_mapping += [table[p // bs] * bs + p % bs for p in range(start, end)]
            query_start_loc.append(len(input_ids))
            if end >= seq.num_tokens:  # its last token's row, and one per draft token after it
                sample_index += range(len(input_ids) - 1 - (end - seq.num_tokens), len(input_ids))
        context_lens = [s.num_computed_tokens + n for s, n in batch.items()]
        block_tables = [s.block_table for s in batch.seqs]
        num_decodes = next((i for i, n in enumerate(batch.num_new_tokens) if n != 1), len(batch.seqs))
        if self.pad_decode_batches and num_decodes == len(batch.seqs):
            # Padding rows read and write only the padding block; their outputs are never sampled.
            padding = decode_bucket(num_decodes, self.config.max_num_seqs) - num_decodes
            input_ids += [0] * padding
            positions += [0] * padding
            slot_mapping += [self.padding_block * bs] * padding
            query_start_loc += range(query_start_loc[-1] + 1, query_start_loc[-1] + 1 + padding)
            context_lens += [1] * padding
            block_tables += [[self.padding_block]] * padding
            num_decodes += padding
        device = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slot_mapping, dtype=torch.long, device=device),
            query_start_loc=query_start_loc,
            context_lens=context_lens,
            block_tables=block_tables,
            num_decodes=num_decodes,
            block_size=bs,
        )
        return StepInputs(
            torch.tensor(input_ids, device=device), torch.tensor(positions, device=device), meta, sample_index
        )


@dataclass
class StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    sample_index: list[int]  # rows of the flat batch whose logits are sampled


def decode_bucket(rows: int, max_rows: int) -> int:
    """The batch size a decode step is padded to: 1, 2, 4, 8, then multiples of 16 (the sizes CUDA
    graphs are captured at), never beyond what the engine can run."""
    size = next((s for s in (1, 2, 4, 8) if rows <= s), -(-rows // 16) * 16)
    return min(size, max_rows)


def _tokens(seq: Sequence, start: int, end: int) -> list[int]:
    prompt_len = len(seq.prompt_token_ids)
    if start >= prompt_len:  # a decode, with the draft tokens it verifies
        return (seq.output_token_ids + seq.draft_token_ids)[start - prompt_len : end - prompt_len]
    return (seq.prompt_token_ids[start:end] + seq.output_token_ids + seq.draft_token_ids)[: end - start]


def use_cpu_threads(config: EngineConfig) -> None:
    """Set torch's thread count (process-wide) to ``--num-threads`` or the usable cores (runtime/threads.py). Under
    tensor parallelism the ranks on this machine share the cores: a rank's own runner is built before its group
    is joined (config.tensor_parallel_size), a draft model's runner on rank 0 after (the group's size)."""
    ranks = max(config.tensor_parallel_size, dist.get_world_size() if dist.is_initialized() else 1)
    choice = resolve_threads(config.num_threads, ranks)
    torch.set_num_threads(choice.threads)
    log_threads(choice)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
