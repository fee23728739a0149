"""tokenyard's own CPU kernels (runtime/kernels) compute what the PyTorch code they replace computes: the
quantized matmul against the dequantized weight, the small ops against their eager formulas, and a whole
model the same greedy tokens with the kernels on and off. PyTorch's own packed kernels, which serve where
ours cannot run, are held to the same reference.

Every kernel test runs once per path this CPU has (on x86-64: AVX2; AVX-512 where present, with and without
its bfloat16 dot products; a test id names the one it ran on), by capping the dispatch as TOKENYARD_CPU_ISA
does."""

from __future__ import annotations

import itertools
import os
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tokenyard.runtime import LLM, SamplingParams
from tokenyard.runtime.engine import cpu_decode
from tokenyard.runtime.kernels import PREBUILT_ENV, cpu_kernels
from tokenyard.runtime.layers import activation, attention, norm, rotary
from tokenyard.runtime.quantization.groups import AffineGroups, quantize_int4, quantize_int8_per_channel
from tokenyard.runtime.quantization.kernels import (
    CpuGroupWeight,
    Int4GroupWeight,
    Int8ChannelWeight,
    Int8GroupWeight,
    make_quantized_weight,
)

pytestmark = [
    pytest.mark.skipif(cpu_kernels() is None, reason="the CPU kernels need AVX2 or NEON, Highway and a C++ compiler"),
    pytest.mark.usefixtures("instruction_set"),
]

CPU = torch.device("cpu")
# The paths x86-64 CPUs run, by the TOKENYARD_CPU_ISA cap that selects each: AVX2, AVX-512 (float32 FMAs), and
# AVX-512 with its bfloat16 dot products where the CPU has them.
CAPS = ["avx2", "avx512", "native"] if platform.machine() == "x86_64" else ["native"]


@pytest.fixture(params=CAPS)
def instruction_set(request):
    """The kernels capped to one instruction set for the test (skipped where this CPU lacks it)."""
    module = cpu_kernels()
    module.cap_targets(request.param)
    try:
        expected = {"avx2": "AVX2", "avx512": "AVX3"}.get(request.param)
        if expected is not None and module.chosen_target() != expected:
            pytest.skip(f"this CPU has no {expected} (the kernels run {module.chosen_target()} at most)")
        if request.param == "native" and platform.machine() == "x86_64" and not module.bf16_dot_allowed():
            pytest.skip("this CPU has no AVX512-BF16: native is the avx2 or avx512 case")
        yield module.chosen_target()
    finally:
        module.cap_targets(os.environ.get("TOKENYARD_CPU_ISA", "native").strip().lower())


def reference_matmul(x: torch.Tensor, groups: AffineGroups) -> torch.Tensor:
    weight = groups.dequantize().double()
    if groups.perm is not None:  # codes are stored in act-order; put the columns back where x has them
        weight = torch.empty_like(weight).index_copy_(1, groups.perm, weight)
    return x.double() @ weight.T


def random_groups(bits: int, out_features: int, in_features: int, group_size: int, act_order: bool = False):
    torch.manual_seed(bits * 1000 + in_features + group_size)
    groups = in_features // group_size
    codes = torch.randint(0, 2**bits, (out_features, in_features), dtype=torch.uint8)
    scales = torch.rand(out_features, groups) * 0.02 + 1e-3
    mins = torch.randn(out_features, groups) * 0.02
    perm = torch.randperm(in_features) if act_order else None
    return AffineGroups(codes, scales, mins, bits, group_size, perm)


def assert_matches(out: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """float32: to rounding; bfloat16: to the output's own rounding (a relative 2**-8)."""
    scale = expected.abs().max().item()
    tolerance = 1e-5 if dtype == torch.float32 else 2**-7
    assert (out.double() - expected).abs().max().item() <= tolerance * scale


@pytest.mark.parametrize(
    ("bits", "out_features", "in_features", "group_size"),
    [
        (4, 96, 576, 32),  # SmolLM2's K in groups of 32
        (4, 61, 576, 64),  # rows that do not fill the last block of four
        (4, 40, 192, 96),  # a group size that is not a multiple of 64: the float32 path
        (8, 50, 576, 576),  # per-channel int8
        (8, 33, 256, 32),  # groupwise 8-bit (GGUF Q8_0)
    ],
)
@pytest.mark.parametrize("rows", [1, 2, 3, 6, 11, 15])  # every register blocking, and several passes over a block
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_linear_computes_the_dequantized_matmul(
    instruction_set, bits, out_features, in_features, group_size, rows, dtype
):
    groups = random_groups(bits, out_features, in_features, group_size)
    weight = CpuGroupWeight(groups, group_size, dtype)
    if dtype == torch.bfloat16:  # the weight is what its bfloat16 scales and mins describe
        groups = replace(groups, scales=groups.scales.bfloat16().float(), mins=groups.mins.bfloat16().float())
    x = torch.randn(rows, in_features).to(dtype)
    out = weight.forward(x)
    assert out.dtype == dtype and out.shape == (rows, out_features)
    assert_computes(out, x, groups, dtype, int8_dot=cpu_kernels().int8_dot_for_rows(bits, rows))


# 4-bit codes on AVX-512 (any number of rows of x) and AVX2 (one row, or 16 and more) go through int8 dot
# products: x as two int8 terms per row and group, x = d * (q + r / 254) with d = max|x| / 127 (Int8DotForRows and
# quantize_x_int8 in simd/quantized_linear_simd.cc). Every other path takes float32 FMAs.
# Relative to the output's largest value: each x is off by at most d / 508, 1 / 64516 of its group's largest, and
# the K errors add up as a random walk: about 2e-5 for Gaussian x (K = 192 to 1536, groups of 32 to 96), so 1e-4
# leaves room; bfloat16 outputs add their own rounding, as on the float path.
INT8_DOT_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2**-7}


def assert_computes(out: torch.Tensor, x: torch.Tensor, groups: AffineGroups, dtype: torch.dtype, int8_dot: bool):
    """out is x @ W.T for the weight the groups describe: to rounding on the float path, to the int8 terms'
    precision on the int8 one."""
    expected = reference_matmul(x, groups)
    if not int8_dot:
        return assert_matches(out, expected, dtype)
    scale = expected.abs().max().item()
    error = (out.double() - expected).abs()
    slack = (1e-6 if dtype == torch.float32 else 2**-8) * scale  # float32 sums; bfloat16 outputs
    assert (error <= int8_bound(x, groups) + slack).all()  # every x within d / 508
    assert error.max().item() <= INT8_DOT_TOLERANCE[dtype] * scale
    if dtype == torch.float32:  # the int8 path ran: float32 FMAs come within about 3e-7
        assert error.max().item() > 2e-6 * scale


def int8_bound(x: torch.Tensor, groups: AffineGroups) -> torch.Tensor:
    """The most the two int8 terms can move each output: d / 508 per x, times the codes' part of the weight
    (the mins multiply exact sums of x). A weight whose K is not whole groups is served in other groups: the row's
    largest x bounds each of them."""
    size = groups.group_size if x.shape[1] % groups.group_size == 0 else x.shape[1]
    x = x.double().unflatten(1, (-1, size))
    errors = (x.abs().amax(2, keepdim=True) / (127 * 508)).expand_as(x).flatten(1)
    scales = groups.scales.double().repeat_interleave(groups.group_size, 1)[:, : x.shape[1] * x.shape[2]]
    return errors @ (groups.codes.double() * scales).abs().T


@pytest.mark.parametrize(
    ("out_features", "in_features", "group_size"),
    [
        (96, 576, 32),  # SmolLM2's K in groups of 32
        (61, 1536, 64),  # the down projection's K; rows that do not fill the last tile; 2 x 32 columns a group
        (40, 192, 96),  # a group size that is not a multiple of 64
    ],
)
@pytest.mark.parametrize("rows", [16, 21, 64])  # passes of every register blocking
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_linear_of_a_prefill_computes_the_dequantized_matmul(
    instruction_set, out_features, in_features, group_size, rows, dtype
):
    groups = random_groups(4, out_features, in_features, group_size)
    weight = CpuGroupWeight(groups, group_size, dtype)
    if dtype == torch.bfloat16:
        groups = replace(groups, scales=groups.scales.bfloat16().float(), mins=groups.mins.bfloat16().float())
    x = torch.randn(rows, in_features).to(dtype)
    x[3] *= 4  # rows of different magnitudes: each row has its own scales
    x[5, :group_size] = 0  # a group of zeros (its scale is 0)
    out = weight.forward(x)
    assert out.dtype == dtype and out.shape == (rows, out_features)
    assert_computes(out, x, groups, dtype, int8_dot=cpu_kernels().int8_dot_for_rows(4, rows))


def test_int8_dot_products_serve_4_bit_decode_and_prefill_on_avx2_and_every_4_bit_call_on_avx512(instruction_set):
    """Where they beat float32 FMAs (measured: see Int8DotForRows); never for 8-bit codes."""
    uses = cpu_kernels().int8_dot_for_rows
    avx512 = instruction_set.startswith("AVX3")  # "native" on an AVX512-BF16 CPU runs the AVX3 code too
    expected = [True, False, False, False, True, True] if instruction_set == "AVX2" else [avx512] * 6
    assert [uses(4, rows) for rows in (1, 2, 8, 15, 16, 64)] == expected
    assert not any(uses(8, rows) for rows in (1, 16, 64))


def test_quantized_linear_takes_int8_dot_products_for_4_bit_codes_only():
    """8-bit codes stay exact at any number of rows (int8 x would gain them nothing, see the kernel)."""
    groups = random_groups(8, 33, 256, 32)
    x = torch.randn(64, 256)
    assert_matches(CpuGroupWeight(groups, 32, torch.float32).forward(x), reference_matmul(x, groups), torch.float32)


@pytest.mark.parametrize(
    "groups",
    [
        quantize_int8_per_channel(torch.randn(80, 576)),
        quantize_int4(torch.randn(80, 576), 128),  # K = 576 is not whole groups of 128: served as groups of 64
        quantize_int4(torch.randn(48, 200), 32),  # K padded to whole groups
        random_groups(4, 64, 256, 64, act_order=True),  # GPTQ act-order: x gathered by the permutation
        random_groups(8, 32, 128, 32),  # Q8_0
    ],
    ids=["int8-channel", "int4-g128-k576", "int4-padded-k", "gptq-act-order", "q8_0"],
)
def test_every_quantized_format_gets_a_kernel_that_computes_its_weight(groups):
    """Ours where it serves the format, and PyTorch's (the fallback elsewhere) held to the same reference."""
    ours = make_quantized_weight(groups, torch.float32, CPU)
    assert isinstance(ours, CpuGroupWeight)
    if groups.bits == 8 and groups.scales.shape[1] == 1:
        theirs = Int8ChannelWeight(groups, torch.float32, CPU)
    elif groups.bits == 8:
        theirs = Int8GroupWeight(groups, torch.float32, CPU)
    else:
        theirs = Int4GroupWeight(groups, torch.float32, CPU)
    x = torch.randn(5, groups.in_features)
    torch.testing.assert_close(theirs.forward(x).double(), reference_matmul(x, groups), atol=1e-4, rtol=1e-4)
    assert_computes(ours.forward(x), x, groups, torch.float32, cpu_kernels().int8_dot_for_rows(groups.bits, 5))


def test_a_shared_int8_table_looks_up_the_rows_the_matmul_uses():
    groups = quantize_int8_per_channel(torch.randn(64, 96))
    weight = make_quantized_weight(groups, torch.float32, CPU)
    ids = torch.tensor([0, 5, 63])
    torch.testing.assert_close(weight.shared_rows().rows(ids, torch.float32), groups.dequantize()[ids])


@pytest.fixture
def eager(monkeypatch):
    """Turns our kernels off for the small ops, as on a machine without them."""

    def without_kernels() -> None:
        for module in (activation, attention, norm, rotary, cpu_decode):
            monkeypatch.setattr(module, "kernels_for", lambda x: None)

    return without_kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_small_ops_compute_their_eager_formulas(eager, dtype):
    torch.manual_seed(0)
    heads, kv_heads, dim, tokens = 6, 2, 64, 5
    x, residual = torch.randn(tokens, 576).to(dtype), torch.randn(tokens, 576).to(dtype)
    layer_norm = norm.RMSNorm(576, 1e-5).to(dtype)
    layer_norm.weight.data.uniform_(0.5, 1.5)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim).to(dtype)
    angles = rotary.RotaryEmbedding(dim, 64, 10000.0).angles(torch.tensor([0, 3, 7, 20, 63]))
    gate_up = (torch.randn(tokens, 2 * 1536) * 4).to(dtype)

    def run() -> list[torch.Tensor]:
        return [
            layer_norm(x),
            *layer_norm.add_and_norm(x, residual),
            *rotary.rotate_queries_and_keys(qkv.clone(), angles, heads, kv_heads, dim),
            activation.silu_and_mul(gate_up),
        ]

    ours = run()
    eager()
    theirs = run()
    # float32 to rounding; bfloat16 within one rounding of the output (the kernels round once, not per op)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2**-7}
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.float(), b.float(), **tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (8, 2, 128)])
def test_attention_of_decodes_and_their_drafts_reads_the_cache_as_eager_attention_does(
    eager, dtype, heads, kv_heads, dim
):
    """Few sequences with short chunks (a decode, decodes with 3 and 7 drafts to verify: over 16 query rows
    of one KV head, so split across work items), contexts that do not fill their last block."""
    torch.manual_seed(0)
    block, contexts, chunks = 16, [37, 90, 200], [1, 4, 8]
    free = iter(torch.randperm(64).tolist())
    tables = [[next(free) for _ in range(-(-c // block))] for c in contexts]
    cache = torch.randn(2, 64 * block, kv_heads, dim).to(dtype)
    slots = [
        t[p // block] * block + p % block
        for t, c, n in zip(tables, contexts, chunks, strict=True)
        for p in range(c - n, c)
    ]
    starts = [0, *itertools.accumulate(chunks)]
    q = torch.randn(starts[-1], heads, dim).to(dtype)
    k, v = torch.randn(starts[-1], kv_heads, dim).to(dtype), torch.randn(starts[-1], kv_heads, dim).to(dtype)

    def run() -> torch.Tensor:
        meta = attention.AttentionMetadata(torch.tensor(slots), starts, contexts, tables, 1, block)
        backend = attention.TorchAttentionBackend()
        backend.prepare(meta, CPU)
        return backend.forward(q, k, v, cache.clone(), meta, dim**-0.5)

    ours = run()
    eager()
    theirs = run()
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2**-7}
    torch.testing.assert_close(ours.float(), theirs.float(), **tolerance)


def test_a_model_decodes_the_same_tokens_with_and_without_the_kernels(tiny_llama_dir, eager):
    """float32, batched, across decode and prefill steps (the kernels serve both)."""
    prompts = ["The cat sat on", "Once upon a time, in a small village by the sea, there lived", "Hello"]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=1)

    def generate() -> list:
        llm = LLM(str(tiny_llama_dir), dtype="float32", max_num_seqs=4, kv_cache_memory_bytes=4 << 20)
        return [o.outputs[0] for o in llm.generate(prompts, params)]

    ours = generate()
    eager()
    theirs = generate()
    for a, b in zip(ours, theirs, strict=True):
        assert a.token_ids == b.token_ids
        for token, step_a, step_b in zip(a.token_ids, a.logprobs, b.logprobs, strict=True):
            assert step_a[token] == pytest.approx(step_b[token], abs=1e-4)


NGRAM = {"method": "ngram", "num_speculative_tokens": 3}


@pytest.mark.parametrize(
    ("dtype", "speculative", "quantization"),
    [
        ("float32", None, None),
        ("float32", NGRAM, None),
        ("bfloat16", None, None),
        ("bfloat16", NGRAM, None),
        ("bfloat16", None, "int4"),
        ("float32", NGRAM, "int8"),
    ],
)
def test_the_native_decode_step_decodes_what_the_modules_decode(tiny_llama_dir, dtype, speculative, quantization):
    """Steps of a few rows that decode (and verify drafts) take the native step; enforce_eager sends every
    step through the modules. Batched and single, with logprobs; float32 and bfloat16, float and quantized
    weights alike (the same kernels, in the same order)."""
    prompts = ["The cat sat on", "Once upon a time, in a small village by the sea, there lived", "Hello"]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2)

    def generate(enforce_eager: bool) -> list:
        llm = LLM(
            str(tiny_llama_dir),
            dtype=dtype,
            enforce_eager=enforce_eager,
            kv_cache_memory_bytes=4 << 20,
            speculative_config=speculative,
            quantization=quantization,
            quantization_group_size=32,
        )
        assert (llm.engine.executor.runner.cpu_decode is None) == enforce_eager
        return [o.outputs[0] for o in llm.generate(prompts, params) + llm.generate(prompts[:1], params)]

    flat, modules = generate(enforce_eager=False), generate(enforce_eager=True)
    for a, b in zip(flat, modules, strict=True):
        assert a.token_ids == b.token_ids
        assert a.logprobs == b.logprobs


LOADED = "from tokenyard.runtime.kernels import cpu_kernels as k; print(k() and k().__file__)"


def test_a_module_built_ahead_of_time_is_loaded_from_its_path_without_compiling(tmp_path):
    """Container images compile the kernels when they are built (``python -m tokenyard.runtime.kernels DIR``)
    and run without a compiler: the module named by TOKENYARD_CPU_KERNELS_PATH is imported as it is, and the
    extension cache is never touched."""
    built = Path(cpu_kernels().__file__)
    cache = tmp_path / "extensions"
    cache.mkdir()
    env = {**os.environ, PREBUILT_ENV: str(built), "TORCH_EXTENSIONS_DIR": str(cache)}
    run = subprocess.run([sys.executable, "-c", LOADED], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(built)
    assert not any(cache.iterdir())


def test_a_missing_prebuilt_module_leaves_pytorchs_kernels_serving_and_says_why(tmp_path):
    env = {**os.environ, PREBUILT_ENV: str(tmp_path / "absent.so")}
    run = subprocess.run([sys.executable, "-c", LOADED], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "None"
    assert f"{PREBUILT_ENV}={tmp_path / 'absent.so'}" in run.stderr


def test_the_instruction_set_cap_in_the_environment_decides_which_kernels_a_process_runs(tmp_path):
    """TOKENYARD_CPU_ISA=avx2 on any x86-64 CPU with AVX2: the AVX2 kernels, as on a CPU without AVX-512."""
    if platform.machine() != "x86_64":
        pytest.skip("the avx2 cap is an x86-64 one")
    chosen = "from tokenyard.runtime.kernels import cpu_kernels as k; print(k().chosen_target())"
    env = {**os.environ, "TOKENYARD_CPU_ISA": "avx2", PREBUILT_ENV: cpu_kernels().__file__}
    run = subprocess.run([sys.executable, "-c", chosen], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "AVX2"
