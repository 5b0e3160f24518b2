// The multi-stage runner (see trainer/train_stages.h).
#include "trainer/train_stages.h"

#include <filesystem>

#include "core/error.h"
#include "core/log.h"
#include "parallel/communicator.h"

namespace mlaforge {

nlohmann::json StageOutcome::to_json() const {
  nlohmann::json j = {{"name", name}, {"output_dir", output_dir}, {"model_dir", model_dir}, {"skipped", skipped},
                      {"reason", reason}};
  j["report"] = summary ? summary->to_json() : nlohmann::json();
  return j;
}

std::vector<StageOutcome> run_training_stages(const StagedRecipe& recipe, const StageRunOptions& options) {
  MLA_CHECK(recipe.has_stages(), "run_training_stages: the recipe has no stages (use run_training)");
  // The stages' coordination: CPU collectives over the whole job (each stage's run makes its own world,
  // possibly NCCL, and tears it down at its end). One process needs none.
  const parallel::ProcessEnv env = parallel::detect_process_env();
  std::unique_ptr<parallel::Communicator> world =
      env.world_size > 1 ? parallel::make_world_communicator("mpi", false) : parallel::make_single_communicator();
  world->set_timeout(std::chrono::seconds(recipe.stages.front().recipe.parallel.timeout_s));
  const bool lead = world->rank() == 0;
  const size_t count = recipe.stages.size();

  std::vector<StageOutcome> outcomes;
  for (const RecipeStage& stage : recipe.stages) {
    const std::string label = "stage " + std::to_string(stage.index + 1) + "/" + std::to_string(count) + " '" +
                              stage.name + "'";
    StageStatus status;
    if (lead) status = stage_status(stage);
    const std::string verdict = parallel::broadcast_string(*world, (status.complete ? "1" : "0") + status.reason, 0);
    status.complete = verdict.at(0) == '1';
    status.reason = verdict.substr(1);
    if (options.on_stage) options.on_stage(stage, status);

    StageOutcome outcome;
    outcome.name = stage.name;
    outcome.output_dir = stage.recipe.train.output_dir;
    outcome.model_dir = (std::filesystem::path(outcome.output_dir) / "model").string();
    outcome.reason = status.reason;
    if (status.complete) {
      if (lead) log::info(label, ": ", status.reason, ": skipped");
      outcome.skipped = true;
      outcomes.push_back(std::move(outcome));
      continue;
    }
    if (lead) {
      log::info(label, ": starting (", status.reason, "); model ", stage.recipe.model.path,
                stage.model_from_previous ? " (the previous stage's export)" : "", ", run folder ", outcome.output_dir);
    }
    // A stage stopped by on_step is not finished: it is neither marked complete nor followed.
    bool stopped = false;
    TrainOptions train = options.train;
    if (options.train.on_step) {
      train.on_step = [&](const StepReport& r) {
        const bool go_on = options.train.on_step(r);
        stopped = stopped || !go_on;
        return go_on;
      };
    }
    outcome.summary = run_training(stage.recipe, train);
    outcomes.push_back(std::move(outcome));
    if (stopped) {
      if (lead) log::warn(label, ": stopped before its end; later stages not run");
      break;
    }
    if (lead) {
      mark_stage_complete(stage);
      log::info(label, ": complete");
    }
    world->barrier();  // the next stage reads this one's export and record
  }
  return outcomes;
}

}  // namespace mlaforge
