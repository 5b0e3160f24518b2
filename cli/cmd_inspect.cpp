// mlaforge inspect MODEL: what a model is and what its KV cache costs.
#include <iostream>

#include "cli/common.h"
#include "cli/inspect_checkpoint.h"
#include "core/error.h"
#include "data/tokenizer.h"
#include "model/safetensors.h"

namespace mlaforge::cli {
namespace {

struct InspectOptions {
  ModelOptions model;
};

nlohmann::json describe(const ModelSource& src) {
  const ModelConfig& c = src.config;
  // A Hugging Face folder is opened lazily: the sizes come from the safetensors headers, no weight is read.
  int64_t stored = 0;
  size_t tensors = src.weights.size();
  for (const auto& [name, t] : src.weights) stored += t.numel();
  if (src.checkpoint) {
    tensors = 0;
    for (const auto& name : src.checkpoint->names()) {
      stored += src.checkpoint->get(name).info->numel();
      ++tensors;
    }
  }
  const int64_t values = c.kv_cache_values_per_token_per_layer();
  nlohmann::json kv;
  for (const auto& [dtype, bytes] : std::vector<std::pair<std::string, int>>{{"float32", 4}, {"bfloat16", 2}, {"fp8", 1}}) {
    kv[dtype] = {{"per_layer_bytes", values * bytes}, {"total_bytes", values * bytes * c.num_hidden_layers}};
  }
  nlohmann::json j = {
      {"path", src.path},
      {"format", src.format},
      {"family", family_name(c.family)},
      {"layers", c.num_hidden_layers},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rope_theta", c.rope_theta},
      {"rope_scaling", rope_scaling_name(c.rope_scaling.type)},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"parameters", stored},
      {"tensors", tensors},
      {"kv_cache_values_per_token_per_layer", values},
      {"kv_cache_bytes_per_token", kv},
  };
  if (c.sliding_window) j["sliding_window"] = *c.sliding_window;
  if (c.is_moe()) j["experts"] = {{"num_local_experts", c.num_local_experts}, {"top_k", c.num_experts_per_tok}};
  if (c.is_mla()) {
    j["mla"] = {{"kv_lora_rank", c.kv_lora_rank}, {"q_lora_rank", c.q_lora_rank},
                {"qk_rope_head_dim", c.qk_rope_head_dim}, {"qk_nope_head_dim", c.qk_nope_head_dim},
                {"v_head_dim", c.v_head_dim}};
  }
  if (src.tokenizer) {
    j["tokenizer"] = {{"kind", src.tokenizer->kind()}, {"vocab_size", src.tokenizer->vocab_size()}};
    if (src.tokenizer->bos_id) j["tokenizer"]["bos_id"] = *src.tokenizer->bos_id;
    if (src.tokenizer->eos_id) j["tokenizer"]["eos_id"] = *src.tokenizer->eos_id;
  }
  j["chat_template"] = !src.chat_template.empty();
  return j;
}

void print_text(const nlohmann::json& j) {
  auto& o = std::cout;
  o << "model        " << j["path"].get<std::string>() << " (" << j["format"].get<std::string>() << ")\n";
  o << "family       " << j["family"].get<std::string>() << "\n";
  o << "layers       " << j["layers"] << "   hidden " << j["hidden_size"] << "   intermediate "
    << j["intermediate_size"] << "   vocab " << j["vocab_size"] << "\n";
  o << "attention    " << j["num_attention_heads"] << " query heads, " << j["num_key_value_heads"]
    << " KV heads, head_dim " << j["head_dim"];
  if (j.contains("mla")) {
    const auto& m = j["mla"];
    o << "   MLA: kv_lora_rank " << m["kv_lora_rank"] << ", rope " << m["qk_rope_head_dim"] << ", nope "
      << m["qk_nope_head_dim"] << ", v " << m["v_head_dim"];
  }
  o << "\n";
  o << "rope         theta " << j["rope_theta"].get<double>() << ", scaling " << j["rope_scaling"].get<std::string>()
    << ", max positions " << j["max_position_embeddings"] << "\n";
  if (j.contains("sliding_window")) o << "window       " << j["sliding_window"] << " tokens\n";
  if (j.contains("experts"))
    o << "experts      " << j["experts"]["num_local_experts"] << " (top " << j["experts"]["top_k"] << ")\n";
  o << "parameters   " << human_count(j["parameters"].get<double>()) << " in " << j["tensors"] << " tensors\n";
  const auto& kv = j["kv_cache_bytes_per_token"];
  o << "KV cache     " << j["kv_cache_values_per_token_per_layer"] << " values/token/layer = "
    << human_bytes(kv["bfloat16"]["per_layer_bytes"].get<double>()) << " bf16 per layer, "
    << human_bytes(kv["bfloat16"]["total_bytes"].get<double>()) << " bf16 / "
    << human_bytes(kv["float32"]["total_bytes"].get<double>()) << " fp32 per token over all layers\n";
  if (j.contains("tokenizer")) {
    const auto& t = j["tokenizer"];
    o << "tokenizer    " << t["kind"].get<std::string>() << ", " << t["vocab_size"] << " tokens";
    if (t.contains("bos_id")) o << ", bos " << t["bos_id"];
    if (t.contains("eos_id")) o << ", eos " << t["eos_id"];
    o << "\n";
  }
  o << "chat template " << (j["chat_template"].get<bool>() ? "yes" : "no") << std::endl;
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto opts = std::make_shared<InspectOptions>();
  auto* cmd = app.add_subcommand("inspect",
                                 "Show a model's family, dimensions, parameters and KV-cache cost, or verify a "
                                 "training checkpoint (step folder or run folder)");
  add_model_options(*cmd, opts->model);
  cmd->add_flag("--json", global_options().json, "machine-readable output");
  cmd->callback([opts] {
    run_command([&] {
      if (is_checkpoint_path(opts->model.model)) {
        const auto report = describe_checkpoint(opts->model.model);
        if (global_options().json) {
          print_json(report);
        } else {
          print_checkpoint_text(report);
        }
        // Printed first, then the non-zero exit: the table shows which files failed.
        MLA_CHECK(report["ok"].get<bool>(), report["checkpoint"].get<std::string>(), ": verification FAILED: ",
                  report.value("first_problem", std::string("see the file list")));
        return;
      }
      LoadOptions load;
      load.tokenizer_path = opts->model.tokenizer;
      load.lazy_weights = true;
      ModelSource src = load_model_source(opts->model.model, load);
      auto j = describe(src);
      if (global_options().json) {
        print_json(j);
      } else {
        print_text(j);
      }
    });
  });
}

}  // namespace mlaforge::cli
