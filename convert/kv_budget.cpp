#include "convert/kv_budget.h"

#include <algorithm>
#include <queue>

#include "core/error.h"
#include "core/log.h"

namespace mlaforge {

std::vector<int64_t> allocate_kv_ranks(const std::vector<torch::Tensor>& spectra, int64_t mean_rank, int64_t min_rank,
                                       int64_t max_rank) {
  const int64_t n = static_cast<int64_t>(spectra.size());
  MLA_CHECK(n > 0, "--kv-budget: no layers");
  MLA_CHECK(min_rank >= 1 && min_rank <= mean_rank && mean_rank <= max_rank, "--kv-budget ", mean_rank,
            ": needs 1 <= min rank (", min_rank, ") <= budget <= max rank (", max_rank, ")");
  std::vector<std::vector<double>> rel(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    auto ev = spectra[static_cast<size_t>(i)].to(torch::kCPU, torch::kFloat64).clamp_min(0).contiguous();
    MLA_CHECK(ev.size(0) >= max_rank, "--kv-budget: layer ", i, " spectrum has ", ev.size(0), " values < max rank ", max_rank);
    const double total = std::max(ev.sum().item<double>(), 1e-300);
    auto* p = ev.data_ptr<double>();
    rel[static_cast<size_t>(i)].assign(p, p + ev.size(0));
    for (double& v : rel[static_cast<size_t>(i)]) v /= total;
  }
  // Start every layer at min_rank, then hand out the remaining components one at a time to the layer whose
  // next component carries the most relative energy (spectra are descending, so this greedy is optimal).
  std::vector<int64_t> ranks(static_cast<size_t>(n), min_rank);
  int64_t left = mean_rank * n - min_rank * n;
  using Item = std::pair<double, int64_t>;  // (relative energy of the layer's next component, layer)
  std::priority_queue<Item> next;
  for (int64_t i = 0; i < n; ++i)
    if (min_rank < max_rank) next.push({rel[static_cast<size_t>(i)][static_cast<size_t>(min_rank)], i});
  while (left > 0 && !next.empty()) {
    auto [energy, i] = next.top();
    next.pop();
    auto& r = ranks[static_cast<size_t>(i)];
    ++r;
    --left;
    if (r < max_rank) next.push({rel[static_cast<size_t>(i)][static_cast<size_t>(r)], i});
  }
  return ranks;
}

std::vector<int64_t> plan_kv_budget(const ModelConfig& c, const WeightReader& weights,
                                    const std::vector<std::vector<int64_t>>& calibration, const PipelineOptions& options,
                                    int64_t mean_rank, int64_t min_rank) {
  PipelineOptions po = options;
  po.out_dir.clear();
  po.keep_weights = po.keep_moments = false;
  po.keep_spectra = true;
  po.sequential = false;
  po.deployable = false;
  po.verify_engine = false;
  po.layer_ranks.clear();
  po.convert.q_lora_rank = 0;
  const ResolvedRanks rr = resolve_ranks(c, po.convert);
  const int64_t max_rank = 2 * c.num_key_value_heads * c.head_dim - rr.rope_dim;
  po.convert.kv_lora_rank = max_rank;  // the spectra do not depend on the rank; full rank is cheapest to check
  if (min_rank <= 0) min_rank = std::max<int64_t>(1, mean_rank / 4);
  PipelineResult r = convert_streaming(c, weights, calibration, {}, po);
  auto ranks = allocate_kv_ranks(r.spectra, mean_rank, min_rank, max_rank);
  std::string text;
  for (int64_t x : ranks) text += (text.empty() ? "" : " ") + std::to_string(x);
  log::info("--kv-budget ", mean_rank, " per layer: ranks ", text);
  return ranks;
}

}  // namespace mlaforge
