#include "model/generate.h"

#include <algorithm>
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

namespace {

double seconds_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Timings must not end while the device still works on queued kernels.
void sync(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

// One sequence of the decode loop.
struct Row {
  std::vector<int64_t> history;  // prompt + generated tokens (repetition penalty)
  GenerateResult* result = nullptr;
  torch::Generator generator;
  bool done = false;
};

// Feeds the chosen tokens (B, 1) as decode step `step` (1-based) and returns the next logits (B, V).
using StepFn = std::function<torch::Tensor(const torch::Tensor& tokens, int64_t step)>;

// The decode loop shared by every entry point. `logits` (B, V): each row's distribution for its first new
// token (from the prefill). Returns the number of decode steps run.
int64_t decode_rows(std::vector<Row>& rows, torch::Tensor logits, const SamplingOptions& o, const StepFn& step,
                    const std::function<bool(size_t, int64_t)>& on_token, const LogitsObserver& on_logits) {
  const int64_t B = static_cast<int64_t>(rows.size());
  const auto device = logits.device();
  // What each row feeds next; a stopped row keeps feeding its last token (its output is ignored).
  std::vector<int64_t> fed(rows.size());
  for (size_t b = 0; b < rows.size(); ++b) fed[b] = rows[b].history.back();
  // Greedy without a penalty needs no per-row work: one argmax over the batch (one device sync).
  const bool plain_greedy = o.temperature <= 0.0 && o.repetition_penalty == 1.0;
  int64_t steps = 0;
  for (int64_t s = 0; s < o.max_new_tokens; ++s) {
    if (on_logits) on_logits(s, logits);
    torch::Tensor argmax;
    if (plain_greedy) argmax = logits.to(torch::kFloat32).argmax(-1).cpu();  // (B,)
    bool all_done = true;
    for (size_t b = 0; b < rows.size(); ++b) {
      Row& row = rows[b];
      if (row.done) continue;
      const int64_t next = plain_greedy ? argmax[static_cast<int64_t>(b)].item<int64_t>()
                                        : sample_next_token(logits[static_cast<int64_t>(b)], row.history, o,
                                                            row.generator);
      GenerateResult& r = *row.result;
      r.tokens.push_back(next);
      row.history.push_back(next);
      fed[b] = next;
      if (std::find(o.stop_ids.begin(), o.stop_ids.end(), next) != o.stop_ids.end()) {
        r.stop_reason = "eos";
        row.done = true;
      } else if (on_token && !on_token(b, next)) {
        r.stop_reason = "stop_string";
        row.done = true;
      } else if (static_cast<int64_t>(r.tokens.size()) == o.max_new_tokens) {
        row.done = true;  // "length"
      }
      all_done = all_done && row.done;
    }
    if (all_done) break;
    auto input = torch::tensor(fed, torch::kInt64).view({B, 1}).to(device);  // (B, 1)
    logits = step(input, s + 1);
    ++steps;
  }
  return steps;
}

Row make_row(const std::vector<int64_t>& prompt, GenerateResult& result, uint64_t seed) {
  Row row;
  row.history = prompt;
  row.result = &result;
  row.generator = at::detail::createCPUGenerator(seed);
  result.stop_reason = "length";
  result.prompt_tokens = static_cast<int64_t>(prompt.size());
  return row;
}

}  // namespace

int64_t BatchGenerateResult::generated_tokens() const {
  int64_t n = 0;
  for (const auto& s : sequences) n += static_cast<int64_t>(s.tokens.size());
  return n;
}

GenerateResult generate(DecoderImpl& model, const std::vector<int64_t>& prompt, const SamplingOptions& o,
                        const std::function<bool(int64_t)>& on_token, const LogitsObserver& on_logits) {
  // A fresh session sized for exactly this call: no growth, no reuse.
  DecodeSession session(model, static_cast<int64_t>(prompt.size()) + o.max_new_tokens);
  return session.generate(prompt, o, on_token, on_logits);
}

BatchGenerateResult generate_batch(DecoderImpl& model, const std::vector<std::vector<int64_t>>& prompts,
                                   const SamplingOptions& o, const std::function<bool(size_t, int64_t)>& on_token,
                                   const LogitsObserver& on_logits) {
  MLA_CHECK(!prompts.empty(), "generate_batch needs at least one prompt");
  MLA_CHECK(o.max_new_tokens > 0, "max_new_tokens must be positive");
  torch::NoGradGuard no_grad;
  const auto device = model.embed->weight.device();
  const int64_t B = static_cast<int64_t>(prompts.size());
  int64_t T = 0;  // the longest prompt
  for (size_t b = 0; b < prompts.size(); ++b) {
    MLA_CHECK(!prompts[b].empty(), "generate_batch: prompt ", b, " is empty (needs at least one token)");
    T = std::max<int64_t>(T, static_cast<int64_t>(prompts[b].size()));
  }

  // Left padding: row b's pad_b = T - L_b padding slots come first, so every row's last prompt token sits
  // at index T - 1 and the decode steps append in lock step. Padding slots hold the row's first token (any
  // valid id: they are masked out as keys and their outputs are never read).
  auto tokens = torch::empty({B, T}, torch::kInt64);      // (B, T)
  auto valid = torch::zeros({B, T}, torch::kBool);        // (B, T): false at padding
  auto positions = torch::zeros({B, T}, torch::kInt64);   // (B, T): RoPE positions of the real tokens
  auto lengths = torch::empty({B, 1}, torch::kInt64);     // (B, 1)
  bool padded = false;
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[static_cast<size_t>(b)];
    const int64_t L = static_cast<int64_t>(p.size()), pad = T - L;
    padded = padded || pad > 0;
    tokens[b].fill_(p.front());
    tokens[b].narrow(0, pad, L).copy_(torch::tensor(p, torch::kInt64));
    valid[b].narrow(0, pad, L).fill_(true);
    positions[b].narrow(0, pad, L).copy_(torch::arange(L, torch::kInt64));
    lengths[b][0] = L;
  }
  tokens = tokens.to(device);
  valid = valid.to(device);
  positions = positions.to(device);
  lengths = lengths.to(device);

  BatchGenerateResult result;
  result.sequences.resize(prompts.size());
  result.padded_length = T;
  KVCache cache = model.make_cache(T + o.max_new_tokens);
  const auto t0 = std::chrono::steady_clock::now();
  ForwardOptions prefill;
  prefill.cache = &cache;
  if (padded) {  // without padding the defaults (causal, positions 0..T-1) are the same and cheaper
    prefill.positions = positions;
    prefill.key_valid = valid;
  }
  // Logits of the last position only: the prefill's other T - 1 rows of the LM head are never needed.
  auto hidden = model.hidden(tokens, prefill);                                      // (B, T, D)
  auto logits = model.logits_from_hidden(hidden.narrow(1, T - 1, 1)).squeeze(1);  // (B, V)
  sync(device);
  const auto t1 = std::chrono::steady_clock::now();

  std::vector<Row> rows;
  for (size_t b = 0; b < prompts.size(); ++b) rows.push_back(make_row(prompts[b], result.sequences[b], o.seed + b));
  auto step = [&](const torch::Tensor& input, int64_t s) {
    ForwardOptions f;
    f.cache = &cache;
    if (padded) {
      // The token fed at step s is each row's (s-1)-th new token, at position L_b + s - 1; every key
      // after the prompt is real.
      f.positions = lengths + (s - 1);                                                          // (B, 1)
      f.key_valid = torch::cat({valid, torch::ones({B, s}, valid.options())}, 1);               // (B, T + s)
    }
    return model.forward(input, f).squeeze(1);  // (B, V)
  };
  result.steps = decode_rows(rows, logits, o, step, on_token, on_logits);
  sync(device);
  const auto t2 = std::chrono::steady_clock::now();

  result.prefill_seconds = seconds_between(t0, t1);
  result.decode_seconds = seconds_between(t1, t2);
  result.cache_bytes = cache.allocated_bytes();
  for (auto& r : result.sequences) {
    r.prefill_seconds = result.prefill_seconds;
    r.decode_seconds = result.decode_seconds;
    r.cache_bytes = result.cache_bytes;
  }
  return result;
}

DecodeSession::DecodeSession(DecoderImpl& model, int64_t initial_capacity)
    : model_(model), cache_(model.make_cache(std::max<int64_t>(initial_capacity, 1))) {}

void DecodeSession::reset() {
  cache_.reset();
  cached_.clear();
}

int64_t DecodeSession::used_cache_bytes() const {
  return cache_.allocated_bytes() / cache_.capacity() * cache_.length();
}

GenerateResult DecodeSession::generate(const std::vector<int64_t>& context, const SamplingOptions& o,
                                       const std::function<bool(int64_t)>& on_token, const LogitsObserver& on_logits) {
  MLA_CHECK(!context.empty(), "generate needs at least one prompt token");
  MLA_CHECK(o.max_new_tokens > 0, "max_new_tokens must be positive");
  torch::NoGradGuard no_grad;
  const auto device = model_.embed->weight.device();

  // Keep the cached prefix this context shares; at least one token must run to give the next logits.
  size_t keep = 0;
  while (keep < cached_.size() && keep < context.size() && cached_[keep] == context[keep]) ++keep;
  if (keep == context.size()) --keep;
  cache_.truncate(static_cast<int64_t>(keep));
  cached_.resize(keep);
  const int64_t needed = static_cast<int64_t>(context.size()) + o.max_new_tokens;
  if (needed > cache_.capacity()) cache_.reserve(std::max(needed, 2 * cache_.capacity()));

  GenerateResult result;
  std::vector<Row> rows;
  rows.push_back(make_row(context, result, o.seed));
  result.reused_tokens = static_cast<int64_t>(keep);

  const auto t0 = std::chrono::steady_clock::now();
  ForwardOptions fwd;
  fwd.cache = &cache_;
  std::vector<int64_t> suffix(context.begin() + static_cast<std::ptrdiff_t>(keep), context.end());
  auto input = torch::tensor(suffix, torch::kInt64).unsqueeze(0).to(device);  // (1, n)
  auto hidden = model_.hidden(input, fwd);                                   // (1, n, D)
  auto logits = model_.logits_from_hidden(hidden.narrow(1, hidden.size(1) - 1, 1)).squeeze(1);  // (1, V)
  cached_ = context;
  sync(device);
  const auto t1 = std::chrono::steady_clock::now();

  auto step = [&](const torch::Tensor& tokens, int64_t) {
    cached_.push_back(result.tokens.back());  // the token `tokens` (1, 1) holds
    return model_.forward(tokens, fwd).squeeze(1);  // (1, V)
  };
  auto per_sequence = [&](size_t, int64_t token) { return !on_token || on_token(token); };
  decode_rows(rows, logits, o, step, per_sequence, on_logits);
  sync(device);
  result.prefill_seconds = seconds_between(t0, t1);
  result.decode_seconds = seconds_between(t1, std::chrono::steady_clock::now());
  result.cache_bytes = cache_.allocated_bytes();
  return result;
}

}  // namespace mlaforge
