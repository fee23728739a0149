"""Paged KV cache bookkeeping: a pool of fixed-size blocks, per-sequence block tables, reference counts
and automatic prefix caching. Pure Python: the tensors live in the model runner."""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from tokenyard.runtime.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None  # set once the block is full, computed and registered in the cache
    token_ids: tuple[int, ...] = ()


def chain_hash(parent: bytes | None, token_ids: tuple[int, ...]) -> bytes:
    """Hash of a full block together with everything before it, so equal hashes mean equal prefixes."""
    return hashlib.sha256((parent or b"") + array("q", token_ids).tobytes()).digest()


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in eviction order: the front is reused first. Cached blocks keep their contents
        # (and stay findable) until they are reused.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[bytes, int] = {}
        self._seq_hashes: dict[str, list[bytes]] = {}  # request id -> chain hashes of its full blocks
        self._pending: dict[bytes, str] = {}  # hash of a block being computed -> the request computing it
        self.prefix_cache_queries = 0  # tokens looked up
        self.prefix_cache_hits = 0  # tokens found

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding the longest prefix of ``seq``'s tokens. At least one token is always
        left to compute: its logits are needed to sample, and an empty query breaks attention."""
        if not self.enable_prefix_caching:
            return []
        tokens = seq.token_ids
        matched: list[int] = []
        for index, block_hash in enumerate(self._block_hashes(seq)[: (len(tokens) - 1) // self.block_size]):
            block_id = self._cached.get(block_hash)
            chunk = tuple(tokens[index * self.block_size : (index + 1) * self.block_size])
            if block_id is None or self.blocks[block_id].token_ids != chunk:
                break
            matched.append(block_id)
        return matched

    def computed_elsewhere_soon(self, seq: Sequence, num_cached_blocks: int) -> bool:
        """Whether the first block ``seq`` would compute is being computed right now by another request
        (the same system prompt arriving in a burst): waiting one step turns it into a cache hit."""
        if not self.enable_prefix_caching:
            return False
        hashes = self._block_hashes(seq)
        owner = self._pending.get(hashes[num_cached_blocks]) if num_cached_blocks < len(hashes) else None
        return owner is not None and owner != seq.request_id

    def record_lookup(self, num_queried: int, num_hit: int) -> None:
        self.prefix_cache_queries += num_queried
        self.prefix_cache_hits += num_hit

    def allocate(self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int] | None = None) -> bool:
        """Make ``seq``'s block table cover ``num_new_tokens`` more tokens, taking ``cached_blocks`` (from
        ``match_prefix``) as its head on admission. Returns False, changing nothing, when the pool is short."""
        cached_blocks = cached_blocks or []
        covered = seq.num_computed_tokens + len(cached_blocks) * self.block_size + num_new_tokens
        needed = -(-covered // self.block_size) - len(seq.block_table) - len(cached_blocks)
        reclaimed = sum(1 for b in cached_blocks if self.blocks[b].ref_count == 0)
        if needed > self.num_free_blocks - reclaimed:
            return False
        admitting = not seq.block_table
        for block_id in cached_blocks:
            seq.block_table.append(self._touch(block_id))
        for _ in range(max(needed, 0)):
            seq.block_table.append(self._pop_free())
        if admitting and self.enable_prefix_caching:
            for block_hash in self._block_hashes(seq)[len(cached_blocks) :]:
                self._pending.setdefault(block_hash, seq.request_id)
        return True

    def cache_full_blocks(self, seq: Sequence, num_new_tokens: int) -> None:
        """Register the blocks that the last ``num_new_tokens`` computed tokens filled, so later requests
        can share them."""
        if not self.enable_prefix_caching:
            return
        hashes = self._block_hashes(seq)
        first = (seq.num_computed_tokens - num_new_tokens) // self.block_size
        for index in range(first, seq.num_computed_tokens // self.block_size):
            block = self.blocks[seq.block_table[index]]
            block_hash = hashes[index]
            if self._pending.get(block_hash) == seq.request_id:
                del self._pending[block_hash]
            if block.block_hash is None and block_hash not in self._cached:
                block.block_hash = block_hash
                block.token_ids = tuple(seq.token_ids[index * self.block_size : (index + 1) * self.block_size])
                self._cached[block_hash] = block.block_id

    def free(self, seq: Sequence) -> None:
        """Release ``seq``'s blocks, tail first, so shared prefix heads stay cached the longest."""
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table.clear()
        for block_hash in self._seq_hashes.pop(seq.request_id, []):
            if self._pending.get(block_hash) == seq.request_id:
                del self._pending[block_hash]

    def release_tail(self, seq: Sequence) -> None:
        """Roll back after rejected draft tokens: free the blocks past ``seq``'s computed tokens. They hold
        only rejected tokens, which are never registered in the prefix cache (only computed blocks are)."""
        keep = -(-seq.num_computed_tokens // self.block_size)
        for block_id in reversed(seq.block_table[keep:]):
            self._release(block_id)
        del seq.block_table[keep:]

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self._free[block_id] = None
            if block.block_hash is None:  # holds nothing reusable: hand it out first
                self._free.move_to_end(block_id, last=False)

    def _block_hashes(self, seq: Sequence) -> list[bytes]:
        """Chain hashes of ``seq``'s full blocks, extended as its tokens grow."""
        hashes = self._seq_hashes.setdefault(seq.request_id, [])
        size = self.block_size
        if len(hashes) < seq.num_tokens // size:
            tokens = seq.token_ids
            for index in range(len(hashes), len(tokens) // size):
                hashes.append(
                    chain_hash(hashes[-1] if hashes else None, tuple(tokens[index * size : (index + 1) * size]))
                )
        return hashes

    def reset_prefix_cache(self) -> None:
        """Forget every cached block (their contents stay valid for the sequences holding them)."""
        for block_id in self._cached.values():
            self.blocks[block_id].block_hash, self.blocks[block_id].token_ids = None, ()
        self._cached.clear()

    def _touch(self, block_id: int) -> int:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1
        return block_id

    def _pop_free(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None:  # evict: the least recently freed cached block
            if self._cached.get(block.block_hash) == block_id:
                del self._cached[block.block_hash]
            block.block_hash, block.token_ids = None, ()
        block.ref_count = 1
        return block_id
