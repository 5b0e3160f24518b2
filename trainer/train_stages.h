#pragma once
// `mlaforge train` of a recipe with `stages:` (trainer/recipe.h): the stages run one after the other, each
// a whole run_training (trainer/train.h) in its own folder, in every rank of the job.
//
// For each stage in order: world rank 0 reads the stage's completion record (trainer/stage_record.h) and
// broadcasts the verdict, so every rank takes the same branch; a complete stage is skipped with a log
// line, any other runs (resuming inside the stage from its newest checkpoint under checkpoint.resume:
// auto); rank 0 then marks it complete and all ranks meet at a barrier before the next stage (whose model
// is, by default, this stage's export). A rerun of a killed job therefore skips the finished stages and
// resumes the interrupted one. The run folders must be on a file system every rank sees (as for
// checkpoints and the export).
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "trainer/recipe.h"
#include "trainer/stage_record.h"
#include "trainer/train.h"

namespace mlaforge {

struct StageOutcome {
  std::string name;
  std::string output_dir;
  std::string model_dir;            // the stage's exported model
  bool skipped = false;             // complete before this job started
  std::string reason;               // the completion check's verdict
  std::optional<TrainSummary> summary;  // stages that ran
  nlohmann::json to_json() const;
};

struct StageRunOptions {
  TrainOptions train;  // passed to every stage's run_training (on_step returning false stops the job)
  // Called in every rank before each stage, with the verdict of the completion check (tests, the CLI's
  // printout of the stage's resolved recipe).
  std::function<void(const RecipeStage&, const StageStatus&)> on_stage;
};

// Runs (or skips) every stage of `recipe` in order; `recipe.stages` must not be empty. Returns one
// outcome per stage reached (fewer when on_step stopped a stage early: that stage is not marked complete).
std::vector<StageOutcome> run_training_stages(const StagedRecipe& recipe, const StageRunOptions& options = {});

}  // namespace mlaforge
