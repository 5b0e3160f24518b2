#pragma once
// --kv-budget: a latent rank per layer instead of one for all, under the same total KV cache.
//
// Layers differ a lot in how compressible their keys and values are (early layers' [K_nope; V] spectra
// decay fast, later ones' slowly), so a uniform rank over-serves some layers and starves others. Given
// each layer's BKV-PCA spectrum from a calibration pass, the allocation keeps, across all layers, the
// components with the largest *relative* energy (eigenvalue over the layer's total), i.e. it minimises
// the sum over layers of the fraction of energy discarded, subject to the budget and to per-layer
// bounds. The relative measure makes layers comparable although their activation scales differ.
#include <torch/torch.h>

#include <vector>

#include "convert/pipeline.h"

namespace mlaforge {

// spectra: per layer, eigenvalues in descending order. Returns ranks with sum == mean_rank * layers
// (exactly, when the bounds allow it), each in [min_rank, max_rank].
std::vector<int64_t> allocate_kv_ranks(const std::vector<torch::Tensor>& spectra, int64_t mean_rank, int64_t min_rank,
                                       int64_t max_rank);

// The calibration pass that measures the spectra (a one-pass streaming conversion that writes nothing),
// then the allocation. min_rank defaults to a quarter of the mean.
std::vector<int64_t> plan_kv_budget(const ModelConfig& config, const WeightReader& weights,
                                    const std::vector<std::vector<int64_t>>& calibration, const PipelineOptions& options,
                                    int64_t mean_rank, int64_t min_rank = 0);

}  // namespace mlaforge
