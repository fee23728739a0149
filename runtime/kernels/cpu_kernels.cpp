// Hand-written SIMD kernels for batch-1 (and small-batch) CPU decoding, written once with Google Highway
// (simd/) and compiled for every instruction set it targets: AVX2 (x86-64-v3), AVX-512, NEON and SVE; each
// call runs the best one the CPU has (see simd/targets.h).
//
// Decoding a small model on a CPU is bound by two things: streaming the weights from memory once per
// token, and the fixed cost of the ~25 small tensor ops per layer around the matmuls. PyTorch's packed
// quantized kernels stream int8 and int4 weights well below memory bandwidth at M=1, and each eager op
// costs microseconds of dispatch. These kernels do both jobs in one pass each:
//
// * quantized_linear: y = x @ W.T for W[n, k] = code[n, k] * scale[n, g] + min[n, g] (g = k / group),
//   computed as sum_g scale * (codes . x) + sum_g min * sum(x in g), so codes are converted once per
//   weight and multiplied by every row of x while they sit in registers. 8-bit codes are stored row by
//   row as int8 (code - 128, folded into min). 4-bit codes are stored in tiles of 16 rows, so that a
//   vector's lanes are 16 rows and no horizontal sums are needed: per tile, blocks of 8 columns, 64 bytes a
//   block, whose 16-bit word 2r + p holds in nibble q the code of row r at column 8b + 2q + p; their scales
//   and mins as (tiles, groups, 16).
// * rms_norm / add_rms_norm, rotary, silu_and_mul, and attention of decode rows (and the drafts they
//   verify) over the paged KV cache: one call where eager PyTorch needs five to fifteen.
//
// Everything accumulates in float32; bfloat16 results are rounded once, at the end.
//
// The code: simd/ (the SIMD kernels on raw pointers, no PyTorch), and beside this file their tensor-facing
// sides (checks, threads): quantized_linear.cpp, small_ops.cpp, attention.cpp, and decode_step.cpp (a decode
// step's layers in one call); this file binds them into one Python module.
#include <torch/extension.h>

#include "common.h"
#include "simd/quantized_linear.h"
#include "simd/targets.h"

namespace tokenyard {
void bind_decode_step(pybind11::module& m);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // Every kernel lets go of the GIL while it computes, as torch's own ops do: a prefill's matmuls hold it
  // for tens of milliseconds otherwise, and the server's event loop stalls behind them.
  const auto nogil = pybind11::call_guard<pybind11::gil_scoped_release>();
  m.def("quantized_linear", &tokenyard::quantized_linear, "y = x @ W.T for a groupwise 4- or 8-bit weight", nogil);
  m.def("rms_norm", &tokenyard::rms_norm, "RMSNorm", nogil);
  m.def("add_rms_norm", &tokenyard::add_rms_norm, "(RMSNorm(residual + x), residual + x)", nogil);
  m.def("rotary_", &tokenyard::rotary_, "rotate-half rotary embedding of q and k, in place", nogil);
  m.def("silu_and_mul", &tokenyard::silu_and_mul, "silu(gate) * up", nogil);
  m.def("write_kv_cache", &tokenyard::write_kv_cache, "new keys and values into their cache slots", nogil);
  m.def("decode_attention", &tokenyard::decode_attention, "one query per row over its paged context", nogil);
  m.def("chunk_attention", &tokenyard::chunk_attention, "short query chunks over their paged context, causally",
        nogil);
  tokenyard::bind_decode_step(m);
  m.def("chosen_target", &tokenyard::simd::chosen_target, "the instruction set the kernels run on now");
  m.def("compiled_targets", &tokenyard::simd::compiled_targets, "every instruction set compiled in, best first");
  m.def("cap_targets", &tokenyard::simd::cap_targets, "run on no instruction set above this: avx2, avx512 or native");
  m.def("chosen_target_is_native", &tokenyard::simd::chosen_target_is_native,
        "whether the kernels run on an instruction set they are written for (AVX2 or better, NEON or better)");
  m.def("int8_dot_for_rows", &tokenyard::simd::quantized_uses_int8_dot,
        "whether a matmul of bits-bit codes and this many rows of x takes int8 dot products (on the target now)", pybind11::arg("bits"),
        pybind11::arg("rows"));
  m.def("bf16_dot_allowed", &tokenyard::simd::bf16_dot_allowed, "whether AVX512-BF16 dot products are used");
}
