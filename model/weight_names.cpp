#include "model/weight_names.h"

#include <map>
#include <mutex>

namespace mlaforge {

std::string tp_split_name(TpSplit split) {
  switch (split) {
    case TpSplit::replicated: return "replicated";
    case TpSplit::column: return "column";
    case TpSplit::row: return "row";
    case TpSplit::vocab: return "vocab";
  }
  return "?";
}

std::vector<WeightName> weight_table(const ModelConfig& c) {
  using S = TpSplit;
  std::vector<WeightName> t;
  auto add = [&](const std::string& hf, const std::string& ours, S split) { t.push_back({hf, ours, split}); };
  const std::string L = "model.layers.{i}.";
  const std::string l = "layers.{i}.";

  add("model.embed_tokens.weight", "embed.weight", S::vocab);
  add("model.norm.weight", "norm.weight", S::replicated);
  if (!c.tie_word_embeddings) add("lm_head.weight", "lm_head.weight", S::vocab);

  // Norms around attention and MLP.
  add(L + "input_layernorm.weight", l + "attn_norm.weight", S::replicated);
  if (c.family == Family::gemma2) {
    add(L + "post_attention_layernorm.weight", l + "attn_post_norm.weight", S::replicated);
    add(L + "pre_feedforward_layernorm.weight", l + "mlp_norm.weight", S::replicated);
    add(L + "post_feedforward_layernorm.weight", l + "mlp_post_norm.weight", S::replicated);
  } else {
    add(L + "post_attention_layernorm.weight", l + "mlp_norm.weight", S::replicated);
  }

  // Attention.
  const std::string A = L + "self_attn.";
  const std::string a = l + "attn.";
  if (c.is_mla()) {
    if (c.q_lora_rank > 0) {
      add(A + "q_a_proj.weight", a + "wq_a.weight", S::replicated);
      add(A + "q_a_layernorm.weight", a + "q_a_norm.weight", S::replicated);
      add(A + "q_b_proj.weight", a + "wq_b.weight", S::column);
    } else {
      add(A + "q_proj.weight", a + "wq.weight", S::column);
    }
    add(A + "kv_a_proj_with_mqa.weight", a + "wkv_a.weight", S::replicated);
    add(A + "kv_a_layernorm.weight", a + "kv_a_norm.weight", S::replicated);
    add(A + "kv_b_proj.weight", a + "wkv_b.weight", S::column);
    add(A + "o_proj.weight", a + "wo.weight", S::row);
    if (c.attention_bias) {  // transformers' DeepseekV3Attention: the down-projections and o_proj only
      if (c.q_lora_rank > 0) add(A + "q_a_proj.bias", a + "wq_a.bias", S::replicated);
      add(A + "kv_a_proj_with_mqa.bias", a + "wkv_a.bias", S::replicated);
      add(A + "o_proj.bias", a + "wo.bias", S::replicated);
    }
  } else {
    add(A + "q_proj.weight", a + "wq.weight", S::column);
    add(A + "k_proj.weight", a + "wk.weight", S::column);
    add(A + "v_proj.weight", a + "wv.weight", S::column);
    add(A + "o_proj.weight", a + "wo.weight", S::row);
    if (c.attention_bias) {
      add(A + "q_proj.bias", a + "wq.bias", S::column);
      add(A + "k_proj.bias", a + "wk.bias", S::column);
      add(A + "v_proj.bias", a + "wv.bias", S::column);
    }
    if (c.o_proj_bias) add(A + "o_proj.bias", a + "wo.bias", S::replicated);
  }

  // MLP: dense SwiGLU/GeGLU or Mixtral's sparse experts. Under tensor parallelism the experts are
  // replicated (every TP rank runs the whole MoE block on its full input: no communication, full
  // gradients; parallel/README.md); splitting them would also need the router's gradient reduced.
  if (c.is_moe()) {
    const std::string M = L + "block_sparse_moe.";
    const std::string m = l + "moe.";
    add(M + "gate.weight", m + "router.weight", S::replicated);
    add(M + "experts.{e}.w1.weight", m + "experts.{e}.w_gate.weight", S::replicated);
    add(M + "experts.{e}.w3.weight", m + "experts.{e}.w_up.weight", S::replicated);
    add(M + "experts.{e}.w2.weight", m + "experts.{e}.w_down.weight", S::replicated);
  } else {
    add(L + "mlp.gate_proj.weight", l + "mlp.w_gate.weight", S::column);
    add(L + "mlp.up_proj.weight", l + "mlp.w_up.weight", S::column);
    add(L + "mlp.down_proj.weight", l + "mlp.w_down.weight", S::row);
    if (c.mlp_bias) {
      add(L + "mlp.gate_proj.bias", l + "mlp.w_gate.bias", S::column);
      add(L + "mlp.up_proj.bias", l + "mlp.w_up.bias", S::column);
      add(L + "mlp.down_proj.bias", l + "mlp.w_down.bias", S::replicated);
    }
  }
  return t;
}

namespace {

std::string substitute(std::string pattern, const std::string& key, int64_t value) {
  const std::string token = "{" + key + "}";
  for (size_t pos = pattern.find(token); pos != std::string::npos; pos = pattern.find(token))
    pattern.replace(pos, token.size(), std::to_string(value));
  return pattern;
}

}  // namespace

std::vector<WeightName> expand_weight_names(const ModelConfig& c) {
  std::vector<WeightName> out;
  for (const WeightName& row : weight_table(c)) {
    const bool per_layer = row.hf.find("{i}") != std::string::npos;
    const bool per_expert = row.hf.find("{e}") != std::string::npos;
    const int64_t layers = per_layer ? c.num_hidden_layers : 1;
    const int64_t experts = per_expert ? c.num_local_experts : 1;
    for (int64_t i = 0; i < layers; ++i) {
      for (int64_t e = 0; e < experts; ++e) {
        WeightName w = row;
        w.hf = substitute(substitute(w.hf, "i", i), "e", e);
        w.ours = substitute(substitute(w.ours, "i", i), "e", e);
        out.push_back(std::move(w));
      }
    }
  }
  return out;
}

std::optional<std::string> hf_to_ours(const ModelConfig& c, const std::string& hf_name) {
  for (const WeightName& w : expand_weight_names(c))
    if (w.hf == hf_name) return w.ours;
  return std::nullopt;
}

std::optional<std::string> ours_to_hf(const ModelConfig& c, const std::string& our_name) {
  for (const WeightName& w : expand_weight_names(c))
    if (w.ours == our_name) return w.hf;
  return std::nullopt;
}

}  // namespace mlaforge
