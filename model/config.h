#pragma once
// The one place where model dimensions come from: a Hugging Face config.json (or an importer that builds
// the same fields from GGUF metadata / a llama2.c header), parsed and validated here. Nothing else in
// the code base reads model dimensions from anywhere else.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace mlaforge {

enum class Family { llama, qwen2, mistral, mixtral, gemma2, deepseek_v3 };
std::string family_name(Family family);

struct RopeScaling {
  enum class Type { none, linear, dynamic, yarn, llama3 };
  Type type = Type::none;
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> attention_factor;  // yarn "attention_factor"; default 0.1*ln(factor)+1
  std::optional<double> mscale;            // DeepSeek yarn variant
  std::optional<double> mscale_all_dim;
  nlohmann::json raw;  // as found in config.json, written back unchanged on export
};
std::string rope_scaling_name(RopeScaling::Type type);

struct ModelConfig {
  Family family = Family::llama;
  std::string model_type;  // as in config.json ("llama", "qwen2", ...)

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 2048;

  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  // Fraction of head_dim that is rotated (1.0 for every family supported today).
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases (Qwen2 always; Llama optional)
  bool o_proj_bias = false;     // Llama's attention_bias also covers o_proj
  bool mlp_bias = false;
  std::string hidden_act = "silu";  // silu | gelu_pytorch_tanh | gelu

  // Sliding-window attention: window size in tokens, and which layers use it.
  std::optional<int64_t> sliding_window;
  std::vector<bool> layer_sliding;  // per layer, filled by validate()

  // Mixtral sparse MoE
  int64_t num_local_experts = 0;
  int64_t num_experts_per_tok = 0;
  double router_aux_loss_coef = 0.0;

  // Gemma2
  double query_pre_attn_scalar = 0.0;  // softmax scale = query_pre_attn_scalar^-1/2
  std::optional<double> attn_logit_softcapping;
  std::optional<double> final_logit_softcapping;

  // MLA attention. The attention kind is independent of the family: deepseek_v3 always has it; a converted
  // gemma2 or mixtral keeps its family (norms, soft-capping, sliding windows, experts) and carries the MLA
  // fields below plus the mlaforge marker "mlaforge_attention": "mla" in its config.json (mlaforge engine
  // only: no stock engine runs MLA attention inside those families). A converted llama/qwen2/mistral is
  // written as deepseek_v3 instead, which stock engines load.
  bool mla_attention = false;
  int64_t kv_lora_rank = 0;  // the largest layer's latent rank
  // mlaforge extension (config.json "mlaforge_kv_lora_ranks"): a latent rank per layer (a --kv-budget
  // conversion); empty: every layer has kv_lora_rank. Stock DeepSeek engines cannot read it, so only
  // exact-mode (mlaforge engine) exports carry it.
  std::vector<int64_t> kv_lora_ranks;
  int64_t q_lora_rank = 0;  // 0: no query compression
  int64_t qk_rope_head_dim = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t v_head_dim = 0;
  // DeepSeek stores the rope rows of q and kv_a in interleaved pairs (x0,x1),(x2,x3)... (true, the
  // transformers default); false: rotate_half layout like the GQA families.
  bool rope_interleave = true;
  // mlaforge extension (config.json "mlaforge_latent_norm", default true): false skips kv_a_layernorm on
  // the latent. Exact TransMLA conversions need that; stock DeepSeek engines always apply the norm.
  bool latent_norm = true;

  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;
  std::string torch_dtype = "float32";  // dtype the checkpoint was saved in

  nlohmann::json raw;  // the config as read, kept for export

  // Parses and validates. `source` names the file in error messages.
  static ModelConfig from_json(const nlohmann::json& json, const std::string& source);
  static ModelConfig from_file(const std::string& config_json_path);
  // Checks internal consistency and fills derived fields; throws mlaforge::Error naming `source`.
  void validate(const std::string& source);
  nlohmann::json to_json() const;

  // The attention is MLA (latent KV cache), whatever the family.
  bool is_mla() const { return mla_attention; }
  bool is_moe() const { return num_local_experts > 0; }
  int64_t group_size() const { return num_attention_heads / num_key_value_heads; }
  float attention_scale() const;  // softmax scale applied to q.k
  float embedding_multiplier() const;  // Gemma2 scales embeddings by sqrt(hidden)
  int64_t num_parameters() const;
  // KV-cache elements per token per layer (K and V for GQA; latent + rope key for MLA).
  // For per-layer MLA ranks: the mean over layers (rounded down); kv_cache_values_per_token is exact.
  int64_t kv_cache_values_per_token_per_layer() const;
  int64_t kv_cache_values_per_token() const;  // summed over layers
  int64_t kv_lora_rank_at(int64_t layer) const {
    return kv_lora_ranks.empty() ? kv_lora_rank : kv_lora_ranks.at(static_cast<size_t>(layer));
  }
};

}  // namespace mlaforge
