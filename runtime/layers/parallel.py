"""Tensor-parallel layers (Megatron's split): column-parallel linears keep a slice of the output features,
row-parallel ones a slice of the input features and sum their partial outputs over the ranks; the
embedding and the LM head split the vocabulary. With one rank they are the plain layers.

They subclass ``Linear``/``MergedLinear``/``Embedding`` and call their ``forward``, so a change of weight
representation made in place after loading (CPU packing, quantization) keeps working on each shard.
Each layer knows which part of a checkpoint tensor is its own (``shard``); the loader asks it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenyard.runtime.distributed.group import TensorParallel, current
from tokenyard.runtime.layers.linear import Embedding, Linear, MergedLinear
from tokenyard.runtime.validation import require


def shard(module: torch.nn.Module, kind: str, tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a checkpoint tensor (``kind``: weight or bias) for ``module``; whole if it is replicated."""
    if isinstance(module, (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding)):
        return module.shard(kind, tensor)
    return tensor


def divide(total: int, tp: TensorParallel, what: str) -> int:
    require(total % tp.size == 0, "tensor_parallel_size", tp.size, f"a divisor of the model's {what} ({total})")
    return total // tp.size


def _own(start: int, size: int) -> slice:
    return slice(start, start + size)


class ColumnParallelLinear(Linear):
    """Output features split across ranks; each rank's output stays its own slice."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, what: str = "output size") -> None:
        tp = current()
        rows = divide(out_features, tp, what)
        super().__init__(in_features, rows, bias)
        self.tp = tp
        self.rows = _own(tp.rank * rows, rows)

    def shard(self, kind: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor[self.rows]


class RowParallelLinear(Linear):
    """Input features split across ranks (the input is a column-parallel output); partial outputs are summed.
    Only rank 0 keeps the bias's values (the others hold zeros), so the sum has it once."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, what: str = "input size") -> None:
        tp = current()
        columns = divide(in_features, tp, what)
        super().__init__(columns, out_features, bias)
        self.tp = tp
        self.columns = _own(tp.rank * columns, columns)

    def shard(self, kind: str, tensor: torch.Tensor) -> torch.Tensor:
        if kind == "bias":
            return tensor if self.tp.rank == 0 else torch.zeros_like(tensor)
        return tensor[:, self.columns]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(super().forward(x))


class MergedColumnParallelLinear(MergedLinear):
    """Several column-parallel projections in one matmul; each checkpoint part is sharded on its own."""

    def __init__(self, in_features: int, part_rows: list[slice], bias: bool = False) -> None:
        super().__init__(in_features, [rows.stop - rows.start for rows in part_rows], bias)
        self.part_rows = part_rows  # the rows of each checkpoint part this rank holds

    @classmethod
    def evenly(cls, in_features: int, part_sizes: list[int], what: str) -> MergedColumnParallelLinear:
        tp = current()
        sizes = [divide(size, tp, what) for size in part_sizes]
        return cls(in_features, [_own(tp.rank * size, size) for size in sizes])

    def load_part(self, index: int, weight: torch.Tensor) -> None:
        super().load_part(index, weight[self.part_rows[index]])

    def load_part_bias(self, index: int, bias: torch.Tensor) -> None:
        super().load_part_bias(index, bias[self.part_rows[index]])


def attention_heads_per_rank(num_heads: int, num_kv_heads: int, tp: TensorParallel) -> tuple[int, int]:
    """(query heads, KV heads) on each rank. KV heads are split when there are at least as many as ranks,
    else replicated: each rank keeps the one KV head its query heads read."""
    allowed = [
        n for n in range(1, num_heads + 1) if num_heads % n == 0 and (num_kv_heads % n == 0 or n % num_kv_heads == 0)
    ]
    require(
        tp.size in allowed,
        "tensor_parallel_size",
        tp.size,
        f"one of {', '.join(map(str, allowed))} for a model with {num_heads} attention heads and {num_kv_heads} "
        "KV heads (it must divide the attention heads, and divide or be a multiple of the KV heads)",
    )
    return num_heads // tp.size, max(num_kv_heads // tp.size, 1)


def qkv_parallel_linear(
    hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool
) -> MergedColumnParallelLinear:
    tp = current()
    heads, kv_heads = attention_heads_per_rank(num_heads, num_kv_heads, tp)
    first_kv_head = tp.rank * num_kv_heads // tp.size  # with replication, ranks sharing a KV head agree on it
    q_rows = _own(tp.rank * heads * head_dim, heads * head_dim)
    kv_rows = _own(first_kv_head * head_dim, kv_heads * head_dim)
    return MergedColumnParallelLinear(hidden_size, [q_rows, kv_rows, kv_rows], bias)


def padded_vocab(vocab_size: int, tp: TensorParallel) -> int:
    """The vocabulary rounded up to a multiple of the ranks: any vocabulary size splits (vLLM PR #12230)."""
    return -(-vocab_size // tp.size) * tp.size


class VocabParallelEmbedding(Embedding):
    """Each rank holds a contiguous slice of the (padded) vocabulary's rows; ids outside it look up zeros,
    and the sum over ranks is the embedding."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        tp = current()
        rows = padded_vocab(vocab_size, tp) // tp.size
        super().__init__(rows, dim)
        self.tp = tp
        self.rows = _own(tp.rank * rows, rows)

    def shard(self, kind: str, tensor: torch.Tensor) -> torch.Tensor:
        return _pad_rows(tensor[self.rows], self.rows.stop - self.rows.start)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return super().forward(ids)
        local = ids - self.rows.start
        outside = (local < 0) | (local >= self.rows.stop - self.rows.start)
        out = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill_(outside[:, None], 0)
        return self.tp.all_reduce(out)


class ParallelLMHead(ColumnParallelLinear):
    """The LM head split on the vocabulary like the embedding (so tied weights share its shard); logits
    are gathered on rank 0."""

    def __init__(self, hidden_size: int, vocab_size: int) -> None:
        tp = current()
        super().__init__(hidden_size, padded_vocab(vocab_size, tp))
        self.vocab_size = vocab_size

    def shard(self, kind: str, tensor: torch.Tensor) -> torch.Tensor:
        return _pad_rows(tensor[self.rows], self.rows.stop - self.rows.start)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Float32 logits over the whole vocabulary on rank 0; None on the other ranks."""
        parts = self.tp.gather(self(hidden))
        return None if parts is None else torch.cat(parts, dim=-1)[:, : self.vocab_size].float()


def _pad_rows(rows: torch.Tensor, count: int) -> torch.Tensor:
    """The last rank's slice of a padded vocabulary is short: zero rows fill it."""
    return rows if rows.shape[0] == count else F.pad(rows, (0, 0, 0, count - rows.shape[0]))
