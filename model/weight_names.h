#pragma once
// The one table that maps Hugging Face tensor names to mlaforge parameter names and gives each
// parameter's tensor-parallel split: the model code, the loaders, the exporters and parallel/ all use it.
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"

namespace mlaforge {

// How a parameter is split across tensor-parallel ranks (Megatron style).
enum class TpSplit {
  replicated,  // every rank holds all of it (norms, the MLA latent down-projection)
  column,      // split along dim 0 (output features): q/k/v, gate/up, kv_b, q_b
  row,         // split along dim 1 (input features): o_proj, down
  vocab,       // split along dim 0 over the vocabulary: embedding, lm_head
};
std::string tp_split_name(TpSplit split);

struct WeightName {
  std::string hf;    // model.layers.{i}.self_attn.q_proj.weight
  std::string ours;  // layers.{i}.attn.wq.weight
  TpSplit split;
};

// Table rows for a config's family and options (MLA vs GQA attention, MoE vs dense MLP, Gemma2's four
// norms, biases). Patterns use {i} for the layer and {e} for the expert index.
std::vector<WeightName> weight_table(const ModelConfig& config);

// Expands the patterns into concrete names for every layer/expert, in a stable order.
std::vector<WeightName> expand_weight_names(const ModelConfig& config);

// HF name -> ours (and back); nullopt when the name is not part of this config's model.
std::optional<std::string> hf_to_ours(const ModelConfig& config, const std::string& hf_name);
std::optional<std::string> ours_to_hf(const ModelConfig& config, const std::string& our_name);

}  // namespace mlaforge
