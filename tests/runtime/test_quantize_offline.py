"""``tokenyard quantize``: GPTQ and AWQ lose less than round-to-nearest where each claims to (GPTQ on a layer's
real calibration inputs, AWQ on inputs with outlier channels), act-order checkpoints keep exactly the weights
GPTQ chose, written directories load (tokenyard's loader; transformers on the dequantized copy), and bad
arguments fail saying what is allowed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tokenyard.benchmarks.perplexity import pydoc_corpus
from tokenyard.cli import main
from tokenyard.runtime.quantization import formats
from tokenyard.runtime.quantize.awq import search_scales
from tokenyard.runtime.quantize.calibration import (
    CalibrationBatch,
    calibration_sequences,
    load_float_model,
)
from tokenyard.runtime.quantize.checkpoint import dequantize_checkpoint
from tokenyard.runtime.quantize.gptq import Hessian, gptq
from tokenyard.runtime.quantize.layers import inputs_seen, layer_linears
from tokenyard.runtime.quantize.rtn import rtn


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibration") / "pydoc.txt"
    path.write_text(pydoc_corpus()[0][:40_000])
    return path


@pytest.fixture(scope="module")
def layer_inputs(tiny_llama_dir, calibration_file):
    """Each linear of the tiny model's first layer with the inputs it gets on calibration text, in float32."""
    source = load_float_model(str(tiny_llama_dir))
    sequences = calibration_sequences(source.tokenizer, calibration_file.read_text(), 8, 64)
    batch = CalibrationBatch(source.model, sequences)
    layer = source.model.layers[0]
    seen = {}
    with inputs_seen(layer_linears(layer), lambda name, x: seen.__setitem__(name, x.clone())):
        batch.run_layer(layer, source.model.embed_tokens(batch.input_ids))
    return {name: (linear.weight.data.clone(), seen[name]) for name, linear in layer_linears(layer).items()}


def output_error(weight: torch.Tensor, q: formats.GroupQuantized, x: torch.Tensor) -> float:
    return float((x @ weight.t() - x @ formats.dequantize(q).t()).pow(2).mean())


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    hessian = Hessian(x.shape[-1])
    hessian.add(x)
    return hessian.matrix


@pytest.mark.parametrize(("bits", "group_size"), [(4, 32), (4, 64), (8, 32)])
def test_gptq_output_error_is_below_round_to_nearest(layer_inputs, bits, group_size):
    for name, (weight, x) in layer_inputs.items():
        for act_order in (False, True):
            q = gptq(weight, hessian_of(x), bits, group_size, act_order=act_order)
            assert output_error(weight, q, x) < 0.9 * output_error(weight, rtn(weight, bits, group_size), x), name


def test_awq_scales_lower_the_error_on_inputs_with_outlier_channels():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 128, bias=False)
    x = torch.randn(512, 256)
    x[:, torch.randperm(256)[:8]] *= 30  # a few channels carry most of the activation, as in real LLMs
    weight = linear.weight.data.clone()
    reference = linear(x)
    scales = search_scales(linear, x, linear, bits=4, group_size=64)
    assert torch.equal(linear.weight.data, weight)  # the search leaves the layer as it found it
    awq = formats.dequantize(rtn(weight * scales, 4, 64)) / scales
    rtn_error = (x @ formats.dequantize(rtn(weight, 4, 64)).t() - reference).pow(2).mean()
    awq_error = (x @ awq.t() - reference).pow(2).mean()
    assert awq_error < 0.8 * rtn_error


def test_act_order_checkpoint_tensors_hold_the_weights_gptq_chose(layer_inputs):
    weight, x = layer_inputs["mlp.down_proj"]
    q = gptq(weight, hessian_of(x), 4, 32, act_order=True)
    assert q.g_idx is not None and q.g_idx.shape == (weight.shape[1],)
    assert not torch.equal(q.g_idx, torch.arange(weight.shape[1]) // 32)  # groups follow the activation order
    assert torch.equal(torch.bincount(q.g_idx), torch.full((weight.shape[1] // 32,), 32))
    back = formats.from_gptq(formats.to_gptq(q), 4, 32)
    assert torch.equal(formats.dequantize(back), formats.dequantize(q))


def quantize_cli(model, out, *flags) -> None:
    assert main(["quantize", "--model", str(model), "--out", str(out), *flags]) == 0


@pytest.fixture(scope="module")
def checkpoints(tiny_llama_dir, calibration_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    calibration = ["--calibration", str(calibration_file), "--num-calibration-seqs", "8", "--calibration-seq-len", "64"]
    quantize_cli(tiny_llama_dir, root / "gptq", "--method", "gptq", "--group-size", "32", *calibration)
    quantize_cli(
        tiny_llama_dir,
        root / "gptq-act-order",
        "--method",
        "gptq",
        "--desc-act",
        *calibration[:2],
        "--group-size",
        "32",
        *calibration[2:],
    )
    quantize_cli(tiny_llama_dir, root / "awq", "--method", "awq", "--group-size", "32", *calibration)
    quantize_cli(tiny_llama_dir, root / "rtn8", "--method", "rtn", "--bits", "8", "--group-size", "32")
    return root


def test_written_directories_carry_the_quantization_config_and_packed_layers(checkpoints):
    gptq_config = json.loads((checkpoints / "gptq-act-order" / "config.json").read_text())["quantization_config"]
    assert gptq_config == formats.gptq_config(4, 32, desc_act=True, sym=False)
    awq_config = json.loads((checkpoints / "awq" / "config.json").read_text())["quantization_config"]
    assert awq_config == formats.awq_config(32)
    tensors = load_file(str(checkpoints / "gptq-act-order" / "model.safetensors"))
    for part in ("q_proj", "k_proj", "v_proj"):
        assert tensors[f"model.layers.1.self_attn.{part}.qweight"].dtype == torch.int32
        assert f"model.layers.1.self_attn.{part}.g_idx" in tensors
    assert tensors["model.embed_tokens.weight"].dtype == torch.float16
    assert (checkpoints / "awq" / "tokenizer.json").is_file()


@pytest.mark.parametrize("method", ["gptq", "gptq-act-order", "awq", "rtn8"])
def test_checkpoints_load_in_tokenyard_and_match_transformers_on_their_dequantized_weights(
    checkpoints, method, tmp_path
):
    """tokenyard serves the packed checkpoint; transformers runs the float weights it stands for."""
    from transformers import AutoModelForCausalLM

    from tokenyard.runtime import LLM, SamplingParams

    from .reference import LOGPROB_ATOL, assert_matches_reference

    llm = LLM(str(checkpoints / method), dtype="float32", kv_cache_memory_bytes=4 << 20)
    assert llm.engine.executor.runner.loaded.quantization == ("awq" if method == "awq" else "gptq")
    dense = dequantize_checkpoint(checkpoints / method, tmp_path / "dense")
    reference = AutoModelForCausalLM.from_pretrained(str(dense), dtype=torch.float32).eval()
    [out] = llm.generate("The quick brown fox", SamplingParams(temperature=0, max_tokens=8, logprobs=2))
    assert_matches_reference(reference, out, LOGPROB_ATOL[8 if method == "rtn8" else 4])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--method", "awq", "--bits", "8"], "--bits=8 is invalid: must be 4 with --method awq"),
        (["--method", "gptq"], "--calibration=None is invalid: must be a text file with --method gptq"),
        (["--method", "gptq", "--calibration", "/nonexistent.txt"], "must be an existing text file"),
        (["--method", "rtn", "--group-size", "48"], "--group-size=48 is invalid: must be -1 or a positive multiple"),
        (["--method", "awq", "--desc-act"], "--desc-act=True is invalid: must be used with --method gptq only"),
    ],
)
def test_bad_arguments_fail_before_any_work_and_say_what_is_allowed(flags, message, tmp_path):
    with pytest.raises(SystemExit, match=message.replace("(", r"\(")):
        main(["quantize", "--out", str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()


def test_a_group_size_wider_than_a_layer_is_refused(tiny_llama_dir, tmp_path):
    with pytest.raises(SystemExit, match="--group-size=128 is invalid: must be at most the smallest input size, 64"):
        main(
            [
                "quantize",
                "--model",
                str(tiny_llama_dir),
                "--method",
                "rtn",
                "--group-size",
                "128",
                "--out",
                str(tmp_path / "out"),
            ]
        )


@pytest.mark.parametrize("kv_heads", [2, 4])  # grouped KV heads; and as many as query heads (o_proj scaled too)
def test_awq_scales_fold_into_their_producers_without_changing_the_float_layer(
    tmp_path, smollm2_tokenizer, calibration_file, kv_heads
):
    from tokenyard.runtime.quantize.awq import fold_scales

    from .tiny_models import write_hf_model

    model_dir = write_hf_model("llama", tmp_path / "model", smollm2_tokenizer, num_key_value_heads=kv_heads)
    source = load_float_model(str(model_dir))
    batch = CalibrationBatch(source.model, calibration_sequences(source.tokenizer, calibration_file.read_text(), 4, 64))
    layer = source.model.layers[0]
    x = source.model.embed_tokens(batch.input_ids)
    before = {name: p.clone() for name, p in layer.named_parameters()}
    expected = batch.run_layer(layer, x)
    with torch.no_grad():
        fold_scales(layer, x, batch, bits=4, group_size=32)
    changed = {name for name, p in layer.named_parameters() if not torch.equal(p, before[name])}
    producers = {"input_layernorm.weight", "post_attention_layernorm.weight", "mlp.gate_up_proj.weight"}
    assert producers <= changed
    assert ("self_attn.o_proj.weight" in changed) == (kv_heads == 4)
    torch.testing.assert_close(batch.run_layer(layer, x), expected, rtol=1e-4, atol=1e-4)
