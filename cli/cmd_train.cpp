// mlaforge train RECIPE.yaml [key.path=value ...]: fine-tune a model as the recipe says (trainer/train.h),
// then print the evaluations (the teacher's, the start's, the end's) and the run's speed. A recipe with
// `stages:` runs its stages in order (trainer/train_stages.h), skipping those a previous job finished;
// `stages.<name>.<key>=value` overrides one stage.
#include <cstdio>
#include <iostream>

#include "cli/common.h"
#include "core/error.h"
#include "core/log.h"
#include "parallel/communicator.h"
#include "trainer/recipe.h"
#include "trainer/train.h"
#include "trainer/train_stages.h"

namespace mlaforge::cli {
namespace {

struct TrainCommandOptions {
  std::string recipe;
  std::vector<std::string> overrides;
};

void print_summary(const TrainSummary& s) {
  std::printf("\ntrained %lld steps, %lld tokens (%lld trained) in %.1f s: %.0f tokens/s; %s of %s parameters trained\n",
              static_cast<long long>(s.steps), static_cast<long long>(s.tokens),
              static_cast<long long>(s.trained_tokens), s.train_seconds, s.tokens_per_second,
              human_count(static_cast<double>(s.trainable_parameters)).c_str(),
              human_count(static_cast<double>(s.total_parameters)).c_str());
  if (s.teacher) std::printf("  teacher        perplexity %9.3f  (ce %.4f)\n", s.teacher->perplexity, s.teacher->ce);
  for (const EvalReport& e : s.evals)
    std::printf("  step %-8lld  perplexity %9.3f  (ce %.4f%s)\n", static_cast<long long>(e.step), e.perplexity, e.ce,
                s.teacher ? (", kl " + std::to_string(e.kl)).c_str() : "");
  if (!s.model_dir.empty()) std::printf("model: %s\n", s.model_dir.c_str());
  std::printf("run folder: %s (recipe.yaml, metrics.jsonl, report.json)\n", s.output_dir.c_str());
}

// A recipe with stages: each stage's resolved recipe is printed before it runs (or is skipped), its
// summary after; --json prints {"stages": [...]} at the end.
void run_stages(const std::string& file, const StagedRecipe& staged, bool lead) {
  const bool json = global_options().json;
  const size_t count = staged.stages.size();
  StageRunOptions options;
  options.on_stage = [&](const RecipeStage& stage, const StageStatus& status) {
    if (json || !lead) return;
    std::cout << "\n# " << file << ", stage " << stage.index + 1 << "/" << count << " '" << stage.name << "'";
    if (status.complete) {
      std::cout << ": " << status.reason << ": skipped\n" << std::flush;
      return;
    }
    std::cout << ", resolved:\n" << dump_recipe_yaml(stage.recipe) << std::flush;
  };
  const std::vector<StageOutcome> outcomes = run_training_stages(staged, options);
  if (!lead) return;  // every rank holds the same outcomes; one prints them
  if (json) {
    nlohmann::json j = {{"stages", nlohmann::json::array()}};
    for (const auto& outcome : outcomes) j["stages"].push_back(outcome.to_json());
    print_json(j);
    return;
  }
  for (const auto& outcome : outcomes) {
    std::printf("\n== stage '%s'%s\n", outcome.name.c_str(), outcome.skipped ? ": skipped (already complete)" : "");
    if (outcome.summary) print_summary(*outcome.summary);
  }
}

}  // namespace

void register_train(CLI::App& app) {
  auto o = std::make_shared<TrainCommandOptions>();
  auto* cmd = app.add_subcommand("train", "Fine-tune a model as a recipe describes (mlaforge validate --explain lists the keys)");
  cmd->add_option("recipe", o->recipe, "recipe YAML file")->required();
  cmd->add_option("overrides", o->overrides, "key.path=value overrides (values read as YAML): optim.lr=1e-4; stages.<name>.key.path=value for one stage");
  cmd->add_flag("--json", global_options().json, "print the final report as JSON");
  cmd->callback([o] {
    run_command([&] {
      const StagedRecipe staged = load_staged_recipe(o->recipe, o->overrides);
      const bool lead = parallel::detect_process_env().rank == 0;
      if (staged.has_stages()) {
        run_stages(o->recipe, staged, lead);
        return;
      }
      const Recipe& recipe = staged.base;
      // The resolved recipe (every default filled) before anything runs; with --json stdout holds the
      // report only. One process prints it in a parallel job.
      if (!global_options().json && lead)
        std::cout << "# " << o->recipe << ", resolved:\n" << dump_recipe_yaml(recipe) << std::flush;
      const TrainSummary summary = run_training(recipe);
      if (!lead) return;  // one process prints the report (the others' is the same)
      if (global_options().json) {
        print_json(summary.to_json());
      } else {
        print_summary(summary);
      }
    });
  });
}

}  // namespace mlaforge::cli
