"""What the CPU can compute, read once from /proc/cpuinfo (runtime/cpu.py), and the dtype policy built on it:
``auto`` is bfloat16 only where the CPU computes it natively, float32 elsewhere; an explicit bfloat16 is served
on every CPU (through PyTorch's plain kernels where oneDNN's bfloat16 path cannot run), never a crash mid-load.
TOKENYARD_CPU_ISA caps what the process believes (to run an older CPU's paths), never raises it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokenyard.runtime import LLM, SamplingParams
from tokenyard.runtime.cpu import ISA_ENV, CpuIsa, capped, cpu_isa, from_cpuinfo
from tokenyard.runtime.loaders import weights
from tokenyard.runtime.loaders.weights import can_prepack, resolve_dtype

# Abridged from real machines: two processors each, as the kernel prints them (flags lines in full).
SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss \
ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid aperfmperf tsc_known_freq pni \
pclmulqdq ssse3 fma cx16 pdcm pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand \
hypervisor lahf_lm abm 3dnowprefetch invpcid_single ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 avx2 \
smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl \
xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd ida arat avx512vbmi umip pku ospke waitpkg avx512_vbmi2 \
gfni vaes vpclmulqdq avx512_vnni avx512_bitalg tme avx512_vpopcntdq rdpid cldemote movdiri movdir64b md_clear \
serialize amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities
bogomips\t: 4800.00

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu vme de pse tsc avx2 avx512f avx512_bf16
"""

EPYC_ROME = """\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht \
syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid tsc_known_freq \
pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm \
cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibrs ibpb stibp vmmcall fsgsbase \
tsc_adjust bmi1 avx2 smep bmi2 rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 clzero xsaveerptr arat \
npt nrip_save umip rdpid
bogomips\t: 4499.99

processor\t: 1
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme de pse tsc fma avx f16c avx2
"""

GRAVITON3 = """\
processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop \
sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1

processor\t: 1
Features\t: fp asimd
"""

GRAVITON2 = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""

# Skylake-SP: AVX-512 (F/CD/BW/DQ/VL) without VNNI or BF16; an old Xeon with neither AVX2 nor AVX-512
SKYLAKE = "model name\t: Intel(R) Xeon(R) Platinum 8175M\nflags\t\t: sse4_2 avx fma f16c avx2 " + " ".join(
    ("avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl")
)
WESTMERE = "model name\t: Intel(R) Xeon(R) CPU X5650\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt"


def test_an_intel_avx512_bf16_cpu_computes_bfloat16_natively():
    isa = from_cpuinfo(SAPPHIRE_RAPIDS)
    assert (isa.arch, isa.name, isa.model) == ("x86_64", "avx512_bf16", "Intel(R) Xeon(R) Platinum 8488C")
    assert isa.native_bfloat16 and isa.onednn_bfloat16 and isa.vnni
    assert {"avx512bw", "amx_tile", "avx512_bf16"} <= isa.flags
    assert "fpu vme" not in isa.flags and "bogomips" not in " ".join(isa.flags)  # one flag per item, first CPU only
    assert isa.describe().startswith("avx512_bf16 (Intel(R) Xeon(R) Platinum 8488C; avx2 fma f16c avx512f")
    assert "amx_bf16 amx_tile" in isa.describe() and "; native bfloat16)" in isa.describe()


def test_an_amd_avx2_cpu_has_neither_avx512_nor_bfloat16():
    isa = from_cpuinfo(EPYC_ROME)
    assert (isa.arch, isa.name, isa.model) == ("x86_64", "avx2", "AMD EPYC 7B12")
    assert not isa.native_bfloat16 and not isa.onednn_bfloat16 and not isa.vnni
    assert isa.describe() == "avx2 (AMD EPYC 7B12; avx2 fma f16c; no native bfloat16)"


def test_avx512_without_bf16_runs_onednn_bfloat16_but_not_natively():
    isa = from_cpuinfo(SKYLAKE)
    assert (isa.name, isa.native_bfloat16, isa.onednn_bfloat16, isa.vnni) == ("avx512", False, True, False)


def test_a_cpu_below_x86_64_v3_is_named_by_the_baseline():
    isa = from_cpuinfo(WESTMERE)
    assert (isa.name, isa.native_bfloat16, isa.onednn_bfloat16) == ("x86-64", False, False)


def test_aarch64_features_are_read_with_bf16_and_dot_products():
    graviton3, graviton2 = from_cpuinfo(GRAVITON3), from_cpuinfo(GRAVITON2)
    assert (graviton3.arch, graviton3.name, graviton3.native_bfloat16, graviton3.vnni) == (
        "aarch64",
        "neon_bf16",
        True,
        True,
    )
    assert {"sve", "i8mm", "asimd"} <= graviton3.flags
    assert graviton3.describe() == "neon_bf16 (aarch64; asimd asimddp i8mm bf16 sve; native bfloat16)"
    assert (graviton2.name, graviton2.native_bfloat16, graviton2.onednn_bfloat16) == ("neon", False, False)


def test_an_unreadable_or_foreign_cpu_assumes_nothing():
    for isa in (from_cpuinfo(""), from_cpuinfo(EPYC_ROME, arch="riscv64")):
        assert (isa.arch, isa.name, isa.native_bfloat16, isa.flags) == ("unknown", "generic", False, frozenset())
    assert from_cpuinfo("", arch="x86_64").name == "x86-64"  # x86 but no flags read: the baseline only


def test_the_avx2_cap_drops_every_extension_above_x86_64_v3():
    isa = capped(from_cpuinfo(SAPPHIRE_RAPIDS), "avx2")
    assert (isa.name, isa.native_bfloat16, isa.onednn_bfloat16, isa.vnni) == ("avx2", False, False, False)
    assert not any(flag.startswith(("avx512", "amx", "avx_")) for flag in isa.flags)
    assert {"avx2", "fma", "f16c", "bmi2"} <= isa.flags
    assert isa.capped_from == "avx512_bf16" and isa.describe().endswith("capped from avx512_bf16 by TOKENYARD_CPU_ISA)")


def test_the_avx512_cap_keeps_avx512_and_vnni_but_not_bfloat16():
    isa = capped(from_cpuinfo(SAPPHIRE_RAPIDS), "AVX512")  # case does not matter
    assert (isa.name, isa.native_bfloat16, isa.onednn_bfloat16, isa.vnni) == ("avx512", False, True, True)
    assert not isa.flags & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"}


def test_the_neon_cap_drops_bf16_and_sve():
    isa = capped(from_cpuinfo(GRAVITON3), "neon")
    assert (isa.name, isa.native_bfloat16, isa.vnni) == ("neon", False, True)
    assert not isa.flags & {"bf16", "sve", "svebf16", "svei8mm"}


def test_native_or_no_cap_or_a_cap_at_the_cpus_own_level_changes_nothing():
    rome = from_cpuinfo(EPYC_ROME)
    for cap in (None, "", "native", " Native "):
        assert capped(rome, cap) is rome
    assert capped(rome, "avx2") is rome


def test_an_unknown_cap_is_refused_naming_the_allowed_values():
    with pytest.raises(
        ValueError, match=r"TOKENYARD_CPU_ISA='avx3' is invalid: must be one of native, avx2, avx512, neon"
    ):
        capped(from_cpuinfo(SAPPHIRE_RAPIDS), "avx3")


@pytest.mark.parametrize(
    ("cpuinfo", "cap", "message"),
    [
        (
            EPYC_ROME,
            "avx512",
            r"avx512 asks for more than this CPU has: it is avx2 \(AMD EPYC 7B12.*allowed here: native, avx2$",
        ),
        (WESTMERE, "avx2", r"avx2 asks for more than this CPU has: it is x86-64 .*allowed here: native$"),
        (GRAVITON3, "avx2", r"avx2 asks for more than this CPU has: it is neon_bf16 .*allowed here: native, neon$"),
        (SAPPHIRE_RAPIDS, "neon", r"neon asks for more than this CPU has: .*allowed here: native, avx2, avx512$"),
    ],
)
def test_a_cap_above_what_the_cpu_has_is_refused_with_what_it_has(cpuinfo, cap, message):
    with pytest.raises(ValueError, match=message):
        capped(from_cpuinfo(cpuinfo), cap)


@pytest.fixture
def isa_env(monkeypatch):
    """Sets TOKENYARD_CPU_ISA for this test; cpu_isa() reads it afresh, and again after the test."""

    def set_cap(value: str) -> None:
        monkeypatch.setenv(ISA_ENV, value)
        cpu_isa.cache_clear()

    yield set_cap
    monkeypatch.undo()
    cpu_isa.cache_clear()


def test_cpu_isa_reads_this_machines_cpuinfo_and_the_env_cap(isa_env):
    isa_env("native")
    native = cpu_isa()
    assert native == capped(from_cpuinfo(Path("/proc/cpuinfo").read_text(), native.arch), None)
    assert cpu_isa() is native  # cached
    isa_env("bogus")
    with pytest.raises(ValueError, match=r"TOKENYARD_CPU_ISA='bogus' is invalid"):
        cpu_isa()


# ---- the dtype policy ----

CPU = torch.device("cpu")


def emulate(monkeypatch, isa: CpuIsa, onednn_bf16: bool) -> None:
    """The policy's two sources of truth, as on a machine with this ISA (oneDNN's answer is its own: it follows
    ONEDNN_MAX_CPU_ISA, which a test cannot change once torch has started)."""
    monkeypatch.setattr(weights, "cpu_isa", lambda: isa)
    monkeypatch.setattr(weights, "_onednn_bfloat16", lambda: onednn_bf16)


@pytest.mark.parametrize(
    ("cpuinfo", "cap", "onednn_bf16", "auto", "prepack_bf16"),
    [
        (SAPPHIRE_RAPIDS, None, True, torch.bfloat16, True),
        (SAPPHIRE_RAPIDS, "avx512", True, torch.float32, True),  # bf16 through conversions: not faster than fp32
        (SAPPHIRE_RAPIDS, "avx2", True, torch.float32, False),  # the cap binds even where oneDNN could do more
        (SAPPHIRE_RAPIDS, None, False, torch.float32, False),  # and oneDNN's own cap (ONEDNN_MAX_CPU_ISA) too
        (EPYC_ROME, None, False, torch.float32, False),
        (GRAVITON3, None, True, torch.bfloat16, True),
        (GRAVITON2, None, False, torch.float32, False),
    ],
)
def test_auto_is_bfloat16_only_where_the_cpu_computes_it_natively(
    monkeypatch, cpuinfo, cap, onednn_bf16, auto, prepack_bf16
):
    emulate(monkeypatch, capped(from_cpuinfo(cpuinfo), cap), onednn_bf16)
    assert resolve_dtype("auto", None, CPU) == auto
    assert resolve_dtype("auto", torch.bfloat16, CPU) == auto  # the checkpoint's own dtype does not decide on CPU
    assert can_prepack(torch.bfloat16) == prepack_bf16
    assert can_prepack(torch.float32) == torch.backends.mkldnn.is_available()
    assert not can_prepack(torch.float16)


def test_explicit_bfloat16_without_onednn_bf16_is_served_and_says_it_is_slow(monkeypatch, caplog):
    emulate(monkeypatch, from_cpuinfo(EPYC_ROME), onednn_bf16=False)
    with caplog.at_level("WARNING", logger=weights.__name__):
        assert resolve_dtype("bfloat16", None, CPU) == torch.bfloat16
    [record] = caplog.records
    assert "avx2 (AMD EPYC 7B12; avx2 fma f16c; no native bfloat16)" in record.getMessage()
    assert "slower than float32" in record.getMessage()
    caplog.clear()
    emulate(monkeypatch, from_cpuinfo(SAPPHIRE_RAPIDS), onednn_bf16=True)
    assert resolve_dtype("bfloat16", None, CPU) == torch.bfloat16 and not caplog.records
    assert resolve_dtype("float32", None, CPU) == torch.float32


def test_float16_is_refused_on_every_cpu(monkeypatch):
    emulate(monkeypatch, from_cpuinfo(SAPPHIRE_RAPIDS), onednn_bf16=True)
    with pytest.raises(ValueError, match=r"dtype='float16' is not served on CPU"):
        resolve_dtype("float16", None, CPU)


BF16_SETTINGS = dict(kv_cache_memory_bytes=4 << 20, max_model_len=128)
BF16_PROMPTS = ["The quick brown fox", "1, 2, 3,", "Once upon a time, in a land far away, there lived a"]
BF16_PARAMS = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=2)
# bfloat16 keeps 8 bits of mantissa: on the tiny model its logprobs move by up to ~0.11 from float32's (measured)
BF16_LOGPROB_ATOL = 0.25


def assert_close_to_float32(ours: list[tuple[list[int], list[dict[int, float]]]], model_dir) -> None:
    """Each sequence's tokens are float32's up to a step where float32 itself nearly tied (its top two within
    BF16_LOGPROB_ATOL), and until then both give float32's top tokens the same logprobs within BF16_LOGPROB_ATOL."""
    reference = LLM(str(model_dir), dtype="float32", **BF16_SETTINGS).generate(BF16_PROMPTS, BF16_PARAMS)
    for (token_ids, logprobs), ref in zip(ours, reference, strict=True):
        ref_ids, ref_logprobs = ref.outputs[0].token_ids, ref.outputs[0].logprobs
        for step, (token, expected) in enumerate(zip(token_ids, ref_ids, strict=True)):
            for top, value in ref_logprobs[step].items():
                if top in logprobs[step]:
                    assert abs(logprobs[step][top] - value) <= BF16_LOGPROB_ATOL, f"step {step}: token {top}"
            if token != expected:
                first, second = sorted(ref_logprobs[step].values(), reverse=True)[:2]
                assert first - second < BF16_LOGPROB_ATOL, f"step {step} flipped with a margin of {first - second}"
                break


def test_explicit_bfloat16_loads_and_computes_where_onednn_cannot_prepack_it(monkeypatch, tiny_llama_dir):
    """The engine on a CPU whose oneDNN has no bf16 path: the linears stay plain (the prepack would raise
    mid-load there) and compute what float32 computes, within bfloat16's rounding."""
    emulate(monkeypatch, from_cpuinfo(EPYC_ROME), onednn_bf16=False)
    llm = LLM(str(tiny_llama_dir), dtype="bfloat16", **BF16_SETTINGS)
    runner = llm.engine.executor.runner
    assert runner.loaded.dtype == torch.bfloat16
    linears = [m for m in runner.model.modules() if isinstance(m, weights.Linear) and m.quantized is None]
    assert linears and all(m.packed_weight is None and m.weight.dtype == torch.bfloat16 for m in linears)
    outs = [o.outputs[0] for o in llm.generate(BF16_PROMPTS, BF16_PARAMS)]
    assert_close_to_float32([(o.token_ids, o.logprobs) for o in outs], tiny_llama_dir)


AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", ISA_ENV: "avx2"}
AVX2_SCRIPT = """
import json, sys
import torch
from tokenyard.runtime import LLM, SamplingParams
assert not torch.ops.mkldnn._is_mkldnn_bf16_supported()  # oneDNN is capped: its bf16 prepack would raise
for dtype in ("auto", "bfloat16"):
    llm = LLM(sys.argv[1], dtype=dtype, kv_cache_memory_bytes=4 << 20, max_model_len=128)
    runner = llm.engine.executor.runner
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=2)
    outs = [o.outputs[0] for o in llm.generate(json.loads(sys.argv[2]), params)]
    packed = sum(getattr(m, "packed_weight", None) is not None for m in runner.model.modules())
    print(json.dumps([str(runner.loaded.dtype), packed, [(o.token_ids, o.logprobs) for o in outs]]))
"""


def native_isa() -> CpuIsa:
    """This machine's CPU, whatever TOKENYARD_CPU_ISA says."""
    return from_cpuinfo(Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else "")


@pytest.mark.skipif(
    native_isa().name not in ("avx2", "avx512", "avx512_bf16"),
    reason="emulates an AVX2 CPU through PyTorch's and oneDNN's own caps: needs an x86 CPU with AVX2 or more",
)
def test_on_an_emulated_avx2_cpu_auto_is_float32_and_bfloat16_loads_and_computes(tiny_llama_dir):
    """The whole engine in a process whose PyTorch, oneDNN and tokenyard all believe the CPU is AVX2-only (the
    caps must be set before torch starts): ``auto`` loads float32 with prepacked linears, an explicit bfloat16
    loads (plain linears) instead of crashing in oneDNN mid-load, and computes what float32 computes."""
    env = {**os.environ, **AVX2_ENV}
    command = [sys.executable, "-c", AVX2_SCRIPT, str(tiny_llama_dir), json.dumps(BF16_PROMPTS)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    auto, bf16 = (json.loads(line) for line in done.stdout.splitlines()[-2:])
    assert auto[0] == "torch.float32" and auto[1] > 0
    assert bf16[:2] == ["torch.bfloat16", 0]
    assert "served through PyTorch's plain kernels" in done.stderr
    outs = [(ids, [{int(t): v for t, v in step.items()} for step in logprobs]) for ids, logprobs in bf16[2]]
    assert_close_to_float32(outs, tiny_llama_dir)
