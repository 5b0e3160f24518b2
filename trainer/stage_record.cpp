// Completion records of multi-stage runs (see trainer/stage_record.h).
#include "trainer/stage_record.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/error.h"

namespace mlaforge {
namespace {

namespace fs = std::filesystem;

std::optional<nlohmann::json> read_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  try {
    return nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

// A Hugging Face model folder as the export writes it: config.json plus one safetensors file or an index.
bool has_model(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir / "config.json", ec)) return false;
  if (fs::exists(dir / "model.safetensors", ec) || fs::exists(dir / "model.safetensors.index.json", ec)) return true;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".safetensors") return true;
  }
  return false;
}

}  // namespace

StageStatus stage_status(const RecipeStage& stage) {
  const fs::path dir = stage.recipe.train.output_dir;
  const fs::path report_path = dir / "report.json";
  std::error_code ec;
  if (!fs::exists(report_path, ec)) return {false, "no " + report_path.string() + " (the stage has not finished)"};
  const auto report = read_json(report_path);
  if (!report || !report->is_object()) return {false, report_path.string() + " is not readable JSON"};
  if (!report->value("complete", false)) return {false, report_path.string() + " does not say complete"};
  const auto recipe = report->find("recipe");
  if (recipe == report->end() || !recipe->is_string() || recipe->get<std::string>() != dump_recipe_yaml(stage.recipe))
    return {false, report_path.string() + " is from a run of another recipe"};
  const fs::path model = dir / "model";
  if (!has_model(model)) return {false, "its exported model " + model.string() + " is missing"};
  return {true, "complete (" + report_path.string() + ", model " + model.string() + ")"};
}

void mark_stage_complete(const RecipeStage& stage) {
  const fs::path dir = stage.recipe.train.output_dir;
  const fs::path report_path = dir / "report.json";
  auto report = read_json(report_path);
  MLA_CHECK(report && report->is_object(), report_path.string(), ": missing or not JSON after the stage's run");
  (*report)["complete"] = true;
  (*report)["stage"] = stage.name;
  (*report)["recipe"] = dump_recipe_yaml(stage.recipe);
  const fs::path tmp = dir / "report.json.tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << report->dump(2) << "\n";
    out.flush();
    MLA_CHECK(out.good(), tmp.string(), ": cannot write");
  }
  std::error_code ec;
  fs::rename(tmp, report_path, ec);
  MLA_CHECK(!ec, "cannot rename ", tmp.string(), " to ", report_path.string(), ": ", ec.message());
}

}  // namespace mlaforge
