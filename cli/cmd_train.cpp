// mlaforge train RECIPE.yaml [key.path=value ...]: fine-tune a model as the recipe says (trainer/train.h),
// then print the evaluations (the teacher's, the start's, the end's) and the run's speed.
#include <cstdio>
#include <iostream>

#include "cli/common.h"
#include "core/error.h"
#include "core/log.h"
#include "parallel/communicator.h"
#include "trainer/recipe.h"
#include "trainer/train.h"

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

}  // namespace

void register_train(CLI::App& app) {
  auto o = std::make_shared<TrainCommandOptions>();
  auto* cmd = app.add_subcommand("train", "Fine-tune a model as a recipe describes (mlaforge validate --explain lists the keys)");
  cmd->add_option("recipe", o->recipe, "recipe YAML file")->required();
  cmd->add_option("overrides", o->overrides, "key.path=value overrides (values read as YAML): optim.lr=1e-4");
  cmd->add_flag("--json", global_options().json, "print the final report as JSON");
  cmd->callback([o] {
    run_command([&] {
      const Recipe recipe = load_recipe(o->recipe, o->overrides);
      // The resolved recipe (every default filled) before anything runs; with --json stdout holds the
      // report only. One process prints it in a parallel job.
      if (!global_options().json && parallel::detect_process_env().rank == 0)
        std::cout << "# " << o->recipe << ", resolved:\n" << dump_recipe_yaml(recipe) << std::flush;
      const TrainSummary summary = run_training(recipe);
      if (global_options().json) {
        print_json(summary.to_json());
      } else {
        print_summary(summary);
      }
    });
  });
}

}  // namespace mlaforge::cli
