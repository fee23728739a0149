// The layers of a llama-family model for one decode step in a single native call (built by
// runtime/engine/cpu_decode.py, which says when it serves): the step's ~360 kernel calls without the
// interpreter between them. From Python a call costs ~1.5 us before it does any work, and a layer made ~12 of
// them plus the wrappers around each linear: ~0.5 ms of a 4 ms int4 token of SmolLM2-135M.
#include <torch/extension.h>

#include "common.h"

namespace py = pybind11;

namespace tokenyard {
namespace {

// A linear layer as the step runs it: the groupwise kernel on its codes, or the layer's own Python forward
// for any other weight (dense ones: their matmul takes ~100x longer than the call into Python).
struct Projection {
  at::Tensor codes, scales, mins;
  int64_t bits = 0, group = 0, out_features = 0;
  std::optional<at::Tensor> bias;
  py::object forward;

  at::Tensor operator()(const at::Tensor& x) const {
    if (bits == 0) {
      py::gil_scoped_acquire hold;
      return forward(x).cast<at::Tensor>();
    }
    at::Tensor y = quantized_linear(x, codes, scales, mins, bits, group, out_features);
    return bias ? y.add_(*bias) : y;
  }
};

struct Layer {
  at::Tensor input_norm, post_norm;
  Projection qkv, o, gate_up, down;
};

class DecodeLayers {
 public:
  DecodeLayers(std::vector<Layer> layers, at::Tensor final_norm, int64_t heads, int64_t kv_heads, int64_t dim,
               double scale, double eps)
      : layers_(std::move(layers)), final_norm_(std::move(final_norm)), heads_(heads), kv_heads_(kv_heads),
        dim_(dim), scale_(scale), eps_(eps) {}

  // x: the step's embedded tokens (rows, hidden); cos, sin: their rotary angles; kv_caches: one per layer;
  // context: (slots, lengths) for rows that each decode one token, or (slots, context lengths, query starts)
  // for short chunks (decodes with drafts). Returns the final norm's output, as the model's forward does.
  at::Tensor forward(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin, std::vector<at::Tensor> kv_caches,
                     const at::Tensor& slot_mapping, const std::vector<at::Tensor>& context) const {
    TORCH_CHECK(kv_caches.size() == layers_.size(), "one KV cache per layer: ", layers_.size(), ", got ",
                kv_caches.size());
    TORCH_CHECK(context.size() == 2 || context.size() == 3, "context: (slots, lengths) or (slots, lengths, starts)");
    py::gil_scoped_release release;  // the server's threads run while the step computes
    const int64_t q_end = heads_ * dim_, k_end = (heads_ + kv_heads_) * dim_;
    at::Tensor hidden, residual;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const Layer& layer = layers_[i];
      // the residual add of the layer before is fused into this layer's first norm
      if (i == 0)
        hidden = rms_norm(x, layer.input_norm, eps_), residual = x;
      else
        std::tie(hidden, residual) = add_rms_norm(x, residual, layer.input_norm, eps_);
      at::Tensor qkv = layer.qkv(hidden);
      rotary_(qkv, cos, sin, heads_, kv_heads_, dim_);
      const at::Tensor q = qkv.slice(1, 0, q_end).view({-1, heads_, dim_});
      write_kv_cache(kv_caches[i], slot_mapping, qkv.slice(1, q_end, k_end).view({-1, kv_heads_, dim_}),
                     qkv.slice(1, k_end).view({-1, kv_heads_, dim_}));
      const at::Tensor attended =
          context.size() == 2 ? decode_attention(q, kv_caches[i], context[0], context[1], scale_)
                              : chunk_attention(q, kv_caches[i], context[0], context[1], context[2], scale_);
      std::tie(hidden, residual) = add_rms_norm(layer.o(attended.flatten(1)), residual, layer.post_norm, eps_);
      x = layer.down(silu_and_mul(layer.gate_up(hidden)));
    }
    return std::get<0>(add_rms_norm(x, residual, final_norm_, eps_));
  }

 private:
  std::vector<Layer> layers_;
  at::Tensor final_norm_;
  int64_t heads_, kv_heads_, dim_;
  double scale_, eps_;
};

}  // namespace

void bind_decode_step(py::module& m) {
  py::class_<Projection>(m, "Projection", "a linear layer of the native decode step")
      .def_static(
          "quantized",
          [](at::Tensor codes, at::Tensor scales, at::Tensor mins, int64_t bits, int64_t group, int64_t out_features,
             std::optional<at::Tensor> bias) {
            return Projection{std::move(codes), std::move(scales), std::move(mins), bits, group, out_features,
                              std::move(bias), {}};
          },
          "the groupwise kernel on these codes (see quantized_linear), plus a bias if given")
      .def_static(
          "python", [](py::object forward) { return Projection{{}, {}, {}, 0, 0, 0, std::nullopt, std::move(forward)}; },
          "a call back into Python: forward(x) -> y");
  py::class_<Layer>(m, "Layer", "one decoder layer's weights")
      .def(py::init<at::Tensor, at::Tensor, Projection, Projection, Projection, Projection>(), py::arg("input_norm"),
           py::arg("post_norm"), py::arg("qkv"), py::arg("o"), py::arg("gate_up"), py::arg("down"));
  py::class_<DecodeLayers>(m, "DecodeLayers", "a llama-family model's layers for decode steps, in one call")
      .def(py::init<std::vector<Layer>, at::Tensor, int64_t, int64_t, int64_t, double, double>(), py::arg("layers"),
           py::arg("final_norm"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("scale"),
           py::arg("eps"))
      .def("forward", &DecodeLayers::forward, py::arg("x"), py::arg("cos"), py::arg("sin"), py::arg("kv_caches"),
           py::arg("slot_mapping"), py::arg("context"));
}

}  // namespace tokenyard
