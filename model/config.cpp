#include "model/config.h"

#include <cmath>

#include "core/error.h"
#include "core/mmap_file.h"

namespace mlaforge {
namespace {

using json = nlohmann::json;

// Typed field access with errors that name the file and the field.
template <typename T>
T required(const json& j, const char* key, const std::string& source) {
  MLA_CHECK(j.contains(key) && !j.at(key).is_null(), source, ": missing required field '", key, "'");
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    fail(source, ": field '", key, "' has the wrong type (", j.at(key).type_name(), ")");
  }
}

template <typename T>
T optional_field(const json& j, const char* key, T fallback, const std::string& source) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    fail(source, ": field '", key, "' has the wrong type (", j.at(key).type_name(), ")");
  }
}

std::optional<double> optional_double(const json& j, const char* key, const std::string& source) {
  if (!j.contains(key) || j.at(key).is_null()) return std::nullopt;
  MLA_CHECK(j.at(key).is_number(), source, ": field '", key, "' must be a number");
  return j.at(key).get<double>();
}

Family parse_family(const std::string& model_type, const std::string& source) {
  if (model_type == "llama") return Family::llama;
  if (model_type == "qwen2") return Family::qwen2;
  if (model_type == "mistral") return Family::mistral;
  if (model_type == "mixtral") return Family::mixtral;
  if (model_type == "gemma2") return Family::gemma2;
  if (model_type == "deepseek_v3") return Family::deepseek_v3;
  if (model_type == "qwen3" || model_type == "qwen3_moe")
    fail(source, ": model_type '", model_type,
         "' uses per-head QK-norm, which mlaforge does not support (supported: llama, qwen2, mistral, "
         "mixtral, gemma2, deepseek_v3)");
  fail(source, ": unsupported model_type '", model_type,
       "' (supported: llama, qwen2, mistral, mixtral, gemma2, deepseek_v3)");
}

RopeScaling parse_rope_scaling(const json& j, Family family, const std::string& source) {
  RopeScaling scaling;
  // transformers >= 4.x may also carry "rope_parameters"; prefer the classic field when present.
  const char* key = j.contains("rope_scaling") ? "rope_scaling" : "rope_parameters";
  if (!j.contains(key) || j.at(key).is_null()) return scaling;
  const json& r = j.at(key);
  MLA_CHECK(r.is_object(), source, ": '", key, "' must be an object or null");
  scaling.raw = r;
  std::string type = optional_field<std::string>(r, "rope_type", "", source);
  if (type.empty()) type = optional_field<std::string>(r, "type", "", source);
  const std::string field = std::string(key) + ".rope_type";
  if (type.empty() || type == "default") return scaling;
  if (type == "linear") {
    scaling.type = RopeScaling::Type::linear;
  } else if (type == "dynamic") {
    scaling.type = RopeScaling::Type::dynamic;
  } else if (type == "yarn") {
    scaling.type = RopeScaling::Type::yarn;
  } else if (type == "llama3") {
    scaling.type = RopeScaling::Type::llama3;
  } else {
    fail(source, ": ", field, " '", type, "' is not supported (supported: linear, dynamic, yarn, llama3)");
  }
  scaling.factor = required<double>(r, "factor", source + " (" + key + ")");
  MLA_CHECK(scaling.factor >= 1.0, source, ": ", key, ".factor must be >= 1, got ", scaling.factor);
  scaling.low_freq_factor = optional_field<double>(r, "low_freq_factor", 1.0, source);
  scaling.high_freq_factor = optional_field<double>(r, "high_freq_factor", 4.0, source);
  scaling.original_max_position_embeddings =
      optional_field<int64_t>(r, "original_max_position_embeddings", 0, source);
  scaling.beta_fast = optional_field<double>(r, "beta_fast", 32.0, source);
  scaling.beta_slow = optional_field<double>(r, "beta_slow", 1.0, source);
  scaling.attention_factor = optional_double(r, "attention_factor", source);
  scaling.mscale = optional_double(r, "mscale", source);
  scaling.mscale_all_dim = optional_double(r, "mscale_all_dim", source);
  if (scaling.type == RopeScaling::Type::llama3) {
    MLA_CHECK(scaling.original_max_position_embeddings > 0, source,
              ": llama3 rope_scaling needs original_max_position_embeddings");
    MLA_CHECK(scaling.high_freq_factor > scaling.low_freq_factor, source,
              ": llama3 rope_scaling needs high_freq_factor > low_freq_factor");
  }
  return scaling;
}

std::vector<int64_t> parse_token_ids(const json& j, const char* key, const std::string& source) {
  std::vector<int64_t> ids;
  if (!j.contains(key) || j.at(key).is_null()) return ids;
  const json& v = j.at(key);
  if (v.is_number_integer()) {
    ids.push_back(v.get<int64_t>());
  } else if (v.is_array()) {
    for (const json& e : v) {
      MLA_CHECK(e.is_number_integer(), source, ": '", key, "' must hold integers");
      ids.push_back(e.get<int64_t>());
    }
  } else {
    fail(source, ": '", key, "' must be an integer or a list of integers");
  }
  return ids;
}

// The MLA attention fields: a deepseek_v3 config, or a converted gemma2/mixtral marked
// "mlaforge_attention": "mla". In MLA mode attention_bias has DeepSeek's meaning (biases on the
// down-projections q_a_proj / kv_a_proj_with_mqa and on o_proj), not the GQA family's.
void parse_mla_attention(const json& j, ModelConfig& c, const std::string& source) {
  c.mla_attention = true;
  c.kv_lora_rank = required<int64_t>(j, "kv_lora_rank", source);
  c.q_lora_rank = optional_field<int64_t>(j, "q_lora_rank", 0, source);
  c.qk_rope_head_dim = required<int64_t>(j, "qk_rope_head_dim", source);
  c.qk_nope_head_dim = required<int64_t>(j, "qk_nope_head_dim", source);
  c.v_head_dim = required<int64_t>(j, "v_head_dim", source);
  c.head_dim = c.qk_nope_head_dim + c.qk_rope_head_dim;
  c.attention_bias = optional_field<bool>(j, "attention_bias", false, source);
  c.o_proj_bias = false;  // the GQA field; MLA's o_proj bias follows attention_bias
  c.rope_interleave = optional_field<bool>(j, "rope_interleave", true, source);
  c.latent_norm = optional_field<bool>(j, "mlaforge_latent_norm", true, source);
  if (j.contains("mlaforge_kv_lora_ranks") && !j["mlaforge_kv_lora_ranks"].is_null()) {
    const auto& ranks = j["mlaforge_kv_lora_ranks"];
    MLA_CHECK(ranks.is_array(), source, ": mlaforge_kv_lora_ranks must be a list of integers");
    for (const auto& r : ranks) {
      MLA_CHECK(r.is_number_integer(), source, ": mlaforge_kv_lora_ranks must be a list of integers");
      c.kv_lora_ranks.push_back(r.get<int64_t>());
    }
  }
}

// The mlaforge attention marker of a non-DeepSeek family: absent or "gqa" (the family's own attention),
// or "mla" (a TransMLA conversion that kept its family; gemma2 and mixtral only).
bool parse_attention_marker(const json& j, Family family, const std::string& source) {
  if (!j.contains("mlaforge_attention") || j.at("mlaforge_attention").is_null()) return false;
  MLA_CHECK(j.at("mlaforge_attention").is_string(), source, ": field 'mlaforge_attention' must be \"mla\" or \"gqa\"");
  const std::string kind = j.at("mlaforge_attention").get<std::string>();
  if (kind == "gqa") return false;
  MLA_CHECK(kind == "mla", source, ": field 'mlaforge_attention' must be \"mla\" or \"gqa\", got '", kind, "'");
  MLA_CHECK(family == Family::gemma2 || family == Family::mixtral, source, ": 'mlaforge_attention': \"mla\" is only "
            "defined for gemma2 and mixtral (a converted ", family_name(family), " model is written as deepseek_v3)");
  return true;
}

}  // namespace

std::string family_name(Family family) {
  switch (family) {
    case Family::llama: return "llama";
    case Family::qwen2: return "qwen2";
    case Family::mistral: return "mistral";
    case Family::mixtral: return "mixtral";
    case Family::gemma2: return "gemma2";
    case Family::deepseek_v3: return "deepseek_v3";
  }
  return "?";
}

std::string rope_scaling_name(RopeScaling::Type type) {
  switch (type) {
    case RopeScaling::Type::none: return "none";
    case RopeScaling::Type::linear: return "linear";
    case RopeScaling::Type::dynamic: return "dynamic";
    case RopeScaling::Type::yarn: return "yarn";
    case RopeScaling::Type::llama3: return "llama3";
  }
  return "?";
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  json j;
  try {
    j = json::parse(read_text_file(path));
  } catch (const json::parse_error& e) {
    fail(path, ": not valid JSON (", e.what(), ")");
  }
  return from_json(j, path);
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  MLA_CHECK(j.is_object(), source, ": config must be a JSON object");
  ModelConfig c;
  c.raw = j;
  c.model_type = required<std::string>(j, "model_type", source);
  c.family = parse_family(c.model_type, source);
  const Family f = c.family;

  c.vocab_size = required<int64_t>(j, "vocab_size", source);
  c.hidden_size = required<int64_t>(j, "hidden_size", source);
  c.intermediate_size = required<int64_t>(j, "intermediate_size", source);
  c.num_hidden_layers = required<int64_t>(j, "num_hidden_layers", source);
  c.num_attention_heads = required<int64_t>(j, "num_attention_heads", source);
  c.num_key_value_heads = optional_field<int64_t>(j, "num_key_value_heads", c.num_attention_heads, source);
  c.max_position_embeddings = optional_field<int64_t>(j, "max_position_embeddings", 2048, source);
  c.rms_norm_eps = optional_field<double>(j, "rms_norm_eps", 1e-6, source);
  c.rope_theta = optional_field<double>(j, "rope_theta", 10000.0, source);
  if (!j.contains("rope_theta") && j.contains("rope_parameters") && j["rope_parameters"].is_object())
    c.rope_theta = optional_field<double>(j["rope_parameters"], "rope_theta", c.rope_theta, source);
  c.rope_scaling = parse_rope_scaling(j, f, source);
  c.tie_word_embeddings = optional_field<bool>(j, "tie_word_embeddings", f == Family::gemma2, source);
  c.torch_dtype = optional_field<std::string>(j, "torch_dtype", optional_field<std::string>(j, "dtype", "float32", source), source);

  const int64_t default_head_dim = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  c.head_dim = optional_field<int64_t>(j, "head_dim", default_head_dim, source);

  switch (f) {
    case Family::llama:
      c.attention_bias = optional_field<bool>(j, "attention_bias", false, source);
      c.o_proj_bias = c.attention_bias;
      c.mlp_bias = optional_field<bool>(j, "mlp_bias", false, source);
      c.hidden_act = optional_field<std::string>(j, "hidden_act", "silu", source);
      break;
    case Family::qwen2: {
      c.attention_bias = true;  // Qwen2 always has q/k/v biases and no o_proj bias
      c.hidden_act = optional_field<std::string>(j, "hidden_act", "silu", source);
      const bool use_sw = optional_field<bool>(j, "use_sliding_window", false, source);
      if (use_sw) c.sliding_window = optional_field<int64_t>(j, "sliding_window", 4096, source);
      break;
    }
    case Family::mistral:
    case Family::mixtral:
      c.hidden_act = optional_field<std::string>(j, "hidden_act", "silu", source);
      if (j.contains("sliding_window") && !j["sliding_window"].is_null())
        c.sliding_window = required<int64_t>(j, "sliding_window", source);
      if (f == Family::mixtral) {
        c.num_local_experts = required<int64_t>(j, "num_local_experts", source);
        c.num_experts_per_tok = optional_field<int64_t>(j, "num_experts_per_tok", 2, source);
        c.router_aux_loss_coef = optional_field<double>(j, "router_aux_loss_coef", 0.02, source);
      }
      break;
    case Family::gemma2:
      c.hidden_act = optional_field<std::string>(
          j, "hidden_activation", optional_field<std::string>(j, "hidden_act", "gelu_pytorch_tanh", source),
          source);
      c.query_pre_attn_scalar = optional_field<double>(j, "query_pre_attn_scalar", static_cast<double>(c.head_dim), source);
      c.attn_logit_softcapping = optional_double(j, "attn_logit_softcapping", source);
      c.final_logit_softcapping = optional_double(j, "final_logit_softcapping", source);
      c.attention_bias = optional_field<bool>(j, "attention_bias", false, source);
      c.o_proj_bias = c.attention_bias;
      if (j.contains("sliding_window") && !j["sliding_window"].is_null())
        c.sliding_window = required<int64_t>(j, "sliding_window", source);
      break;
    case Family::deepseek_v3:
      c.hidden_act = optional_field<std::string>(j, "hidden_act", "silu", source);
      parse_mla_attention(j, c, source);
      // transformers makes layer i a MoE block whenever i >= first_k_dense_replace (default 3), even with
      // n_routed_experts 0 (then only the shared expert of moe_intermediate_size remains), so only
      // first_k_dense_replace >= num_hidden_layers means "every layer a dense MLP of intermediate_size".
      // DeepSeek's own modeling code also reads an explicit "n_routed_experts": null as all-dense.
      {
        const bool no_routed = j.contains("n_routed_experts") && j.at("n_routed_experts").is_null();
        const int64_t first_dense = optional_field<int64_t>(j, "first_k_dense_replace", 3, source);
        if (!no_routed && first_dense < c.num_hidden_layers)
          fail(source, ": DeepSeek-V3 MoE layers are not supported (first_k_dense_replace = ", first_dense,
               " < num_hidden_layers = ", c.num_hidden_layers,
               "; set first_k_dense_replace to num_hidden_layers for an all-dense model)");
      }
      break;
  }
  // A converted gemma2/mixtral: the family's everything, MLA attention. Parsed after the family so that
  // the MLA fields (head_dim = nope + rope, attention_bias) override the GQA ones.
  if (f != Family::deepseek_v3 && parse_attention_marker(j, f, source)) {
    parse_mla_attention(j, c, source);
    // Gemma2's softmax scale defaults to the GQA head_dim, which an MLA config no longer has.
    MLA_CHECK(f != Family::gemma2 || (j.contains("query_pre_attn_scalar") && !j["query_pre_attn_scalar"].is_null()),
              source, ": an MLA gemma2 config needs an explicit query_pre_attn_scalar (its default, head_dim, "
              "changed with the conversion)");
  }

  c.bos_token_id = j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()
                       ? std::optional<int64_t>(j["bos_token_id"].get<int64_t>())
                       : std::nullopt;
  c.eos_token_ids = parse_token_ids(j, "eos_token_id", source);
  if (j.contains("pad_token_id") && j["pad_token_id"].is_number_integer())
    c.pad_token_id = j["pad_token_id"].get<int64_t>();
  c.validate(source);
  return c;
}

void ModelConfig::validate(const std::string& source) {
  auto positive = [&](int64_t v, const char* name) {
    MLA_CHECK(v > 0, source, ": '", name, "' must be positive, got ", v);
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_key_value_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  MLA_CHECK(num_attention_heads % num_key_value_heads == 0, source, ": num_attention_heads (",
            num_attention_heads, ") must be a multiple of num_key_value_heads (", num_key_value_heads, ")");
  if (!is_mla()) MLA_CHECK(head_dim % 2 == 0, source, ": head_dim must be even for RoPE, got ", head_dim);
  MLA_CHECK(rms_norm_eps > 0 && rms_norm_eps < 1, source, ": rms_norm_eps out of range: ", rms_norm_eps);
  MLA_CHECK(rope_theta > 0, source, ": rope_theta must be positive");
  MLA_CHECK(hidden_act == "silu" || hidden_act == "gelu_pytorch_tanh" || hidden_act == "gelu",
            source, ": unsupported activation '", hidden_act, "' (supported: silu, gelu_pytorch_tanh, gelu)");
  if (sliding_window) positive(*sliding_window, "sliding_window");
  if (family == Family::mixtral) {
    positive(num_local_experts, "num_local_experts");
    MLA_CHECK(num_experts_per_tok > 0 && num_experts_per_tok <= num_local_experts, source,
              ": num_experts_per_tok must be in [1, num_local_experts]");
  }
  if (family == Family::gemma2) positive(static_cast<int64_t>(query_pre_attn_scalar), "query_pre_attn_scalar");
  if (is_mla()) {
    positive(kv_lora_rank, "kv_lora_rank");
    positive(qk_rope_head_dim, "qk_rope_head_dim");
    positive(v_head_dim, "v_head_dim");
    MLA_CHECK(qk_rope_head_dim % 2 == 0, source, ": qk_rope_head_dim must be even");
    MLA_CHECK(qk_nope_head_dim >= 0, source, ": qk_nope_head_dim must be >= 0");
    MLA_CHECK(num_key_value_heads == num_attention_heads, source,
              ": MLA models need num_key_value_heads == num_attention_heads");
    if (!kv_lora_ranks.empty()) {
      MLA_CHECK(static_cast<int64_t>(kv_lora_ranks.size()) == num_hidden_layers, source, ": mlaforge_kv_lora_ranks has ",
                kv_lora_ranks.size(), " entries for ", num_hidden_layers, " layers");
      for (size_t i = 0; i < kv_lora_ranks.size(); ++i)
        MLA_CHECK(kv_lora_ranks[i] >= 1 && kv_lora_ranks[i] <= kv_lora_rank, source, ": mlaforge_kv_lora_ranks[", i,
                  "] = ", kv_lora_ranks[i], " must be in [1, kv_lora_rank = ", kv_lora_rank, "]");
    }
  }
  for (int64_t id : eos_token_ids)
    MLA_CHECK(id >= 0 && id < vocab_size, source, ": eos_token_id ", id, " outside the vocabulary");
  if (bos_token_id)
    MLA_CHECK(*bos_token_id >= 0 && *bos_token_id < vocab_size, source, ": bos_token_id outside the vocabulary");

  // Which layers use the sliding window: Gemma2 alternates (even layers local), Qwen2 applies it from
  // max_window_layers on, Mistral/Mixtral everywhere.
  layer_sliding.assign(static_cast<size_t>(num_hidden_layers), false);
  if (sliding_window) {
    for (int64_t i = 0; i < num_hidden_layers; ++i) {
      bool sliding = true;
      if (family == Family::gemma2) sliding = (i % 2 == 0);
      if (family == Family::qwen2) {
        const int64_t max_window_layers = raw.value("max_window_layers", num_hidden_layers);
        sliding = i >= max_window_layers;
      }
      layer_sliding[static_cast<size_t>(i)] = sliding;
    }
  }
}

float ModelConfig::attention_scale() const {
  // Gemma2 keeps query_pre_attn_scalar^-1/2 with MLA attention too (the converter's query scale
  // original / MLA scale is then 1, and the soft-cap sees the same scaled scores).
  if (family == Family::gemma2) return static_cast<float>(1.0 / std::sqrt(query_pre_attn_scalar));
  double scale = 1.0 / std::sqrt(static_cast<double>(is_mla() ? qk_nope_head_dim + qk_rope_head_dim : head_dim));
  // DeepSeek (transformers' yarn_apply_mscale) squares mscale(factor, mscale_all_dim) into the softmax
  // scale for any scaled rope type that sets mscale_all_dim, in practice YaRN (DeepSeek's rule, not an
  // MLA one: a converted family keeps its own).
  if (family == Family::deepseek_v3 && rope_scaling.type != RopeScaling::Type::none && rope_scaling.mscale_all_dim &&
      *rope_scaling.mscale_all_dim != 0 && rope_scaling.factor > 1) {
    const double m = 0.1 * *rope_scaling.mscale_all_dim * std::log(rope_scaling.factor) + 1.0;
    scale *= m * m;
  }
  return static_cast<float>(scale);
}

float ModelConfig::embedding_multiplier() const {
  return family == Family::gemma2 ? static_cast<float>(std::sqrt(static_cast<double>(hidden_size))) : 1.0f;
}

int64_t ModelConfig::kv_cache_values_per_token_per_layer() const {
  return num_hidden_layers > 0 ? kv_cache_values_per_token() / num_hidden_layers : 0;
}

int64_t ModelConfig::kv_cache_values_per_token() const {
  int64_t total = 0;
  for (int64_t i = 0; i < num_hidden_layers; ++i)
    total += is_mla() ? kv_lora_rank_at(i) + qk_rope_head_dim : 2 * num_key_value_heads * head_dim;
  return total;
}

int64_t ModelConfig::num_parameters() const {
  const int64_t D = hidden_size, H = num_attention_heads, KV = num_key_value_heads, d = head_dim;
  int64_t attention = 0;
  if (is_mla()) {
    const int64_t qk = qk_nope_head_dim + qk_rope_head_dim;
    attention += q_lora_rank > 0 ? D * q_lora_rank + q_lora_rank + q_lora_rank * H * qk : D * H * qk;
    // Per-layer ranks: counted below from the layers' own ranks.
    attention += D * qk_rope_head_dim;
    attention += H * v_head_dim * D;
    if (attention_bias) attention += (q_lora_rank > 0 ? q_lora_rank : 0) + kv_lora_rank + qk_rope_head_dim + D;
  } else {
    attention = D * H * d + 2 * D * KV * d + H * d * D;
    if (attention_bias) attention += H * d + 2 * KV * d;
    if (o_proj_bias) attention += D;
  }
  int64_t mlp = 3 * D * intermediate_size;
  if (is_moe()) mlp = num_local_experts * mlp + D * num_local_experts;
  const int64_t norms = (family == Family::gemma2 ? 4 : 2) * D;
  const int64_t per_layer = attention + mlp + norms;
  const int64_t embeddings = vocab_size * D * (tie_word_embeddings ? 1 : 2);
  int64_t latent = 0;  // MLA latent projections, kv_a (latent rows), its norm and kv_b, per layer's rank
  if (is_mla())
    for (int64_t i = 0; i < num_hidden_layers; ++i) {
      const int64_t R = kv_lora_rank_at(i);
      latent += D * R + R + R * H * (qk_nope_head_dim + v_head_dim) + (attention_bias ? R - kv_lora_rank : 0);
    }
  return per_layer * num_hidden_layers + latent + embeddings + D;
}

nlohmann::json ModelConfig::to_json() const { return raw; }

}  // namespace mlaforge
