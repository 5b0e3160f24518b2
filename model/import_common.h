#pragma once
// Helpers shared by the GGUF and llama2.c importers (model/import_gguf.cpp, model/import_llama2c.cpp).
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/config.h"

namespace mlaforge {

// Reorders the rows of a Q or K projection (out, in) - or its bias (out,) - from interleaved-pair RoPE
// order to Hugging Face rotate_half order: per head, rows viewed as (d/2, 2) become (2, d/2). Row 2i of
// a head (the first of pair i) moves to i, row 2i+1 to d/2 + i. This is the permutation transformers'
// convert_llama_weights_to_hf applies to Meta/llama2.c weights, and the inverse of the one llama.cpp's
// converter applies when writing GGUF files (so the same function undoes it).
torch::Tensor interleaved_to_rotate_half(const torch::Tensor& w, int64_t n_heads, const std::string& name);

// Expected Hugging Face tensor names and shapes of a dense llama / qwen2 / mistral model.
std::map<std::string, std::vector<int64_t>> expected_dense_shapes(const ModelConfig& config);

// Throws naming `source` and the tensor when `weights` lacks a tensor of `expected`, holds one with a
// different shape, or holds one that is not expected.
void check_state_dict(const StateDict& weights, const std::map<std::string, std::vector<int64_t>>& expected,
                      const std::string& source);

}  // namespace mlaforge
