#pragma once
// Autoregressive decoding with a KV cache: greedy or sampled (temperature, top-k, top-p, repetition
// penalty), stopping at EOS ids or stop strings. Three entry points share one decode loop:
//
//   generate()        one sequence, a fresh cache.
//   generate_batch()  B sequences decoded together in one cache. Prompts of different lengths are
//                     left-padded to the longest: padding keys are masked out (ForwardOptions::key_valid)
//                     and every row's RoPE positions count its real tokens only, so row b computes what
//                     generate() computes for prompt b (tests/torch/generate_batch_test.cpp: same tokens,
//                     logits within 1e-5). Each row stops on its own; a stopped row stays in the batch
//                     (fed its last token, output ignored) until every row has stopped, because removing
//                     it would mean copying the whole cache.
//   DecodeSession     one sequence whose cache outlives a call (chat): a call keeps the cached prefix it
//                     shares with the new context and prefills only the rest.
//
// The cache is whatever the model's attention keeps (model/kv_cache.h): K and V for GQA layers; for MLA
// layers only the latent and the rope key, read by the absorbed path (MLAPath::automatic takes it
// whenever a cache is passed).
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
  uint64_t seed = 0;              // generate_batch: sequence b samples with seed + b
  std::vector<int64_t> stop_ids;  // usually the EOS ids
};

struct GenerateResult {
  std::vector<int64_t> tokens;  // generated tokens only (without the prompt); ends with the stop id on "eos"
  std::string stop_reason;      // "eos", "length", "stop_string"
  double prefill_seconds = 0;
  double decode_seconds = 0;
  int64_t cache_bytes = 0;      // KV-cache bytes allocated
  int64_t prompt_tokens = 0;    // tokens of the prompt / context
  int64_t reused_tokens = 0;    // of those, already in the cache from an earlier call (DecodeSession)
};

struct BatchGenerateResult {
  std::vector<GenerateResult> sequences;  // one per prompt, in order (timings and cache bytes: the batch's)
  double prefill_seconds = 0;
  double decode_seconds = 0;
  int64_t steps = 0;        // decode steps run (forwards after the prefill)
  int64_t cache_bytes = 0;  // the batch's KV cache
  int64_t padded_length = 0;  // the longest prompt: every row's prefill length
  int64_t generated_tokens() const;
};

// Chooses the next token from logits (V,) given the tokens so far.
int64_t sample_next_token(const torch::Tensor& logits, const std::vector<int64_t>& history,
                          const SamplingOptions& options, torch::Generator& generator);

// Sees the logits every decode step chooses from: (B, V) for the batch's B rows (rows of stopped
// sequences hold meaningless values), (1, V) for one sequence. Step 0 is the prefill's last position.
using LogitsObserver = std::function<void(int64_t step, const torch::Tensor& logits)>;

// on_token(token) is called for each new token except a stop id; returning false stops generation
// (stop strings).
GenerateResult generate(DecoderImpl& model, const std::vector<int64_t>& prompt, const SamplingOptions& options,
                        const std::function<bool(int64_t)>& on_token = {}, const LogitsObserver& on_logits = {});

// on_token(sequence, token) as above, per sequence: returning false stops that sequence only.
BatchGenerateResult generate_batch(DecoderImpl& model, const std::vector<std::vector<int64_t>>& prompts,
                                   const SamplingOptions& options,
                                   const std::function<bool(size_t, int64_t)>& on_token = {},
                                   const LogitsObserver& on_logits = {});

// One sequence whose KV cache is kept between calls. generate(context) compares `context` with the
// tokens whose keys/values the cache holds (the previous context plus the generated tokens fed back):
// the longest common prefix stays (keys and values at a position depend only on the tokens before it),
// the rest of the cache is dropped and the rest of `context` is prefilled. A chat whose re-rendered
// conversation extends the previous one prefills only the new turn; one whose template rewrites the
// history (reasoning stripped from earlier turns) re-prefills from the first changed token. At least the
// last context token is always run, for its logits. The cache grows (doubling) as needed.
class DecodeSession {
 public:
  explicit DecodeSession(DecoderImpl& model, int64_t initial_capacity = 256);

  GenerateResult generate(const std::vector<int64_t>& context, const SamplingOptions& options,
                          const std::function<bool(int64_t)>& on_token = {}, const LogitsObserver& on_logits = {});
  void reset();  // forget everything (the buffers stay allocated)

  // The tokens whose keys/values the cache holds, in position order.
  const std::vector<int64_t>& cached_tokens() const { return cached_; }
  const KVCache& cache() const { return cache_; }
  // Bytes of cache the cached tokens occupy (allocated_bytes covers the whole capacity).
  int64_t used_cache_bytes() const;

 private:
  DecoderImpl& model_;
  KVCache cache_;
  std::vector<int64_t> cached_;
};

}  // namespace mlaforge
