#include "model/generate.h"

#include <chrono>

#include "core/error.h"

namespace mlaforge {

int64_t sample_next_token(const torch::Tensor& logits_in, const std::vector<int64_t>& history,
                          const SamplingOptions& o, torch::Generator& generator) {
  auto logits = logits_in.to(torch::kFloat32).clone();  // (V,)
  if (o.repetition_penalty != 1.0 && !history.empty()) {
    // CTRL-style penalty as in transformers: divide positive logits, multiply negative ones.
    auto ids = std::get<0>(at::_unique(torch::tensor(history, torch::kInt64))).to(logits.device());
    auto seen = logits.index_select(0, ids);
    seen = torch::where(seen > 0, seen / o.repetition_penalty, seen * o.repetition_penalty);
    logits.index_copy_(0, ids, seen);
  }
  if (o.temperature <= 0.0) return logits.argmax().item<int64_t>();

  logits = logits / o.temperature;
  if (o.top_k > 0 && o.top_k < logits.size(0)) {
    auto kth = std::get<0>(logits.topk(o.top_k)).min();
    logits = logits.masked_fill(logits < kth, -std::numeric_limits<float>::infinity());
  }
  if (o.top_p < 1.0) {
    auto [sorted, idx] = logits.sort(/*dim=*/0, /*descending=*/true);
    auto cumulative = torch::softmax(sorted, 0).cumsum(0);
    // Drop tokens once the mass before them already reaches top_p (the top token always stays).
    auto remove = (cumulative - torch::softmax(sorted, 0)) >= o.top_p;
    logits = logits.index_fill(0, idx.masked_select(remove), -std::numeric_limits<float>::infinity());
  }
  auto probs = torch::softmax(logits, 0);
  return torch::multinomial(probs.cpu(), 1, false, generator).item<int64_t>();
}

GenerateResult generate(DecoderImpl& model, const std::vector<int64_t>& prompt, const SamplingOptions& o,
                        const std::function<bool(int64_t)>& on_token) {
  MLA_CHECK(!prompt.empty(), "generate needs at least one prompt token");
  torch::NoGradGuard no_grad;
  const auto device = model.embed->weight.device();
  const int64_t capacity = static_cast<int64_t>(prompt.size()) + o.max_new_tokens;
  KVCache cache = model.make_cache(capacity);
  torch::Generator generator = at::detail::createCPUGenerator(o.seed);

  GenerateResult result;
  std::vector<int64_t> history = prompt;
  auto t0 = std::chrono::steady_clock::now();
  ForwardOptions fwd;
  fwd.cache = &cache;
  auto input = torch::tensor(prompt, torch::kInt64).unsqueeze(0).to(device);  // (1, T)
  auto logits = model.forward(input, fwd).select(1, -1).squeeze(0);          // (V,)
  auto t1 = std::chrono::steady_clock::now();
  result.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  result.stop_reason = "length";
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    const int64_t next = sample_next_token(logits, history, o, generator);
    result.tokens.push_back(next);
    history.push_back(next);
    if (std::find(o.stop_ids.begin(), o.stop_ids.end(), next) != o.stop_ids.end()) {
      result.stop_reason = "eos";
      break;
    }
    if (on_token && !on_token(next)) {
      result.stop_reason = "stop_string";
      break;
    }
    if (step + 1 == o.max_new_tokens) break;
    input = torch::full({1, 1}, next, torch::TensorOptions().dtype(torch::kInt64).device(device));
    logits = model.forward(input, fwd).select(1, -1).squeeze(0);
  }
  result.decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  result.cache_bytes = cache.allocated_bytes();
  return result;
}

}  // namespace mlaforge
