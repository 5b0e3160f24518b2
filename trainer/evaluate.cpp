#include "trainer/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/progress.h"
#include "data/tokenizer.h"

namespace mlaforge {

std::vector<std::vector<int64_t>> tokenize_documents(const Tokenizer& tokenizer, const ModelConfig& config,
                                                     const std::vector<std::string>& documents,
                                                     int64_t max_seq_len) {
  std::optional<int64_t> bos = tokenizer.bos_id ? std::optional<int64_t>(*tokenizer.bos_id) : config.bos_token_id;
  std::vector<std::vector<int64_t>> out;
  out.reserve(documents.size());
  for (const std::string& doc : documents) {
    std::vector<int64_t> ids;
    if (bos) ids.push_back(*bos);
    for (int32_t id : tokenizer.encode(doc, /*add_special=*/false)) ids.push_back(id);
    if (static_cast<int64_t>(ids.size()) > max_seq_len) ids.resize(static_cast<size_t>(max_seq_len));
    out.push_back(std::move(ids));
  }
  return out;
}

EvalResult evaluate_nll(DecoderImpl& model, const std::vector<std::vector<int64_t>>& documents,
                        const EvalOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  torch::NoGradGuard no_grad;
  const auto device = model.embed->weight.device();

  // Longest first, so each batch pads little. Right padding needs no mask: under the causal mask real
  // tokens never see the padding that follows them, and padded positions are not scored.
  std::vector<size_t> order(documents.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return documents[a].size() > documents[b].size(); });

  double total_nll = 0;
  int64_t total_tokens = 0, done = 0;
  Progress progress("eval", static_cast<int64_t>(documents.size()), options.progress);
  size_t i = 0;
  while (i < order.size()) {
    const int64_t len = static_cast<int64_t>(documents[order[i]].size());
    const int64_t batch = std::max<int64_t>(1, options.batch_tokens / std::max<int64_t>(len, 1));
    const size_t end = std::min(order.size(), i + static_cast<size_t>(batch));
    if (len < 2) {  // nothing to predict
      done += static_cast<int64_t>(end - i);
      i = end;
      continue;
    }
    auto tokens = torch::zeros({static_cast<int64_t>(end - i), len}, torch::kInt64);
    auto valid = torch::zeros({static_cast<int64_t>(end - i), len}, torch::kBool);
    for (size_t b = i; b < end; ++b) {
      const auto& doc = documents[order[b]];
      auto row = torch::tensor(doc, torch::kInt64);
      tokens[static_cast<int64_t>(b - i)].narrow(0, 0, row.size(0)).copy_(row);
      valid[static_cast<int64_t>(b - i)].narrow(0, 0, row.size(0)).fill_(true);
    }
    tokens = tokens.to(device);
    valid = valid.to(device);
    auto logits = model.forward(tokens).to(torch::kFloat32);  // (B, T, V)
    auto logp = torch::log_softmax(logits.narrow(1, 0, len - 1), -1);
    auto target = tokens.narrow(1, 1, len - 1);
    auto nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1);  // (B, T-1)
    auto scored = valid.narrow(1, 1, len - 1);
    total_nll += nll.masked_select(scored).to(torch::kFloat64).sum().item<double>();
    total_tokens += scored.sum().item<int64_t>();
    done += static_cast<int64_t>(end - i);
    i = end;
    char extra[64];
    std::snprintf(extra, sizeof(extra), "nll %.4f", total_tokens ? total_nll / total_tokens : 0.0);
    progress.update(done, extra);
  }
  progress.finish();
  MLA_CHECK(total_tokens > 0, "evaluation scored no tokens (documents too short?)");
  EvalResult r;
  r.documents = static_cast<int64_t>(documents.size());
  r.tokens = total_tokens;
  r.mean_nll = total_nll / static_cast<double>(total_tokens);
  r.perplexity = std::exp(r.mean_nll);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace mlaforge
