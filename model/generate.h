#pragma once
// Autoregressive decoding with a KV cache: greedy or sampled (temperature, top-k, top-p, repetition
// penalty), stopping at EOS ids or stop strings.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/decoder.h"

namespace mlaforge {

struct SamplingOptions {
  int64_t max_new_tokens = 128;
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
  double repetition_penalty = 1.0;
  uint64_t seed = 0;
  std::vector<int64_t> stop_ids;  // usually the EOS ids
};

struct GenerateResult {
  std::vector<int64_t> tokens;  // generated tokens only (without the prompt)
  std::string stop_reason;      // "eos", "length", "stop_string"
  double prefill_seconds = 0;
  double decode_seconds = 0;
  int64_t cache_bytes = 0;      // KV-cache bytes allocated
};

// Chooses the next token from logits (V,) given the tokens so far.
int64_t sample_next_token(const torch::Tensor& logits, const std::vector<int64_t>& history,
                          const SamplingOptions& options, torch::Generator& generator);

// on_token(token) is called for each new token; returning false stops generation (stop strings).
GenerateResult generate(DecoderImpl& model, const std::vector<int64_t>& prompt, const SamplingOptions& options,
                        const std::function<bool(int64_t)>& on_token = {});

}  // namespace mlaforge
