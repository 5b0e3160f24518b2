#pragma once
// Finished stages of a multi-stage run (`stages:` in a recipe, trainer/recipe.h): how a rerun of the same
// recipe recognises a stage that already ran to its end, so that a killed multi-stage job resumes exactly
// where it stopped (inside a stage, checkpoint.resume: auto does that).
//
// A stage is complete when all of these hold:
//   - <output_dir>/report.json has "complete": true and "recipe" equal to the stage's resolved recipe as
//     dump_recipe_yaml writes it (so a changed recipe, or a changed earlier stage whose export path or
//     values differ, runs again);
//   - the exported model <output_dir>/model exists (config.json and its safetensors: the next stage's
//     starting point).
// report.json is written only at the end of a run, and mark_stage_complete adds the two fields after the
// run returned, so a stage killed at any moment never looks complete. Torch-free.
#include <string>

#include "trainer/recipe.h"

namespace mlaforge {

struct StageStatus {
  bool complete = false;
  std::string reason;  // why (not) complete, for the log: "no report.json (not finished)", ...
};

// Reads the stage's run folder (never throws for a missing or unreadable report: that is "not complete").
StageStatus stage_status(const RecipeStage& stage);

// Adds "complete": true, "stage": name and "recipe": the resolved recipe to <output_dir>/report.json
// (written atomically: a temporary file renamed over it). Throws when the report is missing or corrupt.
void mark_stage_complete(const RecipeStage& stage);

}  // namespace mlaforge
