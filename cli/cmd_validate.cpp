// mlaforge validate RECIPE.yaml [key.path=value ...] [--world-size N]: check a run recipe without running
// it, and print it resolved (every default filled) with the batch sizes derived for the world size.
// `mlaforge validate --explain` prints every recipe key instead (recipes/README.md is that output).
// A recipe with `stages:` is checked stage by stage (each resolved recipe, plan and file checks printed);
// --estimate adds the paper estimate of memory per GPU and throughput (trainer/run_estimate.h).
#include <algorithm>
#include <filesystem>
#include <iostream>

#include "cli/common.h"
#include "core/error.h"
#include "data/dataset.h"
#include "model/config.h"
#include "trainer/recipe.h"
#include "trainer/run_estimate.h"

namespace mlaforge::cli {
namespace {

namespace fs = std::filesystem;

struct ValidateOptions {
  std::string recipe;
  std::vector<std::string> overrides;
  int world_size = 0;  // 0: the smallest world the recipe fits, tp x dp (dp auto counting as 1)
  bool explain = false;
  bool no_files = false;
  bool estimate = false;
  std::string model_config;    // --model-config: the student's config.json for --estimate
  std::string teacher_config;  // --teacher-config
  EstimateAssumptions assumptions;
};

// What the file checks found, for the report.
struct FileReport {
  std::vector<std::string> lines;
  nlohmann::json json = nlohmann::json::object();
};

void require_path(const std::string& path, const std::string& key) {
  std::error_code ec;
  MLA_CHECK(fs::exists(path, ec), key, ": ", path, ": no such file or directory");
}

// The config.json of a Hugging Face model folder, if that is what `path` is (GGUF and llama2.c models
// carry their dimensions inside the weights file: they are checked when the run loads them).
std::optional<ModelConfig> folder_config(const std::string& path) {
  std::error_code ec;
  const fs::path config = fs::path(path) / "config.json";
  if (!fs::is_directory(path, ec) || !fs::exists(config, ec)) return std::nullopt;
  return ModelConfig::from_file(config.string());
}

// The teacher is split over the TP ranks like the student, as a GQA model: its query and KV heads too.
void check_teacher_tp(const ModelConfig& teacher, int64_t tp) {
  MLA_CHECK(teacher.num_attention_heads % tp == 0 && (teacher.is_mla() || teacher.num_key_value_heads % tp == 0),
            "parallel.tp: ", tp, " does not divide the teacher's ", teacher.num_attention_heads, " attention heads and ",
            teacher.num_key_value_heads, " KV heads (the teacher is split over the TP ranks too)");
}

// Paths exist, data resolves to files, and the model's dimensions fit the parallel layout. A stage that
// starts from the previous stage's export (model_from_previous) has no model yet: its dimensions are those
// of `dims_model`, the model the chain of stages started from.
FileReport check_files(const Recipe& r, int world_size, bool model_from_previous, const std::string& dims_model) {
  FileReport report;
  if (model_from_previous) {
    report.lines.push_back("model.path: " + r.model.path + ": the previous stage's export (written by the run)");
  } else {
    require_path(r.model.path, "model.path");
  }
  if (!r.model.tokenizer.empty()) require_path(r.model.tokenizer, "model.tokenizer");
  if (!r.teacher.path.empty()) require_path(r.teacher.path, "teacher.path");
  if (r.checkpoint.resume != "auto" && r.checkpoint.resume != "none") require_path(r.checkpoint.resume, "checkpoint.resume");

  auto count_files = [&](const std::vector<std::string>& paths, const std::string& split, const std::string& key) {
    size_t files = 0;
    for (const auto& p : paths) {
      try {
        files += resolve_data_files(p, split).size();
      } catch (const Error& e) {
        fail(key, ": ", e.what());
      }
    }
    report.lines.push_back(key + ": " + std::to_string(files) + " file" + (files == 1 ? "" : "s"));
    report.json[key + "_files"] = files;
  };
  count_files(r.data.train, r.data.split, "data.train");
  if (!r.data.eval.empty()) count_files(r.data.eval, r.data.eval_split, "data.eval");

  if (auto config = folder_config(model_from_previous ? dims_model : r.model.path)) {
    validate_against_model(r, config->num_attention_heads, config->num_key_value_heads, config->vocab_size,
                           config->is_mla(), world_size);
    report.lines.push_back("model: " + family_name(config->family) + ", " + std::to_string(config->num_attention_heads) +
                           " attention heads, " + std::to_string(config->num_key_value_heads) + " KV heads, vocabulary " +
                           std::to_string(config->vocab_size) + (config->is_mla() ? " (MLA)" : " (GQA)") +
                           ": parallel.tp " + std::to_string(r.parallel.tp) + " fits");
    report.json["model"] = {{"family", family_name(config->family)},
                            {"num_attention_heads", config->num_attention_heads},
                            {"num_key_value_heads", config->num_key_value_heads},
                            {"vocab_size", config->vocab_size},
                            {"mla", config->is_mla()}};
    if (!r.teacher.path.empty()) {
      if (auto teacher = folder_config(r.teacher.path)) {
        MLA_CHECK(teacher->vocab_size == config->vocab_size, "teacher.path: the teacher's vocabulary (",
                  teacher->vocab_size, ") differs from the model's (", config->vocab_size,
                  "): logit distillation needs the same tokens");
        check_teacher_tp(*teacher, r.parallel.tp);
      }
    }
  } else {
    report.lines.push_back("model: not a Hugging Face folder; its dimensions are checked when the run loads it");
  }
  return report;
}

// One run's checks: the plan for the world size, the files, the estimate.
struct RunCheck {
  int world_size = 1;
  bool world_given = false;
  RunPlan plan;
  FileReport files;
  bool files_checked = false;
  std::optional<RunEstimate> estimate;

  nlohmann::json to_json() const;
  void print(const Recipe& recipe) const;
};

std::optional<ModelConfig> config_at(const std::string& explicit_path, const std::string& model_path) {
  if (!explicit_path.empty()) return ModelConfig::from_file(explicit_path);
  return model_path.empty() ? std::nullopt : folder_config(model_path);
}

RunCheck check_run(const ValidateOptions& o, const Recipe& recipe, bool model_from_previous, const std::string& chain_model) {
  RunCheck c;
  c.world_given = o.world_size > 0;
  c.world_size = c.world_given ? o.world_size : static_cast<int>(recipe.parallel.tp * std::max<int64_t>(1, recipe.parallel.dp));
  c.plan = plan_run(recipe, c.world_size);
  if (!o.no_files) {
    c.files = check_files(recipe, c.world_size, model_from_previous, chain_model);
    c.files_checked = true;
  }
  if (o.estimate) {
    const auto student = config_at(o.model_config, model_from_previous ? chain_model : recipe.model.path);
    MLA_CHECK(student, "--estimate needs the model's config.json: ", recipe.model.path,
              " is not a Hugging Face folder here (pass --model-config CONFIG.json)");
    std::optional<ModelConfig> teacher;
    if (!recipe.teacher.path.empty() && recipe.teacher.kl_ratio > 0) {
      teacher = config_at(o.teacher_config, recipe.teacher.path);
      MLA_CHECK(teacher, "--estimate needs the teacher's config.json: ", recipe.teacher.path,
                " is not a Hugging Face folder here (pass --teacher-config CONFIG.json)");
      check_teacher_tp(*teacher, recipe.parallel.tp);
    }
    validate_against_model(recipe, student->num_attention_heads, student->num_key_value_heads, student->vocab_size,
                           student->is_mla(), c.world_size);
    c.estimate = estimate_run(recipe, c.plan, *student, teacher, o.assumptions);
  }
  return c;
}

nlohmann::json RunCheck::to_json() const {
  nlohmann::json j = {{"plan",
                       {{"world_size", plan.world_size},
                        {"tp", plan.tp},
                        {"dp", plan.dp},
                        {"micro_batch_size", plan.micro_batch_size},
                        {"grad_accumulation", plan.grad_accumulation},
                        {"global_batch_size", plan.global_batch_size},
                        {"derived", plan.derived},
                        {"tokens_per_step", plan.tokens_per_step}}},
                      {"files", files.json}};
  if (plan.total_steps) j["plan"]["total_steps"] = *plan.total_steps;
  if (plan.warmup_steps) j["plan"]["warmup_steps"] = *plan.warmup_steps;
  if (estimate) j["estimate"] = estimate->to_json();
  return j;
}

void RunCheck::print(const Recipe& recipe) const {
  std::cout << dump_recipe_yaml(recipe) << "# derived for world size " << world_size
            << (world_given ? "" : " (the recipe's smallest; --world-size N for another)") << ":\n";
  for (const auto& line : describe_run_plan(recipe, plan)) std::cout << "#   " << line << "\n";
  if (!files_checked) {
    std::cout << "# files not checked (--no-files)\n";
  } else {
    for (const auto& line : files.lines) std::cout << "#   " << line << "\n";
  }
  if (estimate) {
    std::cout << "# estimate (arithmetic from the config, not a measurement; trainer/run_estimate.h):\n";
    for (const auto& line : estimate->describe()) std::cout << "#   " << line << "\n";
  }
  std::cout.flush();
}

}  // namespace

void register_validate(CLI::App& app) {
  auto o = std::make_shared<ValidateOptions>();
  auto* cmd = app.add_subcommand("validate", "Check a training recipe without running it and print it resolved");
  cmd->add_option("recipe", o->recipe, "recipe YAML file");
  cmd->add_option("overrides", o->overrides, "key.path=value overrides (values read as YAML), applied before validation");
  cmd->add_option("--world-size", o->world_size,
                  "processes the run will have (tp x dp); default: parallel.tp x parallel.dp, with dp auto as 1")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--explain", o->explain, "print every recipe key with its type, default and meaning (Markdown)");
  cmd->add_flag("--no-files", o->no_files,
                "skip the checks that need the files (paths exist, data resolves, the model's heads fit tp)");
  cmd->add_flag("--estimate", o->estimate,
                "also estimate GPU memory per rank and tokens/s from the model's config (trainer/run_estimate.h)");
  cmd->add_option("--model-config", o->model_config,
                  "--estimate: the student's config.json (default: model.path/config.json)");
  cmd->add_option("--teacher-config", o->teacher_config,
                  "--estimate: the teacher's config.json (default: teacher.path/config.json)");
  cmd->add_option("--mfu", o->assumptions.mfu, "--estimate: model FLOPs utilisation assumed")->capture_default_str();
  cmd->add_option("--peak-tflops", o->assumptions.peak_tflops, "--estimate: dense bf16 TFLOP/s per GPU")
      ->capture_default_str();
  cmd->add_option("--gpu-memory-gib", o->assumptions.gpu_memory_gib, "--estimate: memory per GPU")->capture_default_str();
  cmd->add_flag("--json", global_options().json, "machine-readable output");
  cmd->callback([o] {
    run_command([&] {
      if (o->explain) {
        std::cout << explain_recipe_schema();
        return;
      }
      MLA_CHECK(!o->recipe.empty(), "validate: name a recipe file (or use --explain)");
      const StagedRecipe staged = load_staged_recipe(o->recipe, o->overrides);
      const bool json = global_options().json;
      if (!staged.has_stages()) {
        const RunCheck check = check_run(*o, staged.base, false, "");
        if (json) {
          nlohmann::json j = check.to_json();
          j["recipe"] = recipe_to_json(staged.base);
          print_json(j);
          return;
        }
        // The output is itself a valid recipe: the notes are YAML comments.
        std::cout << "# " << o->recipe << ": valid. Resolved recipe (every default filled):\n";
        check.print(staged.base);
        return;
      }
      // Stages: each one resolved, planned and checked on its own; a stage that starts from the previous
      // one's export has the dimensions of the model the chain started from.
      nlohmann::json j = {{"stages", nlohmann::json::array()}};
      std::string chain_model;
      if (!json) {
        std::cout << "# " << o->recipe << ": valid, " << staged.stages.size() << " stages:";
        for (const auto& stage : staged.stages) std::cout << " " << stage.name;
        std::cout << "\n";
      }
      for (const RecipeStage& stage : staged.stages) {
        if (!stage.model_from_previous) chain_model = stage.recipe.model.path;
        RunCheck check;
        try {
          check = check_run(*o, stage.recipe, stage.model_from_previous, chain_model);
        } catch (const Error& e) {
          fail(stage.where, ": stages[", stage.index, "] (", stage.name, "): ", e.what());
        }
        if (json) {
          nlohmann::json s = check.to_json();
          s["recipe"] = recipe_to_json(stage.recipe);
          s["name"] = stage.name;
          s["index"] = stage.index;
          s["model_from_previous"] = stage.model_from_previous;
          j["stages"].push_back(s);
          continue;
        }
        std::cout << "\n# --- stage " << stage.index + 1 << "/" << staged.stages.size() << " '" << stage.name
                  << "' (" << stage.where << "), resolved recipe"
                  << (stage.model_from_previous ? " (model.path: the previous stage's export)" : "") << ":\n";
        check.print(stage.recipe);
      }
      if (json) print_json(j);
    });
  });
}

}  // namespace mlaforge::cli
