// Multi-stage recipes (trainer/recipe.h `stages:`): merged values, derived defaults per stage, overrides
// addressed to one stage, every error with its location, and the completion record a rerun reads
// (trainer/stage_record.h).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "core/error.h"
#include "tests/support/test_support.h"
#include "trainer/recipe.h"
#include "trainer/stage_record.h"

namespace mlaforge {
namespace {

namespace fs = std::filesystem;

std::string error_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A base recipe and two stages, as an R1 distillation recipe has them. Line numbers matter (errors).
const char* kStaged =
    "model: {path: /models/student-mla, trainable: all}\n"              // 1
    "teacher: {path: /models/teacher, kl_ratio: 0.5, temperature: 2}\n"  // 2
    "data: {train: [general.jsonl, more.jsonl], max_seq_len: 4096}\n"    // 3
    "train: {max_steps: 1000, output_dir: /runs/r1}\n"                   // 4
    "optim: {lr: 2.0e-5, grad_clip: 0.2}\n"                              // 5
    "stages:\n"                                                          // 6
    "  - name: recover\n"                                                // 7
    "    teacher: {kl_ratio: 1.0}\n"                                     // 8
    "    train: {max_steps: 200}\n"                                      // 9
    "  - name: sft\n"                                                    // 10
    "    teacher:\n"                                                     // 11
    "      kl_ratio: 0.2\n"                                              // 12
    "    data: {train: r1.parquet, packing: false}\n";                   // 13

StagedRecipe parse(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return parse_staged_recipe_text(yaml, "recipe.yaml", "/base", overrides, "myrun");
}
std::string parse_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return error_of([&] { parse(yaml, overrides); });
}

TEST(RecipeStages, StagesAreTheBaseWithTheirMappingMergedOver) {
  const StagedRecipe r = parse(kStaged);
  ASSERT_TRUE(r.has_stages());
  ASSERT_EQ(r.stages.size(), 2u);
  const RecipeStage& recover = r.stages[0];
  const RecipeStage& sft = r.stages[1];
  EXPECT_EQ(recover.name, "recover");
  EXPECT_EQ(recover.index, 0);
  EXPECT_EQ(recover.where, "recipe.yaml:7:5");
  EXPECT_EQ(sft.where, "recipe.yaml:10:5");

  // recover: its own kl_ratio and max_steps; everything else the base's.
  EXPECT_EQ(recover.recipe.teacher.kl_ratio, 1.0);
  EXPECT_EQ(recover.recipe.teacher.temperature, 2.0);  // a group merges key by key
  EXPECT_EQ(recover.recipe.teacher.path, "/models/teacher");
  EXPECT_EQ(recover.recipe.train.max_steps, 200);
  EXPECT_EQ(recover.recipe.data.train, (std::vector<std::string>{"/base/general.jsonl", "/base/more.jsonl"}));
  EXPECT_TRUE(recover.recipe.data.packing);
  EXPECT_EQ(recover.recipe.optim.lr, 2e-5);
  EXPECT_EQ(recover.recipe.optim.grad_clip, 0.2);
  EXPECT_EQ(recover.recipe.model.path, "/models/student-mla");
  EXPECT_FALSE(recover.model_from_previous);
  EXPECT_EQ(recover.recipe.train.output_dir, "/runs/r1/recover");
  EXPECT_EQ(recover.recipe.data.cache_dir, "/runs/r1/data_cache");  // shared by the stages
  EXPECT_EQ(recover.recipe.data.seed, 42);

  // sft: a list replaces the whole list; the model is recover's export; the teacher stays the original.
  EXPECT_EQ(sft.recipe.teacher.kl_ratio, 0.2);
  EXPECT_EQ(sft.recipe.teacher.path, "/models/teacher");
  EXPECT_EQ(sft.recipe.train.max_steps, 1000);
  EXPECT_EQ(sft.recipe.data.train, (std::vector<std::string>{"/base/r1.parquet"}));
  EXPECT_FALSE(sft.recipe.data.packing);
  EXPECT_EQ(sft.recipe.data.max_seq_len, 4096);
  EXPECT_EQ(sft.recipe.model.path, "/runs/r1/recover/model");
  EXPECT_TRUE(sft.model_from_previous);
  EXPECT_EQ(sft.recipe.train.output_dir, "/runs/r1/sft");
  EXPECT_EQ(sft.recipe.data.cache_dir, "/runs/r1/data_cache");

  // The base keeps what was written outside stages (it is what the stages inherit).
  EXPECT_EQ(r.base.teacher.kl_ratio, 0.5);
  EXPECT_EQ(r.base.train.output_dir, "/runs/r1");

  // Each stage's recipe is an ordinary one: it dumps and parses back equal (what its run folder keeps).
  for (const auto& stage : r.stages) {
    EXPECT_EQ(parse_recipe_text(dump_recipe_yaml(stage.recipe), "dump", "/", {}, "x"), stage.recipe) << stage.name;
  }
}

TEST(RecipeStages, DerivedDefaultsFollowTheStage) {
  // No output_dir: out/<name>/<stage> under the current directory; a stage's own seed is its data seed.
  const StagedRecipe r = parse(
      "model: {path: /m}\ndata: {train: /d}\ntrain: {max_steps: 10}\n"
      "stages:\n  - name: a\n    train: {seed: 7}\n  - name: b\n    data: {cache_dir: /cache}\n"
      "  - name: c\n    model: {path: /other}\n    train: {output_dir: /elsewhere}\n");
  const std::string out = (fs::current_path() / "out" / "myrun").string();
  EXPECT_EQ(r.stages[0].recipe.train.output_dir, out + "/a");
  EXPECT_EQ(r.stages[0].recipe.data.seed, 7);
  EXPECT_EQ(r.stages[1].recipe.data.seed, 42);
  EXPECT_EQ(r.stages[1].recipe.data.cache_dir, "/cache");
  EXPECT_EQ(r.stages[1].recipe.model.path, out + "/a/model");
  // A stage that names its model does not start from the previous export; its own folder is kept as set.
  EXPECT_EQ(r.stages[2].recipe.model.path, "/other");
  EXPECT_FALSE(r.stages[2].model_from_previous);
  EXPECT_EQ(r.stages[2].recipe.train.output_dir, "/elsewhere");
}

TEST(RecipeStages, Overrides) {
  const StagedRecipe r = parse(kStaged, {"optim.lr=1e-5", "teacher.kl_ratio=0.3", "stages.sft.optim.lr=3e-5",
                                         "stages.recover.train.output_dir=/o/rec", "stages.sft.data.packing=true"});
  // A base override reaches every stage that does not set the key itself.
  EXPECT_EQ(r.stages[0].recipe.optim.lr, 1e-5);
  EXPECT_EQ(r.stages[0].recipe.teacher.kl_ratio, 1.0);  // the stage's own value wins over the base's
  EXPECT_EQ(r.stages[1].recipe.teacher.kl_ratio, 0.2);
  // A stage override reaches its stage only, after the stage's mapping.
  EXPECT_EQ(r.stages[1].recipe.optim.lr, 3e-5);
  EXPECT_TRUE(r.stages[1].recipe.data.packing);
  EXPECT_EQ(r.stages[0].recipe.train.output_dir, "/o/rec");
  EXPECT_EQ(r.stages[1].recipe.model.path, "/o/rec/model");
  // Naming the model in an override detaches the stage from the previous export.
  const StagedRecipe m = parse(kStaged, {"stages.sft.model.path=/m2"});
  EXPECT_EQ(m.stages[1].recipe.model.path, "/m2");
  EXPECT_FALSE(m.stages[1].model_from_previous);

  EXPECT_EQ(parse_error(kStaged, {"stages.sft.optim.lr=abc"}),
            "override 'stages.sft.optim.lr=abc': stages.sft.optim.lr: expected a number, got 'abc'");
  EXPECT_EQ(parse_error(kStaged, {"stages.sft.optim.lerning_rate=1"}),
            "override 'stages.sft.optim.lerning_rate=1': stages.sft.optim.lerning_rate: unknown key; did you mean "
            "optim.lr?");
  EXPECT_EQ(parse_error(kStaged, {"stages.sfft.optim.lr=1e-5"}),
            "override 'stages.sfft.optim.lr=1e-5': no stage is called 'sfft' (stages: recover, sft)");
  EXPECT_EQ(parse_error(kStaged, {"stages.sft=1"}), "override 'stages.sft=1': expected stages.<name>.<key.path>=value");
  EXPECT_EQ(parse_error("model: {path: /m}\ndata: {train: /d}\ntrain: {max_steps: 1}\n", {"stages.a.optim.lr=1"}),
            "override 'stages.a.optim.lr=1': the recipe has no stages (a stages: list addresses them as "
            "stages.<name>.<key>=value)");
  // Overrides are applied before each stage is validated.
  EXPECT_EQ(parse_error(kStaged, {"stages.recover.train.epochs=1"}),
            "recipe.yaml:7:5: stages[0] (recover): train.max_steps (200) and train.epochs (1.0) are both set: set "
            "exactly one");
}

TEST(RecipeStages, ErrorsNameTheStageAndTheLine) {
  const std::string base = "model: {path: /m}\ndata: {train: /d}\ntrain: {max_steps: 10}\nstages:\n";  // 4 lines
  auto err = [&](const std::string& stages) { return parse_error(base + stages); };
  // Keys inside a stage: the same schema, the stage's position in the key.
  EXPECT_EQ(err("  - name: a\n  - name: b\n    teacher: {kl_ratio: 1.5}\n"),
            "recipe.yaml:7:25: stages[1].teacher.kl_ratio: must be in [0, 1], got 1.5");
  EXPECT_EQ(err("  - name: a\n    optim:\n      lerning_rate: 1e-4\n"),
            "recipe.yaml:7:7: stages[0].optim.lerning_rate: unknown key; did you mean optim.lr?");
  EXPECT_EQ(err("  - name: a\n    optimizer: {lr: 1}\n"), "recipe.yaml:6:5: stages[0].optimizer: unknown group; did you mean optim?");
  EXPECT_EQ(err("  - name: a\n    nmae: b\n"), "recipe.yaml:6:5: stages[0].nmae: unknown key; did you mean name?");
  EXPECT_EQ(err("  - name: a\n    model:\n      path: ${MLA_STAGE_TEST_UNSET}\n"),
            "recipe.yaml:7:13: stages[0].model.path: environment variable MLA_STAGE_TEST_UNSET is not set (in "
            "'${MLA_STAGE_TEST_UNSET}'; write ${MLA_STAGE_TEST_UNSET:-fallback} for a default)");
  EXPECT_EQ(err("  - name: a\n    train: {max_steps: 1}\n    train: {max_steps: 2}\n"),
            "recipe.yaml:7:5: stages[0].train: duplicate key");
  // Names.
  EXPECT_EQ(err("  - teacher: {kl_ratio: 1}\n"),
            "recipe.yaml:5:5: stages[0]: name: not set: every stage needs a name ([a-z0-9_-]+)");
  EXPECT_EQ(err("  - name: Recover\n"),
            "recipe.yaml:5:11: stages[0].name: 'Recover' is not a valid stage name (lower-case letters, digits, '_' "
            "and '-' only: it names the stage's folder)");
  EXPECT_EQ(err("  - name: a\n  - name: a\n"), "recipe.yaml:6:11: stages[1].name: 'a' is also the name of stages[0]");
  EXPECT_EQ(err("  - name: [a]\n"), "recipe.yaml:5:11: stages[0].name: expected a stage name ([a-z0-9_-]+), got a list");
  // The list itself.
  EXPECT_EQ(err("  name: a\n"),
            "recipe.yaml:5:3: stages: expected a non-empty list of stages (- name: ..., then the groups the stage "
            "changes), got a mapping");
  EXPECT_EQ(parse_error(base.substr(0, base.size() - 1) + " []\n"),
            "recipe.yaml:4:9: stages: expected a non-empty list of stages (- name: ..., then the groups the stage "
            "changes), got a list");
  EXPECT_EQ(err("  - a\n"),
            "recipe.yaml:5:5: stages[0]: expected a mapping (name: ..., then any recipe groups: teacher:, train:, ...), "
            "got 'a'");
  EXPECT_EQ(err("  - name: a\n    stages: []\n"), "recipe.yaml:6:5: stages[0].stages: a stage cannot contain stages");
  // Whole-recipe checks run per stage, located at the stage.
  EXPECT_EQ(err("  - name: a\n  - name: b\n    train: {epochs: 1}\n"),
            "recipe.yaml:6:5: stages[1] (b): train.max_steps (10) and train.epochs (1.0) are both set: set exactly one");
  EXPECT_EQ(err("  - name: a\n  - name: b\n    train: {max_steps: null, epochs: 1}\n"), "");
  EXPECT_EQ(err("  - name: a\n    train: {export_at_end: false}\n  - name: b\n"),
            "recipe.yaml:5:5: stages[0] (a): train.export_at_end: false, but every stage but the last must export its "
            "model: the next stage (b) starts from it, and a rerun recognises a finished stage by its report and "
            "exported model");
  EXPECT_EQ(err("  - name: a\n  - name: b\n    train: {export_at_end: false}\n"), "");  // the last may skip it
  EXPECT_EQ(err("  - name: a\n    train: {output_dir: /x}\n  - name: b\n    train: {output_dir: /x}\n"),
            "recipe.yaml:7:5: stages[1] (b): train.output_dir /x is also stage a's: every stage needs its own folder");
  // The base need not be a run by itself (a stage may supply what it lacks), but each stage must be.
  EXPECT_EQ(parse_error("data: {train: /d}\ntrain: {max_steps: 1}\nstages:\n  - name: a\n    model: {path: /m}\n  - name: b\n")
                .empty(),
            true);
  EXPECT_EQ(parse_error("data: {train: /d}\ntrain: {max_steps: 1}\nstages:\n  - name: a\n"),
            "recipe.yaml:4:5: stages[0] (a): model.path: not set: name the model to train (a Hugging Face folder, a "
            ".gguf file or a llama2.c .bin)");
  // The base's own keys are still checked.
  EXPECT_EQ(parse_error("optim: {lr: x}\nstages:\n  - name: a\n"), "recipe.yaml:1:13: optim.lr: expected a number, got 'x'");
}

TEST(RecipeStages, RecipesWithoutStagesAreUnchanged) {
  const std::string plain = "model: {path: /m}\ndata: {train: /d}\ntrain: {max_steps: 10}\n";
  const StagedRecipe r = parse(plain, {"optim.lr=1e-4"});
  EXPECT_FALSE(r.has_stages());
  EXPECT_EQ(r.base, parse_recipe_text(plain, "recipe.yaml", "/base", {"optim.lr=1e-4"}, "myrun"));
  EXPECT_EQ(r.base.optim.lr, 1e-4);
  // `stages: null` is no stages; a plain recipe is still validated as a whole.
  EXPECT_FALSE(parse(plain + "stages:\n").has_stages());
  EXPECT_EQ(parse_error("model: {path: /m}\ntrain: {max_steps: 10}\n"),
            "recipe.yaml: data.train: not set: name the training data (a file, folder, glob or a list of them)");
  // The single-run API refuses a staged recipe instead of running its base.
  EXPECT_EQ(error_of([] { parse_recipe_text(kStaged, "recipe.yaml", "/base"); }),
            "recipe.yaml: the recipe has stages (recover, sft): it is several runs, read it with load_staged_recipe "
            "(`mlaforge train` runs the stages in order)");
}

TEST(RecipeStages, LoadResolvesRelativeToTheRecipeFolder) {
  const std::string dir = testing::make_temp_dir("recipe_stages");
  fs::create_directories(dir + "/recipes");
  std::ofstream(dir + "/recipes/two.yaml") << "model: {path: ../models/s}\ndata: {train: a.txt}\ntrain: {max_steps: 2}\n"
                                              "stages:\n  - name: one\n  - name: two\n    data: {train: b.txt}\n";
  const StagedRecipe r = load_staged_recipe(dir + "/recipes/two.yaml");
  EXPECT_EQ(r.stages[0].recipe.model.path, dir + "/models/s");
  EXPECT_EQ(r.stages[1].recipe.data.train, std::vector<std::string>{dir + "/recipes/b.txt"});
  EXPECT_EQ(r.stages[0].recipe.train.output_dir, (fs::current_path() / "out" / "two" / "one").string());
  EXPECT_EQ(r.stages[1].where, dir + "/recipes/two.yaml:6:5");
  EXPECT_EQ(error_of([&] { load_recipe(dir + "/recipes/two.yaml"); }),
            dir + "/recipes/two.yaml: the recipe has stages (one, two): it is several runs, read it with "
                  "load_staged_recipe (`mlaforge train` runs the stages in order)");
}

TEST(RecipeStages, CompletionRecord) {
  const std::string dir = testing::make_temp_dir("stage_record");
  const StagedRecipe r = parse(kStaged, {"train.output_dir=" + dir});
  const RecipeStage& stage = r.stages[0];
  const fs::path out = stage.recipe.train.output_dir;
  StageStatus s = stage_status(stage);
  EXPECT_FALSE(s.complete);
  EXPECT_EQ(s.reason, "no " + (out / "report.json").string() + " (the stage has not finished)");
  EXPECT_NE(error_of([&] { mark_stage_complete(stage); }).find("report.json: missing or not JSON"), std::string::npos);

  // A run's own report (written at its end) is not yet the stage's completion.
  fs::create_directories(out);
  std::ofstream(out / "report.json") << "{\"steps\": 200}\n";
  EXPECT_EQ(stage_status(stage).reason, (out / "report.json").string() + " does not say complete");
  mark_stage_complete(stage);
  std::ifstream in(out / "report.json");
  const auto report = nlohmann::json::parse(in);
  EXPECT_EQ(report["steps"], 200);  // the run's fields kept
  EXPECT_EQ(report["complete"], true);
  EXPECT_EQ(report["stage"], "recover");
  EXPECT_EQ(report["recipe"], dump_recipe_yaml(stage.recipe));
  EXPECT_FALSE(fs::exists(out / "report.json.tmp"));
  // ... and the exported model must be there.
  EXPECT_EQ(stage_status(stage).reason, "its exported model " + (out / "model").string() + " is missing");
  fs::create_directories(out / "model");
  std::ofstream(out / "model" / "config.json") << "{}";
  EXPECT_FALSE(stage_status(stage).complete);  // no weights yet
  std::ofstream(out / "model" / "model.safetensors") << "x";
  s = stage_status(stage);
  EXPECT_TRUE(s.complete) << s.reason;
  EXPECT_EQ(s.reason, "complete (" + (out / "report.json").string() + ", model " + (out / "model").string() + ")");

  // Another recipe for the same folder (a changed value) is not this stage's completion.
  const StagedRecipe changed = parse(kStaged, {"train.output_dir=" + dir, "stages.recover.optim.lr=1e-4"});
  EXPECT_EQ(stage_status(changed.stages[0]).reason, (out / "report.json").string() + " is from a run of another recipe");
  // A corrupt report is "not complete", never an exception.
  std::ofstream(out / "report.json") << "{\"complete\": tr";
  EXPECT_EQ(stage_status(stage).reason, (out / "report.json").string() + " is not readable JSON");
}

}  // namespace
}  // namespace mlaforge
