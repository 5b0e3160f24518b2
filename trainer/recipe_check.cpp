// Recipe checks beyond single keys: impossible combinations, the parallel layout and batch sizes for a
// world size, and the checks that need the model's dimensions.
#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/error.h"
#include "trainer/recipe.h"
#include "trainer/recipe_schema.h"

namespace mlaforge {
namespace {

std::string join_numbers(const std::vector<int64_t>& values) {
  std::string out;
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  return out;
}

std::vector<int64_t> divisors(int64_t n) {
  std::vector<int64_t> out;
  for (int64_t d = 1; d <= n; ++d) {
    if (n % d == 0) out.push_back(d);
  }
  return out;
}

bool contains(const std::vector<std::string>& items, const std::string& item) {
  return std::find(items.begin(), items.end(), item) != items.end();
}

// The multiples of `step` nearest to `value` (below and above), for "not divisible" messages.
std::string nearest_multiples(int64_t value, int64_t step) {
  const int64_t below = value / step * step;
  std::vector<int64_t> near;
  if (below > 0) near.push_back(below);
  near.push_back(below + step);
  return join_numbers(near);
}

}  // namespace

int64_t ScheduleRecipe::warmup_steps(int64_t total_steps) const {
  if (warmup_is_ratio()) return static_cast<int64_t>(std::llround(warmup * static_cast<double>(total_steps)));
  return static_cast<int64_t>(warmup);
}

void validate_recipe(const Recipe& r) {
  MLA_CHECK(!r.model.path.empty(),
            "model.path: not set: name the model to train (a Hugging Face folder, a .gguf file or a llama2.c .bin)");
  MLA_CHECK(!r.data.train.empty(), "data.train: not set: name the training data (a file, folder, glob or a list of them)");

  // Run length: exactly one of the two.
  MLA_CHECK(!(r.train.max_steps && r.train.epochs), "train.max_steps (", *r.train.max_steps, ") and train.epochs (",
            recipe_detail::format_number(r.train.epochs.value_or(0)), ") are both set: set exactly one");
  MLA_CHECK(r.train.max_steps || r.train.epochs, "train: set one of max_steps and epochs (neither is set)");

  const double warmup = r.schedule.warmup;
  if (!r.schedule.warmup_is_ratio()) {
    MLA_CHECK(warmup == std::floor(warmup), "schedule.warmup: ", recipe_detail::format_number(warmup),
              " is neither a whole number of steps (>= 1) nor a fraction of the run (< 1)");
    if (r.train.max_steps) {
      MLA_CHECK(static_cast<int64_t>(warmup) <= *r.train.max_steps, "schedule.warmup: ", static_cast<int64_t>(warmup),
                " steps is more than train.max_steps (", *r.train.max_steps, ")");
    }
  }

  MLA_CHECK(!r.model.trainable.empty(), "model.trainable: empty: name what trains (up_proj, attention, all or patterns)");
  MLA_CHECK(!r.data.trained_roles.empty(), "data.trained_roles: empty: nothing would be trained");

  // Precision: one compute dtype for every weight, and bf16 only with fp32 masters (the optimizer's only
  // bf16 mode, trainer/optimizer.h).
  const std::string& dtype = r.model.dtype;
  MLA_CHECK(r.model.freeze_dtype == "auto" || r.model.freeze_dtype == dtype, "model.freeze_dtype: ",
            r.model.freeze_dtype, " with model.dtype ", dtype,
            ": a layer cannot mix fp32 and bf16 weights (use auto, or change model.dtype)");
  MLA_CHECK(dtype != "bf16" || r.optim.master_weights,
            "optim.master_weights: false with model.dtype bf16 is not supported (bf16 weights lose updates smaller "
            "than their precision; training in bf16 keeps fp32 masters)");

  MLA_CHECK(!(r.parallel.backend == "nccl" && r.train.device == "cpu"),
            "parallel.backend: nccl needs GPUs but train.device is cpu (use mpi or auto)");

  MLA_CHECK(r.train.eval_every == 0 || !r.data.eval.empty(), "train.eval_every: ", r.train.eval_every,
            " but data.eval is not set (no evaluation data)");

  if (r.checkpoint.keep_every > 0 && r.checkpoint.every > 0) {
    MLA_CHECK(r.checkpoint.keep_every % r.checkpoint.every == 0, "checkpoint.keep_every (", r.checkpoint.keep_every,
              ") is not a multiple of checkpoint.every (", r.checkpoint.every, "): no checkpoint would be kept by it");
  }

  // Batch sizes that cannot agree whatever the world size.
  const auto& b = r.batch;
  if (r.parallel.dp > 0) {
    plan_run(r, r.parallel.tp * r.parallel.dp);  // the world size is fixed: check everything now
  } else if (b.micro_batch_size && b.grad_accumulation && b.global_batch_size) {
    const int64_t per_rank = *b.micro_batch_size * *b.grad_accumulation;
    MLA_CHECK(*b.global_batch_size % per_rank == 0, "batch: global_batch_size ", *b.global_batch_size,
              " is not a multiple of micro_batch_size ", *b.micro_batch_size, " x grad_accumulation ",
              *b.grad_accumulation, " = ", per_rank, " (nearest: ", nearest_multiples(*b.global_batch_size, per_rank), ")");
  }
}

RunPlan plan_run(const Recipe& r, int64_t world_size) {
  MLA_CHECK(world_size >= 1, "world size must be at least 1, got ", world_size);
  RunPlan plan;
  plan.world_size = world_size;
  plan.tp = r.parallel.tp;
  MLA_CHECK(world_size % plan.tp == 0, "parallel.tp: ", plan.tp, " does not divide the world size ", world_size,
            " (valid: ", join_numbers(divisors(world_size)), ")");
  plan.dp = r.parallel.dp == 0 ? world_size / plan.tp : r.parallel.dp;
  MLA_CHECK(plan.tp * plan.dp == world_size, "parallel: tp ", plan.tp, " x dp ", plan.dp, " = ", plan.tp * plan.dp,
            " ranks but the world size is ", world_size, " (set parallel.dp to auto or ", world_size / plan.tp, ")");

  const auto& b = r.batch;
  const int64_t dp = plan.dp;
  if (b.micro_batch_size && b.grad_accumulation && b.global_batch_size) {
    const int64_t product = *b.micro_batch_size * *b.grad_accumulation * dp;
    MLA_CHECK(product == *b.global_batch_size, "batch: micro_batch_size ", *b.micro_batch_size, " x grad_accumulation ",
              *b.grad_accumulation, " x dp ", dp, " = ", product, " but global_batch_size is ", *b.global_batch_size,
              " (give two of the three and the third is derived)");
    plan.micro_batch_size = *b.micro_batch_size;
    plan.grad_accumulation = *b.grad_accumulation;
  } else if (b.global_batch_size) {
    // The global size is fixed: derive what is missing from what is given.
    const int64_t global = *b.global_batch_size;
    if (b.micro_batch_size || !b.grad_accumulation) {
      plan.micro_batch_size = b.micro_batch_size.value_or(1);
      const int64_t step = plan.micro_batch_size * dp;
      MLA_CHECK(global % step == 0, "batch: global_batch_size ", global, " is not divisible by micro_batch_size ",
                plan.micro_batch_size, (b.micro_batch_size ? "" : " (default)"), " x dp ", dp, " = ", step,
                " (nearest that are: ", nearest_multiples(global, step), ")");
      plan.grad_accumulation = global / step;
      if (!b.micro_batch_size) plan.derived.push_back("micro_batch_size");
      plan.derived.push_back("grad_accumulation");
    } else {
      plan.grad_accumulation = *b.grad_accumulation;
      const int64_t step = plan.grad_accumulation * dp;
      MLA_CHECK(global % step == 0, "batch: global_batch_size ", global, " is not divisible by grad_accumulation ",
                plan.grad_accumulation, " x dp ", dp, " = ", step, " (nearest that are: ", nearest_multiples(global, step),
                ")");
      plan.micro_batch_size = global / step;
      plan.derived.push_back("micro_batch_size");
    }
  } else {
    plan.micro_batch_size = b.micro_batch_size.value_or(1);
    plan.grad_accumulation = b.grad_accumulation.value_or(1);
    if (!b.micro_batch_size) plan.derived.push_back("micro_batch_size");
    if (!b.grad_accumulation) plan.derived.push_back("grad_accumulation");
  }
  plan.global_batch_size = plan.micro_batch_size * plan.grad_accumulation * dp;
  if (!b.global_batch_size) plan.derived.push_back("global_batch_size");
  plan.tokens_per_step = plan.global_batch_size * r.data.max_seq_len;
  plan.total_steps = r.train.max_steps;
  if (plan.total_steps) plan.warmup_steps = r.schedule.warmup_steps(*plan.total_steps);
  return plan;
}

std::vector<std::string> describe_run_plan(const Recipe& r, const RunPlan& p) {
  std::vector<std::string> lines;
  std::ostringstream line;
  line << "world size " << p.world_size << ": tp " << p.tp << " x dp " << p.dp;
  lines.push_back(line.str());
  line.str("");
  line << "batch: micro_batch_size " << p.micro_batch_size << " x grad_accumulation " << p.grad_accumulation << " x dp "
       << p.dp << " = global_batch_size " << p.global_batch_size << " sequences";
  if (!p.derived.empty()) {
    line << " (derived: ";
    for (size_t i = 0; i < p.derived.size(); ++i) line << (i ? ", " : "") << p.derived[i];
    line << ")";
  }
  lines.push_back(line.str());
  line.str("");
  line << "tokens per step: up to " << p.tokens_per_step << " (" << p.global_batch_size << " x data.max_seq_len "
       << r.data.max_seq_len << ")";
  lines.push_back(line.str());
  line.str("");
  const std::string decay = r.schedule.decay == "constant"
                                ? "then constant"
                                : r.schedule.decay + " decay to " + recipe_detail::format_number(r.schedule.min_lr_ratio) + " x lr";
  if (p.total_steps) {
    line << "steps: " << *p.total_steps << " (warmup " << p.warmup_steps.value_or(0) << ", " << decay << ")";
  } else {
    line << "steps: " << recipe_detail::format_number(r.train.epochs.value_or(0))
         << " epochs, counted once the data is read (warmup ";
    if (r.schedule.warmup_is_ratio()) {
      line << recipe_detail::format_number(r.schedule.warmup * 100) << "% of them";
    } else {
      line << static_cast<int64_t>(r.schedule.warmup) << " steps";
    }
    line << ", " << decay << ")";
  }
  lines.push_back(line.str());
  return lines;
}

void validate_against_model(const Recipe& r, int64_t num_heads, int64_t num_kv_heads, int64_t vocab, bool is_mla,
                            int world_size) {
  MLA_CHECK(num_heads > 0 && num_kv_heads > 0 && vocab > 0, "validate_against_model: bad model dimensions (heads ",
            num_heads, ", KV heads ", num_kv_heads, ", vocab ", vocab, ")");
  MLA_CHECK(world_size >= 1, "world size must be at least 1, got ", world_size);
  // A tp is possible when it splits the world, the query heads, (GQA) the KV heads, and the vocabulary.
  // MLA keeps one shared latent per token, replicated on every rank, so only the query heads split.
  auto fits = [&](int64_t tp) {
    return world_size % tp == 0 && num_heads % tp == 0 && (is_mla || num_kv_heads % tp == 0) && vocab % tp == 0;
  };
  std::vector<int64_t> valid;
  for (int64_t d : divisors(world_size)) {
    if (fits(d)) valid.push_back(d);
  }
  const int64_t tp = r.parallel.tp;
  const std::string choices = " (valid parallel.tp for world size " + std::to_string(world_size) + ": " +
                              join_numbers(valid) + ")";
  MLA_CHECK(world_size % tp == 0, "parallel.tp: ", tp, " does not divide the world size ", world_size, choices);
  MLA_CHECK(num_heads % tp == 0, "parallel.tp: ", tp, " does not divide the model's ", num_heads,
            " attention heads (num_attention_heads)", choices);
  MLA_CHECK(is_mla || num_kv_heads % tp == 0, "parallel.tp: ", tp, " does not divide the model's ", num_kv_heads,
            " KV heads (num_key_value_heads)", choices);
  MLA_CHECK(vocab % tp == 0, "parallel.tp: ", tp, " does not divide the vocabulary size ", vocab,
            " (the embedding and LM head are split over the vocabulary)", choices);
  MLA_CHECK(is_mla || !contains(r.model.trainable, "up_proj"),
            "model.trainable: up_proj selects the MLA up-projections, but ", r.model.path,
            " is a GQA model (convert it first with `mlaforge convert`, or train attention/all)");
}

}  // namespace mlaforge
