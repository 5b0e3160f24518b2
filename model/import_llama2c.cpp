// llama2.c .bin -> ModelSource: the header becomes an HF llama config (validated by ModelConfig), the
// float32 arrays become HF tensors, and wq/wk rows are permuted from llama2.c's adjacent-pair RoPE into
// HF rotate_half order (exactly what transformers' convert_llama_weights_to_hf does).
#include <torch/torch.h>

#include <filesystem>

#include "core/error.h"
#include "core/log.h"
#include "core/mmap_file.h"
#include "data/tokenizer.h"
#include "model/checkpoint.h"
#include "model/import_common.h"
#include "model/llama2c.h"

namespace fs = std::filesystem;

namespace mlaforge {
namespace {

using json = nlohmann::json;

bool has_suffix(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::unique_ptr<Tokenizer> load_llama2c_side_tokenizer(const std::string& path, int64_t vocab_size) {
  if (has_suffix(path, ".model")) return load_sentencepiece_model(path);
  if (has_suffix(path, ".bin")) return load_llama2c_tokenizer(path, static_cast<int32_t>(vocab_size));
  return load_tokenizer(path);
}

}  // namespace

ModelSource import_llama2c(const std::string& path, const LoadOptions& options) {
  Llama2cFile f = Llama2cFile::open(path);
  const Llama2cHeader& h = f.header();

  json j;
  j["model_type"] = "llama";
  j["architectures"] = json::array({"LlamaForCausalLM"});
  j["vocab_size"] = h.vocab_size;
  j["hidden_size"] = h.dim;
  j["intermediate_size"] = h.hidden_dim;
  j["num_hidden_layers"] = h.n_layers;
  j["num_attention_heads"] = h.n_heads;
  j["num_key_value_heads"] = h.n_kv_heads;
  j["head_dim"] = h.head_size();
  j["rms_norm_eps"] = 1e-5;
  j["rope_theta"] = 10000.0;
  j["max_position_embeddings"] = h.seq_len;
  j["tie_word_embeddings"] = h.shared_classifier;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["mlp_bias"] = false;
  j["rope_scaling"] = nullptr;
  j["torch_dtype"] = "float32";
  j["bos_token_id"] = 1;
  j["eos_token_id"] = 2;

  ModelSource src;
  src.path = path;
  src.format = "llama2c";
  src.config = ModelConfig::from_json(j, path);

  // Copies out of the mapping (which closes when f goes out of scope).
  auto array = [&](const char* name) {
    const Llama2cArray& a = f.get(name);
    return torch::from_blob(const_cast<float*>(f.data(a)), a.shape, torch::kFloat32);
  };
  src.weights["model.embed_tokens.weight"] = array("token_embedding_table").clone();
  src.weights["model.norm.weight"] = array("rms_final_weight").clone();
  if (!h.shared_classifier) src.weights["lm_head.weight"] = array("wcls").clone();
  const torch::Tensor rms_att = array("rms_att_weight"), rms_ffn = array("rms_ffn_weight");
  const torch::Tensor wq = array("wq"), wk = array("wk"), wv = array("wv"), wo = array("wo");
  const torch::Tensor w1 = array("w1"), w2 = array("w2"), w3 = array("w3");
  for (int64_t i = 0; i < h.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    src.weights[p + "input_layernorm.weight"] = rms_att[i].clone();
    src.weights[p + "post_attention_layernorm.weight"] = rms_ffn[i].clone();
    src.weights[p + "self_attn.q_proj.weight"] = interleaved_to_rotate_half(wq[i].clone(), h.n_heads, path + ": wq");
    src.weights[p + "self_attn.k_proj.weight"] = interleaved_to_rotate_half(wk[i].clone(), h.n_kv_heads, path + ": wk");
    src.weights[p + "self_attn.v_proj.weight"] = wv[i].clone();
    src.weights[p + "self_attn.o_proj.weight"] = wo[i].clone();
    src.weights[p + "mlp.gate_proj.weight"] = w1[i].clone();
    src.weights[p + "mlp.down_proj.weight"] = w2[i].clone();
    src.weights[p + "mlp.up_proj.weight"] = w3[i].clone();
  }
  check_state_dict(src.weights, expected_dense_shapes(src.config), path);

  if (options.load_tokenizer) {
    std::string tok = options.tokenizer_path;
    if (tok.empty()) {
      // Next to the checkpoint; a SentencePiece .model first (it carries the normaliser settings that a
      // llama2.c tokenizer.bin lacks).
      const fs::path dir = fs::path(path).parent_path();
      const std::string v = std::to_string(h.vocab_size);
      for (const std::string& name : {"tok" + v + ".model", std::string("tokenizer.model"), "tok" + v + ".bin",
                                      std::string("tokenizer.bin")}) {
        const std::string candidate = (dir / name).string();
        if (file_exists(candidate)) {
          tok = candidate;
          break;
        }
      }
    }
    if (tok.empty()) {
      log::warn(path, ": no tokenizer found next to the checkpoint (looked for tok", h.vocab_size,
                ".model, tokenizer.model, tok", h.vocab_size, ".bin, tokenizer.bin); pass one explicitly");
    } else {
      src.tokenizer = load_llama2c_side_tokenizer(tok, h.vocab_size);
      MLA_CHECK(src.tokenizer->vocab_size() == h.vocab_size, tok, ": tokenizer has ", src.tokenizer->vocab_size(),
                " tokens but the checkpoint ", path, " has vocab_size ", h.vocab_size);
      // Exported folders carry it under the name Hugging Face loaders (and ours) look for.
      if (has_suffix(tok, ".model")) src.generated_tokenizer_files["tokenizer.model"] = read_text_file(tok);
      if (has_suffix(tok, ".json")) src.generated_tokenizer_files["tokenizer.json"] = read_text_file(tok);
    }
  }
  return src;
}

}  // namespace mlaforge
