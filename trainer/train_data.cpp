#include "trainer/train_data.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "core/log.h"
#include "data/dataset.h"
#include "data/tokenizer.h"

namespace mlaforge {
namespace fs = std::filesystem;

namespace {

bool all_plain_text(const Recipe& recipe) {
  if (recipe.data.format == "text") return true;
  auto text_only = [](const std::vector<std::string>& paths, const std::string& split) {
    for (const auto& path : paths)
      for (const auto& file : resolve_data_files(path, split))
        if (fs::path(file).extension() != ".txt") return false;
    return true;
  };
  return text_only(recipe.data.train, recipe.data.split) &&
         (recipe.data.eval.empty() || text_only(recipe.data.eval, recipe.data.eval_split));
}

SchemaOptions schema_options(const Recipe& recipe, bool eval) {
  const DataRecipe& d = recipe.data;
  SchemaOptions s;
  s.format = d.format;
  s.split = eval ? d.eval_split : d.split;
  s.messages_column = d.columns.messages;
  s.conversations_column = d.columns.conversations;
  s.system_column = d.columns.system;
  s.prompt_column = d.columns.prompt;
  s.response_column = d.columns.response;
  s.text_column = d.columns.text;
  s.system_prompt = d.system_prompt;
  s.skip_malformed = d.skip_malformed;
  s.max_examples = static_cast<size_t>(d.max_examples);
  return s;
}

}  // namespace

ChatTemplate choose_chat_template(const Recipe& recipe, const ModelSource& model) {
  const std::string& name = recipe.data.chat_template;
  try {
    return resolve_chat_template(name, model.chat_template, model.path);
  } catch (const Error& e) {
    if (name != "auto" || !all_plain_text(recipe)) fail("data.chat_template: ", e.what());
    // Raw text never renders a template (data/sft_sample.h checks a template only when a conversation
    // is rendered); the placeholder only names the cache key's template field.
    log::info("data: plain text only, no chat template needed (", model.path, " has none)");
    return ChatTemplate::builtin("chatml");
  }
}

TokenCacheOptions token_cache_options(const Recipe& recipe, const ModelSource& model, bool eval) {
  const DataRecipe& d = recipe.data;
  TokenCacheOptions o;
  o.data = eval ? d.eval : d.train;
  o.schema = schema_options(recipe, eval);
  o.sample.max_seq_len = d.max_seq_len;
  o.sample.render.trained_roles = d.trained_roles;
  if (d.think_policy != "auto") o.sample.render.think = parse_think_policy(d.think_policy);
  o.cache_dir = d.cache_dir;
  // The key hashes the tokenizer's file when there is one (model folder, or model.tokenizer).
  std::error_code ec;
  if (!recipe.model.tokenizer.empty()) {
    o.tokenizer_file = recipe.model.tokenizer;
  } else if (fs::is_directory(model.path, ec)) {
    o.tokenizer_file = model.path;
  }
  o.skip_invalid = d.skip_malformed;
  o.num_threads = static_cast<int>(d.num_workers);
  return o;
}

RunData prepare_run_data(const Recipe& recipe, const ModelSource& model) {
  MLA_CHECK(model.tokenizer != nullptr, "model.path: ", model.path,
            ": no tokenizer found with the model; set model.tokenizer");
  RunData data{choose_chat_template(recipe, model), {}, std::nullopt};
  auto build = [&](bool eval) {
    const TokenCacheOptions options = token_cache_options(recipe, model, eval);
    TokenCache cache = TokenCache::open_or_build(options, *model.tokenizer, data.chat_template);
    log::info("data.", eval ? "eval" : "train", ": ", cache.size(), " samples, ", cache.num_tokens(), " tokens (",
              cache.total_trained_tokens(), " trained), ", cache.built() ? "tokenised into " : "cached in ",
              cache.folder());
    MLA_CHECK(cache.size() > 0, "data.", eval ? "eval" : "train", ": no sample left after tokenisation (",
              cache.stats().summary(), ")");
    return cache;
  };
  data.train = build(false);
  if (!recipe.data.eval.empty()) data.eval = build(true);
  return data;
}

DataLoaderOptions loader_options(const Recipe& recipe, const RunPlan& plan, const TokenCache& cache) {
  DataLoaderOptions o;
  o.micro_batch = plan.micro_batch_size;
  o.grad_accum = plan.grad_accumulation;
  o.dp_size = plan.dp;
  o.dp_rank = 0;
  o.packing = recipe.data.packing;
  o.seq_len = recipe.data.packing ? recipe.data.max_seq_len : 0;
  o.pad_to_multiple_of = 8;
  o.shuffle = recipe.data.shuffle;
  o.seed = static_cast<uint64_t>(recipe.data.seed.value_or(recipe.train.seed));
  o.epochs = 0;  // the run stops at its step count
  o.pad_id = cache.pad_id();
  return o;
}

BatchTensors to_tensors(const PackedBatch& batch, torch::Device device) {
  const std::vector<int64_t> shape = {batch.rows, batch.seq_len};
  auto i64 = [&](const std::vector<int64_t>& v) {
    return torch::from_blob(const_cast<int64_t*>(v.data()), shape, torch::kInt64).clone().to(device);
  };
  BatchTensors t;
  t.input_ids = i64(batch.input_ids);
  t.targets = i64(batch.target_ids);
  t.positions = i64(batch.position_ids);
  t.segments =
      torch::from_blob(const_cast<int32_t*>(batch.segment_ids.data()), shape, torch::kInt32).clone().to(device);
  t.trained_tokens = batch.trained_tokens;
  t.real_tokens = batch.rows * batch.seq_len - batch.pad_tokens;
  return t;
}

}  // namespace mlaforge
