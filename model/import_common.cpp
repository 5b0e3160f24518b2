#include "model/import_common.h"

#include <sstream>

#include "core/error.h"

namespace mlaforge {

torch::Tensor interleaved_to_rotate_half(const torch::Tensor& w, int64_t n_heads, const std::string& name) {
  MLA_CHECK(w.dim() == 1 || w.dim() == 2, name, ": expected a 1-D or 2-D tensor to permute, got ", w.dim(), "-D");
  const int64_t rows = w.size(0);
  MLA_CHECK(n_heads > 0 && rows % n_heads == 0 && (rows / n_heads) % 2 == 0, name, ": ", rows,
            " rows cannot be split into ", n_heads, " heads of even size");
  const int64_t half = rows / n_heads / 2;
  if (w.dim() == 1) return w.reshape({n_heads, half, 2}).transpose(1, 2).reshape({rows}).contiguous();
  const int64_t cols = w.size(1);
  return w.reshape({n_heads, half, 2, cols}).transpose(1, 2).reshape({rows, cols}).contiguous();
}

std::map<std::string, std::vector<int64_t>> expected_dense_shapes(const ModelConfig& c) {
  std::map<std::string, std::vector<int64_t>> shapes;
  const int64_t D = c.hidden_size, V = c.vocab_size, F = c.intermediate_size;
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  shapes["model.embed_tokens.weight"] = {V, D};
  shapes["model.norm.weight"] = {D};
  if (!c.tie_word_embeddings) shapes["lm_head.weight"] = {V, D};
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    shapes[p + "input_layernorm.weight"] = {D};
    shapes[p + "post_attention_layernorm.weight"] = {D};
    shapes[p + "self_attn.q_proj.weight"] = {q, D};
    shapes[p + "self_attn.k_proj.weight"] = {kv, D};
    shapes[p + "self_attn.v_proj.weight"] = {kv, D};
    shapes[p + "self_attn.o_proj.weight"] = {D, q};
    if (c.attention_bias) {
      shapes[p + "self_attn.q_proj.bias"] = {q};
      shapes[p + "self_attn.k_proj.bias"] = {kv};
      shapes[p + "self_attn.v_proj.bias"] = {kv};
    }
    if (c.o_proj_bias) shapes[p + "self_attn.o_proj.bias"] = {D};
    shapes[p + "mlp.gate_proj.weight"] = {F, D};
    shapes[p + "mlp.up_proj.weight"] = {F, D};
    shapes[p + "mlp.down_proj.weight"] = {D, F};
    if (c.mlp_bias) {
      shapes[p + "mlp.gate_proj.bias"] = {F};
      shapes[p + "mlp.up_proj.bias"] = {F};
      shapes[p + "mlp.down_proj.bias"] = {D};
    }
  }
  return shapes;
}

namespace {
std::string shape_string(at::IntArrayRef shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}
}  // namespace

void check_state_dict(const StateDict& weights, const std::map<std::string, std::vector<int64_t>>& expected,
                      const std::string& source) {
  for (const auto& [name, shape] : expected) {
    auto it = weights.find(name);
    MLA_CHECK(it != weights.end(), source, ": tensor ", name, " is missing");
    MLA_CHECK(it->second.sizes() == at::IntArrayRef(shape), source, ": tensor ", name, " has shape ",
              shape_string(it->second.sizes()), ", the config implies ", shape_string(shape));
  }
  for (const auto& [name, tensor] : weights)
    MLA_CHECK(expected.count(name), source, ": unexpected tensor ", name, " for this configuration");
}

}  // namespace mlaforge
