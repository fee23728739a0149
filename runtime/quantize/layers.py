"""The linears of a decoder layer in the order they run, and a way to see what flows into them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from tokenyard.runtime.layers.linear import Linear
from tokenyard.runtime.models.llama import DecoderLayer


def layer_linears(layer: DecoderLayer) -> dict[str, Linear]:
    """Our fused modules by their path in the layer: each one quantizes as one matrix, since its parts share
    their input (and so their Hessian and activation statistics)."""
    return {
        "self_attn.qkv_proj": layer.self_attn.qkv_proj,
        "self_attn.o_proj": layer.self_attn.o_proj,
        "mlp.gate_up_proj": layer.mlp.gate_up_proj,
        "mlp.down_proj": layer.mlp.down_proj,
    }


@contextmanager
def inputs_seen(modules: dict[str, Linear], sink: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Within the block, every input a module gets is also given to ``sink(name, input)``."""
    handles = [
        module.register_forward_pre_hook(lambda _module, args, name=name: sink(name, args[0]))
        for name, module in modules.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def input_of(module: Linear, run: Callable[[], object]) -> torch.Tensor:
    """The input ``module`` gets while ``run()`` runs (it must run exactly once)."""
    seen: list[torch.Tensor] = []
    with inputs_seen({"": module}, lambda _name, x: seen.append(x)):
        run()
    (x,) = seen
    return x
