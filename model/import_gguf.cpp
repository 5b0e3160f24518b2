// GGUF -> ModelSource: HF-style config built from the metadata (and validated by ModelConfig), tensors
// dequantised to float32 under their Hugging Face names, Q/K rows put back into rotate_half order, and
// the embedded vocabulary turned into a Tokenizer.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numbers>
#include <optional>

#include "core/error.h"
#include "core/log.h"
#include "data/tokenizer.h"
#include "data/tokenizer_export.h"
#include "model/checkpoint.h"
#include "model/gguf.h"
#include "model/import_common.h"

namespace mlaforge {
namespace {

using json = nlohmann::json;

// Architectures read, and whether llama.cpp's converter permuted their Q/K rows.
struct ArchInfo {
  std::string model_type;
  std::string hf_class;
  bool permuted_qk;
};

std::optional<ArchInfo> arch_info(const std::string& arch) {
  // Mistral checkpoints are converted with the llama architecture (older files may say "mistral"); both
  // use llama.cpp's normal (interleaved) RoPE, hence permuted rows. Qwen2 uses NEOX RoPE: not permuted.
  if (arch == "llama" || arch == "mistral") return ArchInfo{"llama", "LlamaForCausalLM", true};
  if (arch == "qwen2") return ArchInfo{"qwen2", "Qwen2ForCausalLM", false};
  return std::nullopt;
}

// blk.N.<suffix> -> model.layers.N.<hf suffix>
const std::map<std::string, std::string>& block_names() {
  static const std::map<std::string, std::string> names = {
      {"attn_norm.weight", "input_layernorm.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"attn_q.bias", "self_attn.q_proj.bias"},
      {"attn_k.bias", "self_attn.k_proj.bias"},
      {"attn_v.bias", "self_attn.v_proj.bias"},
      {"attn_output.bias", "self_attn.o_proj.bias"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"},
  };
  return names;
}

// HF name for a GGUF tensor name; nullopt for names to skip; throws for names not understood.
std::optional<std::string> hf_name(const std::string& name, int64_t n_layers, const std::string& path,
                                   const std::string& arch) {
  if (name == "token_embd.weight") return "model.embed_tokens.weight";
  if (name == "output_norm.weight") return "model.norm.weight";
  if (name == "output.weight") return "lm_head.weight";
  if (name == "rope_freqs.weight") return std::nullopt;  // turned into rope_scaling
  if (name.rfind("blk.", 0) == 0) {
    const size_t dot = name.find('.', 4);
    if (dot != std::string::npos && dot > 4) {
      const std::string index = name.substr(4, dot - 4);
      const std::string suffix = name.substr(dot + 1);
      if (index.find_first_not_of("0123456789") == std::string::npos && index.size() < 9) {
        const int64_t layer = std::stoll(index);
        MLA_CHECK(layer < n_layers, path, ": tensor '", name, "' names layer ", layer, " but block_count is ",
                  n_layers);
        if (suffix == "attn_rot_embd") return std::nullopt;  // precomputed RoPE table of old conversions
        auto it = block_names().find(suffix);
        if (it != block_names().end()) return "model.layers." + index + "." + it->second;
      }
    }
  }
  fail(path, ": tensor '", name, "' is not part of a dense ", arch,
       " model as mlaforge reads it (supported: token_embd, output_norm, output, blk.N.{attn_norm, attn_q, "
       "attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down})");
}

std::optional<int64_t> optional_id(const GgufFile& f, const std::string& key) {
  if (!f.has(key)) return std::nullopt;
  return f.get_int(key);
}

// Llama-3.1-style RoPE scaling is stored by llama.cpp as a per-frequency factor tensor (rope_freqs)
// instead of metadata. Recover the HF rope_scaling parameters by matching the factors against the
// llama3 formula with the published parameters (low 1, high 4, original context 8192, factor = max).
json llama3_scaling_from_factors(const std::vector<float>& factors, int64_t head_dim, double theta,
                                 const std::string& path) {
  float max_factor = 1.0f;
  for (float v : factors) max_factor = std::max(max_factor, v);
  if (max_factor == 1.0f) return nullptr;
  const double factor = max_factor, low = 1.0, high = 4.0, original = 8192.0;
  const double low_wavelen = original / low, high_wavelen = original / high;
  MLA_CHECK(static_cast<int64_t>(factors.size()) == head_dim / 2, path, ": rope_freqs.weight has ",
            factors.size(), " values, expected head_dim/2 = ", head_dim / 2);
  for (size_t i = 0; i < factors.size(); ++i) {
    const double freq = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(head_dim));
    const double wavelen = 2 * std::numbers::pi / freq;
    double expected;
    if (wavelen < high_wavelen) {
      expected = 1.0;
    } else if (wavelen > low_wavelen) {
      expected = factor;
    } else {
      const double smooth = (original / wavelen - low) / (high - low);
      expected = 1.0 / ((1 - smooth) / factor + smooth);
    }
    MLA_CHECK(std::abs(expected - factors[i]) <= 1e-4 * expected, path,
              ": rope_freqs.weight does not match Llama-3 RoPE scaling with factor ", factor,
              ", low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192 (value ", i,
              " is ", factors[i], ", expected ", expected, "); this scaling is not supported");
  }
  return json{{"rope_type", "llama3"},
              {"factor", factor},
              {"low_freq_factor", low},
              {"high_freq_factor", high},
              {"original_max_position_embeddings", static_cast<int64_t>(original)}};
}

json rope_scaling_from_metadata(const GgufFile& f, const std::string& arch) {
  const std::string p = arch + ".rope.scaling.";
  std::string type = f.get_string(p + "type", "");
  double factor = f.get_float(p + "factor", 0.0);
  if (type.empty() && f.has(arch + ".rope.scale_linear")) {  // older files
    type = "linear";
    factor = f.get_float(arch + ".rope.scale_linear");
  }
  if (type.empty() || type == "none") return nullptr;
  MLA_CHECK(factor > 0, f.path(), ": ", p, "type is '", type, "' but ", p, "factor is missing");
  factor = float32_to_shortest_double(static_cast<float>(factor));
  if (factor == 1.0 && type == "linear") return nullptr;
  json r{{"rope_type", type}, {"factor", factor}};
  if (type == "linear") return r;
  if (type == "yarn") {
    if (f.has(p + "original_context_length"))
      r["original_max_position_embeddings"] = f.get_int(p + "original_context_length");
    if (f.has(p + "yarn_beta_fast"))
      r["beta_fast"] = float32_to_shortest_double(static_cast<float>(f.get_float(p + "yarn_beta_fast")));
    if (f.has(p + "yarn_beta_slow"))
      r["beta_slow"] = float32_to_shortest_double(static_cast<float>(f.get_float(p + "yarn_beta_slow")));
    return r;
  }
  fail(f.path(), ": ", p, "type '", type, "' is not supported (supported: none, linear, yarn)");
}

// FLOAT32 metadata read as the decimal it was written from (1e-5, not 9.99999975e-06).
double float_key(const GgufFile& f, const std::string& key, double fallback) {
  const GgufValue* v = f.find(key);
  if (v == nullptr) return fallback;
  if (v->type == GgufValueType::FLOAT32) return float32_to_shortest_double(static_cast<float>(v->float_value));
  return f.get_float(key);
}

json build_config_json(const GgufFile& f, const std::string& arch, const ArchInfo& info) {
  const std::string& path = f.path();
  const std::string a = arch + ".";
  json j;
  j["model_type"] = info.model_type;
  j["architectures"] = json::array({info.hf_class});
  const GgufTensorInfo* embd = f.find_tensor("token_embd.weight");
  MLA_CHECK(embd != nullptr && embd->dims.size() == 2, path, ": tensor 'token_embd.weight' is missing or not 2-D");
  int64_t vocab = embd->dims[1];
  if (f.has(a + "vocab_size")) vocab = f.get_int(a + "vocab_size");
  j["vocab_size"] = vocab;
  const int64_t hidden = f.get_int(a + "embedding_length");
  const int64_t heads = f.get_int(a + "attention.head_count");
  j["hidden_size"] = hidden;
  j["intermediate_size"] = f.get_int(a + "feed_forward_length");
  j["num_hidden_layers"] = f.get_int(a + "block_count");
  j["num_attention_heads"] = heads;
  j["num_key_value_heads"] = f.get_int(a + "attention.head_count_kv", heads);

  std::optional<int64_t> head_dim;
  if (f.has(a + "attention.key_length")) {
    head_dim = f.get_int(a + "attention.key_length");
    const int64_t value_length = f.get_int(a + "attention.value_length", *head_dim);
    MLA_CHECK(value_length == *head_dim, path, ": attention.key_length ", *head_dim, " != value_length ",
              value_length, " is not supported");
  }
  if (f.has(a + "rope.dimension_count")) {
    const int64_t rot = f.get_int(a + "rope.dimension_count");
    if (!head_dim) head_dim = rot;
    MLA_CHECK(rot == *head_dim, path, ": ", a, "rope.dimension_count ", rot, " differs from the head size ",
              *head_dim, " (partial rotary embeddings are not supported)");
  }
  j["head_dim"] = head_dim ? *head_dim : (heads > 0 ? hidden / heads : 0);
  j["rms_norm_eps"] = float_key(f, a + "attention.layer_norm_rms_epsilon", 1e-5);
  j["rope_theta"] = float_key(f, a + "rope.freq_base", 10000.0);
  j["max_position_embeddings"] = f.get_int(a + "context_length", 2048);
  j["tie_word_embeddings"] = f.find_tensor("output.weight") == nullptr;
  j["hidden_act"] = "silu";
  j["torch_dtype"] = "float32";
  const bool q_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  if (info.model_type == "llama") {
    j["attention_bias"] = q_bias;
    j["mlp_bias"] = false;
  } else if (info.model_type == "qwen2") {
    MLA_CHECK(q_bias, path, ": qwen2 model without blk.0.attn_q.bias (Qwen2 always has q/k/v biases)");
    j["use_sliding_window"] = false;
  }

  json scaling = rope_scaling_from_metadata(f, arch);
  if (const GgufTensorInfo* freqs = f.find_tensor("rope_freqs.weight")) {
    MLA_CHECK(scaling.is_null(), path, ": both rope_freqs.weight and ", a, "rope.scaling.* are present");
    scaling = llama3_scaling_from_factors(f.dequantize(*freqs), j["head_dim"].get<int64_t>(),
                                          j["rope_theta"].get<double>(), path);
  }
  j["rope_scaling"] = scaling;

  if (auto bos = optional_id(f, "tokenizer.ggml.bos_token_id")) j["bos_token_id"] = *bos;
  json eos = json::array();
  if (auto id = optional_id(f, "tokenizer.ggml.eos_token_id")) eos.push_back(*id);
  // Chat models end turns with EOT (Llama-3 <|eot_id|>) / EOM: generation should stop there too.
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"})
    if (auto id = optional_id(f, key))
      if (std::find(eos.begin(), eos.end(), json(*id)) == eos.end()) eos.push_back(*id);
  if (eos.size() == 1) j["eos_token_id"] = eos[0];
  else if (!eos.empty()) j["eos_token_id"] = eos;
  if (auto pad = optional_id(f, "tokenizer.ggml.padding_token_id")) j["pad_token_id"] = *pad;
  return j;
}

std::optional<int32_t> optional_id32(const GgufFile& f, const std::string& key) {
  auto id = optional_id(f, key);
  if (!id) return std::nullopt;
  MLA_CHECK(*id >= 0 && *id <= INT32_MAX, f.path(), ": ", key, " = ", *id, " is not a valid token id");
  return static_cast<int32_t>(*id);
}

GgufVocab read_vocab(const GgufFile& f) {
  GgufVocab v;
  v.model = f.get_string("tokenizer.ggml.model");
  v.pre = f.get_string("tokenizer.ggml.pre", "default");
  v.tokens = f.get_string_array("tokenizer.ggml.tokens");
  if (f.has("tokenizer.ggml.scores")) {
    const auto scores = f.get_float_array("tokenizer.ggml.scores");
    v.scores.assign(scores.begin(), scores.end());
  }
  if (f.has("tokenizer.ggml.token_type")) {
    for (int64_t t : f.get_int_array("tokenizer.ggml.token_type")) v.token_types.push_back(static_cast<int32_t>(t));
  }
  if (f.has("tokenizer.ggml.merges")) v.merges = f.get_string_array("tokenizer.ggml.merges");
  auto check_size = [&](size_t n, const char* key) {
    MLA_CHECK(n == 0 || n == v.tokens.size(), f.path(), ": ", key, " has ", n, " entries but tokenizer.ggml.tokens has ",
              v.tokens.size());
  };
  check_size(v.scores.size(), "tokenizer.ggml.scores");
  check_size(v.token_types.size(), "tokenizer.ggml.token_type");
  v.bos = optional_id32(f, "tokenizer.ggml.bos_token_id");
  v.eos = optional_id32(f, "tokenizer.ggml.eos_token_id");
  v.unk = optional_id32(f, "tokenizer.ggml.unknown_token_id");
  v.pad = optional_id32(f, "tokenizer.ggml.padding_token_id");
  // llama.cpp's defaults when the keys are absent: SentencePiece vocabularies add BOS and a space prefix.
  const bool spm = v.model == "llama";
  v.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", spm);
  v.add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix", spm);
  return v;
}

}  // namespace

ModelSource import_gguf(const std::string& path, const LoadOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  GgufFile f = GgufFile::open(path);
  const std::string arch = f.get_string("general.architecture");
  const auto info = arch_info(arch);
  MLA_CHECK(info.has_value(), path, ": GGUF architecture '", arch,
            "' is not supported (supported: llama, mistral, qwen2)");

  ModelSource src;
  src.path = path;
  src.format = "gguf";
  src.config = ModelConfig::from_json(build_config_json(f, arch, *info), path);
  const ModelConfig& c = src.config;

  for (const GgufTensorInfo& t : f.tensors()) {
    const auto name = hf_name(t.name, c.num_hidden_layers, path, arch);
    if (!name) continue;
    MLA_CHECK(!src.weights.count(*name), path, ": two tensors map to ", *name);
    torch::Tensor w = torch::empty(t.shape(), torch::kFloat32);
    f.dequantize(t, w.data_ptr<float>());
    if (info->permuted_qk) {
      // llama.cpp stored Q/K rows (weights and biases alike) in interleaved-pair order.
      const bool is_q = name->find("self_attn.q_proj.") != std::string::npos;
      const bool is_k = name->find("self_attn.k_proj.") != std::string::npos;
      if (is_q || is_k)
        w = interleaved_to_rotate_half(w, is_q ? c.num_attention_heads : c.num_key_value_heads,
                                       path + ": tensor '" + t.name + "'");
    }
    src.weights.emplace(*name, std::move(w));
  }
  check_state_dict(src.weights, expected_dense_shapes(c), path);

  src.chat_template = f.get_string("tokenizer.chat_template", "");
  if (options.load_tokenizer) {
    if (!options.tokenizer_path.empty()) {
      src.tokenizer = load_tokenizer(options.tokenizer_path);
    } else if (f.has("tokenizer.ggml.model")) {
      const GgufVocab vocab = read_vocab(f);
      try {
        src.tokenizer = tokenizer_from_gguf_vocab(vocab);
      } catch (const Error& e) {
        fail(path, ": embedded tokenizer (tokenizer.ggml.model '", vocab.model, "', pre '", vocab.pre,
             "'): ", e.what());
      }
      try {
        const HfTokenizerFiles files = gguf_vocab_to_hf(vocab, src.chat_template);
        src.generated_tokenizer_files["tokenizer.json"] = files.tokenizer.dump();
        src.generated_tokenizer_files["tokenizer_config.json"] = files.tokenizer_config.dump(2);
      } catch (const Error& e) {
        log::warn(path, ": exports will carry no tokenizer files: ", e.what());
      }
    } else {
      log::warn(path, ": no embedded tokenizer (tokenizer.ggml.*); pass a tokenizer explicitly");
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  log::info("imported ", path, " (", arch, ", ", f.tensors().size(), " tensors, ", c.num_parameters() / 1e6,
            "M parameters) in ", secs, " s");
  return src;
}

}  // namespace mlaforge
