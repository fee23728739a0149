"""Weight quantization. Checkpoint layouts (GPTQ v1, AWQ GEMM) read back exactly what was written and
match the published bit layouts. Every format (int8/int4 at load, GPTQ with and without act-order, AWQ,
GGUF Q8_0/Q4_0/Q4_1 kept packed) computes what its dequantized weights compute: in float32 the same
greedy tokens, and top logprobs within 1e-3. Bad settings are refused naming the field and what is allowed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tokenyard.runtime import LLM, SamplingParams
from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.quantization.config import read_checkpoint_quantization
from tokenyard.runtime.quantization.formats import (
    GroupQuantized,
    awq_config,
    dequantize,
    from_awq,
    from_gptq,
    gptq_config,
    to_awq,
    to_gptq,
)
from tokenyard.runtime.quantization.groups import quantize_int4, quantize_int8_per_channel

from .conftest import CLASSIFIER_SYSTEM
from .reference import LOGPROB_ATOL


def random_quantized(n: int, k: int, bits: int, group_size: int, act_order: bool = False, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    groups = k // group_size
    g_idx = None
    if act_order:  # GPTQ's desc_act: groups assigned in a permuted column order
        g_idx = (torch.arange(k) // group_size)[torch.randperm(k, generator=gen)]
    return GroupQuantized(
        codes=torch.randint(0, 2**bits, (n, k), generator=gen, dtype=torch.uint8),
        scales=torch.rand(n, groups, generator=gen) * 0.01 + 0.001,
        zeros=torch.randint(1, 2**bits, (n, groups), generator=gen).float(),
        bits=bits,
        group_size=group_size,
        g_idx=g_idx,
    )


def assert_same(a: GroupQuantized, b: GroupQuantized) -> None:
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(a.zeros, b.zeros)
    torch.testing.assert_close(a.scales, b.scales, rtol=1e-3, atol=0)  # stored as fp16
    assert (a.g_idx is None) == (b.g_idx is None)
    if a.g_idx is not None:
        assert torch.equal(a.g_idx, b.g_idx)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_tensors_round_trip(bits, act_order):
    q = random_quantized(48, 256, bits, 64, act_order)
    tensors = to_gptq(q)
    assert tensors["qweight"].shape == (256 * bits // 32, 48) and tensors["qweight"].dtype == torch.int32
    assert tensors["qzeros"].shape == (4, 48 * bits // 32) and tensors["scales"].shape == (4, 48)
    assert tensors["g_idx"].shape == (256,)
    assert_same(q, from_gptq(tensors, bits, 64))


def test_gptq_packs_input_columns_low_bits_first_and_stores_zero_minus_one():
    q = random_quantized(8, 32, 4, 32)
    q.codes[0, :8] = torch.arange(1, 9, dtype=torch.uint8)
    q.zeros[:8, 0] = torch.tensor([8, 1, 16, 2, 3, 4, 5, 6], dtype=torch.float32)
    tensors = to_gptq(q)
    word = tensors["qweight"][0, 0].item() & 0xFFFFFFFF
    assert [(word >> (4 * j)) & 0xF for j in range(8)] == [1, 2, 3, 4, 5, 6, 7, 8]
    zeros = tensors["qzeros"][0, 0].item() & 0xFFFFFFFF
    assert [(zeros >> (4 * j)) & 0xF for j in range(8)] == [7, 0, 15, 1, 2, 3, 4, 5]


def test_gptq_refuses_a_zero_point_it_cannot_store():
    q = random_quantized(8, 32, 4, 32)
    q.zeros[0, 0] = 0
    with pytest.raises(ValueError, match=r"zero points must lie in \[1, 16\]"):
        to_gptq(q)


def test_gptq_without_act_order_reads_back_without_a_permutation():
    q = random_quantized(8, 64, 4, 32)
    assert from_gptq(to_gptq(q), 4, 32).g_idx is None  # the trivial g_idx a checkpoint stores is dropped


def test_awq_tensors_round_trip():
    q = random_quantized(64, 128, 4, 32)
    tensors = to_awq(q)
    assert tensors["qweight"].shape == (128, 8) and tensors["qzeros"].shape == (4, 8)
    assert tensors["scales"].shape == (4, 64)
    assert_same(q, from_awq(tensors, 32))


def test_awq_packs_output_columns_in_its_interleaved_nibble_order():
    q = random_quantized(8, 32, 4, 32)
    q.codes[:, 0] = torch.arange(8, dtype=torch.uint8)  # column n of input row 0 holds code n
    word = to_awq(q)["qweight"][0, 0].item() & 0xFFFFFFFF
    assert [(word >> (4 * i)) & 0xF for i in range(8)] == [0, 2, 4, 6, 1, 3, 5, 7]


def test_dequantize_applies_each_columns_group():
    q = random_quantized(4, 64, 4, 32, act_order=True)
    weight = dequantize(q)
    n, k = 2, 5
    g = int(q.g_idx[k])
    assert weight[n, k] == (q.codes[n, k].float() - q.zeros[n, g]) * q.scales[n, g]


# ---- quantized models load and compute what their dequantized weights compute ----

PROMPTS = ["The quick brown fox", "Once upon a time, in a land far away, there lived a", "1, 2, 3,"]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
SMALL = dict(kv_cache_memory_bytes=4 << 20, max_model_len=256)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def assert_same_generations(outs, reference, atol: float) -> None:
    """Same greedy tokens; each step's top logprobs agree within ``atol``."""
    for out, ref in zip(outs, reference, strict=True):
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids
        for step, ref_step in zip(out.outputs[0].logprobs, ref.outputs[0].logprobs, strict=True):
            for token, logprob in ref_step.items():
                assert abs(step[token] - logprob) <= atol


def rewrite_checkpoint(source: Path, out: Path, convert, quantization_config: dict | None = None) -> Path:
    """A copy of a HF directory with each layer projection's weight replaced by ``convert(name, weight)``
    (a dict of tensors named after the module)."""
    shutil.copytree(source, out)
    tensors = load_file(str(source / "model.safetensors"))
    rewritten = {}
    for name, tensor in tensors.items():
        module, _, kind = name.rpartition(".")
        if kind == "weight" and module.rpartition(".")[2] in PROJECTIONS:
            rewritten.update({f"{module}.{part}": t.contiguous() for part, t in convert(name, tensor).items()})
        else:
            rewritten[name] = tensor
    save_file(rewritten, str(out / "model.safetensors"), metadata={"format": "pt"})
    if quantization_config is not None:
        config = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, "quantization_config": quantization_config}))
    return out


def rtn_group_quantized(weight: torch.Tensor, bits: int, group_size: int, g_idx: torch.Tensor | None):
    """Asymmetric round-to-nearest over the columns of each group (zeros kept in [1, 2**bits - 1])."""
    k = weight.shape[1]
    groups = g_idx if g_idx is not None else torch.arange(k) // group_size
    count = int(groups.max()) + 1
    w = weight.float()
    low = torch.stack([w[:, groups == g].amin(1) for g in range(count)], 1).clamp(max=0)
    high = torch.stack([w[:, groups == g].amax(1) for g in range(count)], 1).clamp(min=0)
    top = 2**bits - 1
    scales = (high - low).clamp(min=1e-8) / top
    zeros = (-low / scales).round().clamp(1, top)
    codes = (w / scales[:, groups] + zeros[:, groups]).round().clamp(0, top)
    return GroupQuantized(codes.to(torch.uint8), scales.half().float(), zeros, bits, group_size, g_idx)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_weights_quantized_at_load_compute_what_their_dequantized_weights_compute(tiny_llama_dir, tmp_path, method):
    def dequantized(_name, weight):
        groups = quantize_int8_per_channel(weight) if method == "int8" else quantize_int4(weight, 32)
        return {"weight": groups.dequantize()}

    # the LM head is quantized too: the reference dequantizes it as well
    reference_dir = rewrite_checkpoint(tiny_llama_dir, tmp_path / "reference", dequantized)
    tensors = load_file(str(reference_dir / "model.safetensors"))
    tensors["lm_head.weight"] = dequantized("lm_head.weight", tensors["lm_head.weight"])["weight"]
    save_file(tensors, str(reference_dir / "model.safetensors"), metadata={"format": "pt"})
    reference = LLM(str(reference_dir), dtype="float32", **SMALL).generate(PROMPTS, GREEDY)
    llm = LLM(str(tiny_llama_dir), dtype="float32", quantization=method, quantization_group_size=32, **SMALL)
    assert llm.engine.executor.runner.loaded.quantization == method
    assert_same_generations(llm.generate(PROMPTS, GREEDY), reference, atol=LOGPROB_ATOL[8 if method == "int8" else 4])


@pytest.mark.parametrize(
    ("method", "bits", "act_order"), [("gptq", 4, False), ("gptq", 4, True), ("gptq", 8, True), ("awq", 4, False)]
)
def test_gptq_and_awq_checkpoints_compute_what_their_dequantized_weights_compute(
    tiny_llama_dir, tmp_path, method, bits, act_order
):
    """Act-order (desc_act) checkpoints assign input columns to groups in a permuted order: served
    without the permutation they would produce nonsense, served right they equal the dequantized model."""
    group_size = 32
    quantized: dict[str, GroupQuantized] = {}

    def quantize(name, weight):
        g_idx = None
        if act_order:  # one column order per input: q/k/v share theirs, as do gate/up
            shared_input = name.replace("k_proj", "q_proj").replace("v_proj", "q_proj").replace("up_proj", "gate_proj")
            seed = sum(map(ord, shared_input))
            order = torch.randperm(weight.shape[1], generator=torch.Generator().manual_seed(seed))
            g_idx = torch.empty_like(order)
            g_idx[order] = torch.arange(weight.shape[1]) // group_size
        quantized[name] = rtn_group_quantized(weight, bits, group_size, g_idx)
        return to_gptq(quantized[name]) if method == "gptq" else to_awq(quantized[name])

    config = gptq_config(bits, group_size, desc_act=act_order, sym=False) if method == "gptq" else awq_config(32)
    checkpoint = rewrite_checkpoint(tiny_llama_dir, tmp_path / method, quantize, config)
    reference_dir = rewrite_checkpoint(
        tiny_llama_dir, tmp_path / "reference", lambda name, _w: {"weight": dequantize(quantized[name])}
    )
    reference = LLM(str(reference_dir), dtype="float32", **SMALL).generate(PROMPTS, GREEDY)
    llm = LLM(str(checkpoint), dtype="float32", **SMALL)  # detected from config.json, no flag needed
    assert llm.engine.executor.runner.loaded.quantization == method
    assert_same_generations(llm.generate(PROMPTS, GREEDY), reference, atol=LOGPROB_ATOL[bits])


@pytest.mark.parametrize("tensor_type", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_kept_packed_computes_what_the_dequantized_file_computes(
    tiny_llama_dir, smollm2_gguf, tmp_path, tensor_type
):
    from .tiny_models import write_gguf_model

    path = write_gguf_model(tiny_llama_dir, tmp_path / f"tiny-{tensor_type}.gguf", tensor_type, smollm2_gguf)
    dequantized = LLM(str(path), dtype="float32", **SMALL)
    assert (
        dequantized.engine.executor.runner.loaded.quantization is None
    )  # an explicit float dtype asks for float weights
    packed = LLM(str(path), dtype="float32", quantization="gguf", **SMALL)
    assert packed.engine.executor.runner.loaded.quantization == "gguf"
    assert (
        packed.engine.executor.runner.loaded.weights_bytes < dequantized.engine.executor.runner.loaded.weights_bytes / 2
    )
    atol = LOGPROB_ATOL[8 if tensor_type == "Q8_0" else 4]
    assert_same_generations(packed.generate(PROMPTS, GREEDY), dequantized.generate(PROMPTS, GREEDY), atol=atol)


def test_packaged_smollm2_kept_packed_answers_the_classifier_prompt_like_the_dequantized_file(smollm2_gguf, llm_fp32):
    """The packaged file is Q4_1 with a Q8_0 (tied) token embedding: both stay packed, the LM head runs
    on the Q8_0 table, and the embedding lookup dequantizes only the rows it reads."""
    conversation = [
        {"role": "system", "content": CLASSIFIER_SYSTEM},
        {"role": "user", "content": "Question: How many legs does a cat have? Answer: four. Reply: three"},
    ]
    params = SamplingParams(temperature=0, max_tokens=24)
    packed = LLM(
        str(smollm2_gguf),
        dtype="float32",
        quantization="gguf",
        max_model_len=512,
        kv_cache_memory_bytes=64 << 20,
    )
    [expected] = llm_fp32.chat(conversation, params)
    [out] = packed.chat(conversation, params)
    assert out.outputs[0].text == expected.outputs[0].text
    model = packed.engine.executor.runner.model
    assert model.embed_tokens.quantized is not None and model.lm_head.quantized is not None


def test_a_gguf_stays_packed_only_when_asked(tiny_llama_dir, smollm2_gguf, tmp_path):
    from .tiny_models import write_gguf_model

    path = write_gguf_model(tiny_llama_dir, tmp_path / "tiny-Q4_1.gguf", "Q4_1", smollm2_gguf)
    assert LLM(str(path), quantization="gguf", **SMALL).engine.executor.runner.loaded.quantization == "gguf"
    assert LLM(str(path), **SMALL).engine.executor.runner.loaded.quantization is None


def test_weight_memory_of_the_linears_halves_with_int8_and_quarters_with_int4(tiny_llama_dir):
    def linear_bytes(**settings) -> int:
        loaded = LLM(str(tiny_llama_dir), dtype="bfloat16", **SMALL, **settings).engine.executor.runner.loaded
        embedding = loaded.config.vocab_size * loaded.config.hidden_size * 2  # bf16, untied: never quantized
        return loaded.weights_bytes - embedding

    bf16 = linear_bytes()
    # one byte per weight plus a float32 scale per row: this model's rows are 64 wide (SmolLM2's: 576 and up)
    assert linear_bytes(quantization="int8") / bf16 < (64 + 4) / 128 + 0.01
    assert linear_bytes(quantization="int4", quantization_group_size=128) / bf16 < 0.3  # + a scale and zero per row


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            dict(quantization="int4", quantization_group_size=48),
            r"quantization_group_size=48 is invalid: must be one of 32, 64, 128",
        ),
        (dict(quantization="fp4"), r"quantization='fp4' is invalid: must be int8, int4, gptq, awq, gguf"),
    ],
)
def test_bad_settings_name_the_field_and_what_is_allowed(settings, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**settings)


def test_int4_on_float16_cpu_is_refused(tiny_llama_dir):
    with pytest.raises(ValueError, match=r"dtype='float16' is not served on CPU"):
        LLM(str(tiny_llama_dir), dtype="float16", quantization="int4", **SMALL)


def test_awq_with_8_bits_is_refused():
    with pytest.raises(ValueError, match=r"quantization_config.bits=8 is invalid: must be 4 for AWQ"):
        read_checkpoint_quantization({"quantization_config": {**awq_config(128), "bits": 8}})


def test_a_flag_the_checkpoint_contradicts_is_refused(tiny_llama_dir, tmp_path):
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    shutil.copytree(tiny_llama_dir, tmp_path / "gptq")
    (tmp_path / "gptq" / "config.json").write_text(json.dumps({**config, "quantization_config": gptq_config(4, 32)}))
    with pytest.raises(ValueError, match=r"quantization='int8' is invalid: must be left out or 'gptq'"):
        LLM(str(tmp_path / "gptq"), quantization="int8", **SMALL)
    with pytest.raises(
        ValueError, match=r"quantization='awq' is invalid: must be int8 or int4 for a checkpoint without"
    ):
        LLM(str(tiny_llama_dir), quantization="awq", **SMALL)
