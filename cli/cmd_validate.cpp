// mlaforge validate RECIPE.yaml [key.path=value ...] [--world-size N]: check a run recipe without running
// it, and print it resolved (every default filled) with the batch sizes derived for the world size.
// `mlaforge validate --explain` prints every recipe key instead (recipes/README.md is that output).
#include <algorithm>
#include <filesystem>
#include <iostream>

#include "cli/common.h"
#include "core/error.h"
#include "data/dataset.h"
#include "model/config.h"
#include "trainer/recipe.h"

namespace mlaforge::cli {
namespace {

namespace fs = std::filesystem;

struct ValidateOptions {
  std::string recipe;
  std::vector<std::string> overrides;
  int world_size = 0;  // 0: the smallest world the recipe fits, tp x dp (dp auto counting as 1)
  bool explain = false;
  bool no_files = false;
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

// Paths exist, data resolves to files, and the model's dimensions fit the parallel layout.
FileReport check_files(const Recipe& r, int world_size) {
  FileReport report;
  require_path(r.model.path, "model.path");
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

  if (auto config = folder_config(r.model.path)) {
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
      }
    }
  } else {
    report.lines.push_back("model: not a Hugging Face folder; its dimensions are checked when the run loads it");
  }
  return report;
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
  cmd->add_flag("--json", global_options().json, "machine-readable output");
  cmd->callback([o] {
    run_command([&] {
      if (o->explain) {
        std::cout << explain_recipe_schema();
        return;
      }
      MLA_CHECK(!o->recipe.empty(), "validate: name a recipe file (or use --explain)");
      const Recipe recipe = load_recipe(o->recipe, o->overrides);
      const int world_size = o->world_size > 0 ? o->world_size
                                               : static_cast<int>(recipe.parallel.tp * std::max<int64_t>(1, recipe.parallel.dp));
      const RunPlan plan = plan_run(recipe, world_size);
      FileReport files;
      if (!o->no_files) files = check_files(recipe, world_size);
      const auto plan_lines = describe_run_plan(recipe, plan);

      if (global_options().json) {
        nlohmann::json j = {{"recipe", recipe_to_json(recipe)},
                            {"plan",
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
        print_json(j);
        return;
      }
      // The output is itself a valid recipe: the notes are YAML comments.
      std::cout << "# " << o->recipe << ": valid. Resolved recipe (every default filled):\n"
                << dump_recipe_yaml(recipe) << "# derived for world size " << world_size
                << (o->world_size > 0 ? "" : " (the recipe's smallest; --world-size N for another)") << ":\n";
      for (const auto& line : plan_lines) std::cout << "#   " << line << "\n";
      if (o->no_files) {
        std::cout << "# files not checked (--no-files)\n";
      } else {
        for (const auto& line : files.lines) std::cout << "#   " << line << "\n";
      }
      std::cout.flush();
    });
  });
}

}  // namespace mlaforge::cli
