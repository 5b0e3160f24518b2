#pragma once
// The data side of a training run (trainer/train.h): from a recipe's `data` group and the loaded model
// to tokenised caches, and from the loader's torch-free batches to tensors on the device.
#include <torch/torch.h>

#include <optional>
#include <string>

#include "data/chat_template.h"
#include "data/data_loader.h"
#include "data/token_cache.h"
#include "model/checkpoint.h"
#include "trainer/recipe.h"

namespace mlaforge {

// The chat template a run renders conversations with: data.chat_template by name, or (auto) the model's
// own when it is one we know. A model without a template whose data is plain text (data.format text, or
// every data file a .txt) gets a placeholder it never renders; otherwise the error says which key to set.
ChatTemplate choose_chat_template(const Recipe& recipe, const ModelSource& model);

// Token cache inputs for the training split (eval == false) or the evaluation split.
TokenCacheOptions token_cache_options(const Recipe& recipe, const ModelSource& model, bool eval);

// The caches of a run: built on the first run, reopened afterwards.
struct RunData {
  ChatTemplate chat_template;
  TokenCache train;
  std::optional<TokenCache> eval;
};
RunData prepare_run_data(const Recipe& recipe, const ModelSource& model);

// Loader shapes for one process from the recipe's batch/data groups and the plan's batch sizes.
DataLoaderOptions loader_options(const Recipe& recipe, const RunPlan& plan, const TokenCache& cache);

// One micro-batch on the device. `positions` restart per packed document; `segments` keep attention
// inside a document (0 = padding).
struct BatchTensors {
  torch::Tensor input_ids;  // (B, T) int64
  torch::Tensor targets;    // (B, T) int64, kIgnoreIndex where nothing is trained
  torch::Tensor positions;  // (B, T) int64
  torch::Tensor segments;   // (B, T) int32
  int64_t trained_tokens = 0;
  int64_t real_tokens = 0;  // non-padding
};
BatchTensors to_tensors(const PackedBatch& batch, torch::Device device);

}  // namespace mlaforge
