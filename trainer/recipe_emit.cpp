// Writing recipes out: the resolved recipe as YAML (saved with every run, read back identically) and the
// documented schema as Markdown (`mlaforge validate --explain`, recipes/README.md).
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <sstream>

#include "core/error.h"
#include "trainer/recipe.h"
#include "trainer/recipe_schema.h"

namespace mlaforge {
namespace {

using recipe_detail::FieldKind;
using recipe_detail::FieldSpec;
using recipe_detail::format_number;

// Strings a YAML reader would take for something else (null, a bool, a number) or that are empty are
// double-quoted so that any reader, not only ours, sees a string.
bool needs_quotes(const std::string& s) {
  if (s.empty()) return true;
  static const char* special[] = {"~", "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE",
                                  "yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF",
                                  "y", "Y", "n", "N"};
  for (const char* word : special) {
    if (s == word) return true;
  }
  const char c = s[0];
  return std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '+' || c == '.';
}

void emit_scalar(YAML::Emitter& out, const nlohmann::json& value) {
  if (value.is_null()) {
    out << YAML::Null;
  } else if (value.is_boolean()) {
    out << value.get<bool>();
  } else if (value.is_number_integer()) {
    out << value.get<int64_t>();
  } else if (value.is_number()) {
    out << format_number(value.get<double>());
  } else if (value.is_string()) {
    const std::string s = value.get<std::string>();
    if (needs_quotes(s)) out << YAML::DoubleQuoted;
    out << s;
  } else {
    fail("recipe dump: unexpected value ", value.dump());
  }
}

void emit_value(YAML::Emitter& out, const nlohmann::json& value) {
  if (value.is_array()) {
    out << YAML::Flow << YAML::BeginSeq;
    for (const auto& item : value) emit_scalar(out, item);
    out << YAML::EndSeq;
  } else {
    emit_scalar(out, value);
  }
}

// Emits the keys of `table` whose rows start at schema[i], recursing into nested tables; returns the index
// of the first row outside the table (rows of a table are contiguous in the schema).
size_t emit_table(YAML::Emitter& out, const Recipe& recipe, const std::string& table, size_t i) {
  const auto& schema = recipe_detail::recipe_schema();
  const std::string prefix = table + ".";
  out << YAML::BeginMap;
  while (i < schema.size() && schema[i].path.compare(0, prefix.size(), prefix) == 0) {
    const std::string rest = schema[i].path.substr(prefix.size());
    const size_t dot = rest.find('.');
    if (dot == std::string::npos) {
      out << YAML::Key << rest << YAML::Value;
      emit_value(out, recipe_detail::field_value(schema[i], recipe));
      ++i;
    } else {
      const std::string sub = rest.substr(0, dot);
      out << YAML::Key << sub << YAML::Value;
      i = emit_table(out, recipe, prefix + sub, i);
    }
  }
  out << YAML::EndMap;
  return i;
}

// A default value as it reads in a table cell: null, bf16, [all], [0.9, 0.95], 2.0e-05.
std::string cell_text(const nlohmann::json& value) {
  if (value.is_null()) return "null";
  if (value.is_boolean()) return value.get<bool>() ? "true" : "false";
  if (value.is_number_integer()) return std::to_string(value.get<int64_t>());
  if (value.is_number()) return format_number(value.get<double>());
  if (value.is_string()) return value.get<std::string>().empty() ? "\"\"" : value.get<std::string>();
  std::string out = "[";
  for (size_t i = 0; i < value.size(); ++i) out += (i ? ", " : "") + cell_text(value[i]);
  return out + "]";
}

std::string escape_cell(std::string text) {
  std::string out;
  for (char c : text) {
    if (c == '|') out += "\\|";
    else out += c;
  }
  return out;
}

}  // namespace

std::string dump_recipe_yaml(const Recipe& recipe) {
  YAML::Emitter out;
  out.SetNullFormat(YAML::LowerNull);
  out.SetBoolFormat(YAML::TrueFalseBool);
  out.SetIndent(2);
  const auto& schema = recipe_detail::recipe_schema();
  out << YAML::BeginMap;
  size_t i = 0;
  for (const auto& group : recipe_detail::recipe_groups()) {
    MLA_CHECK(i < schema.size() && schema[i].group() == group.name, "recipe schema: rows of group ", group.name,
              " are not contiguous or not in group order");
    out << YAML::Key << group.name << YAML::Value;
    i = emit_table(out, recipe, group.name, i);
  }
  out << YAML::EndMap;
  MLA_CHECK(out.good(), "recipe dump: ", out.GetLastError());
  return std::string(out.c_str()) + "\n";
}

nlohmann::json recipe_to_json(const Recipe& recipe) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& spec : recipe_detail::recipe_schema()) {
    nlohmann::json* table = &out;
    size_t start = 0;
    for (size_t dot = spec.path.find('.'); dot != std::string::npos; dot = spec.path.find('.', start)) {
      table = &(*table)[spec.path.substr(start, dot - start)];
      start = dot + 1;
    }
    (*table)[spec.path.substr(start)] = recipe_detail::field_value(spec, recipe);
  }
  return out;
}

std::string explain_recipe_schema() {
  const Recipe defaults;
  std::ostringstream md;
  md << "# Recipe keys\n\n"
     << "`mlaforge train RECIPE.yaml [key.path=value ...]` runs a recipe; `mlaforge validate RECIPE.yaml "
        "[--world-size N]` checks one without running it and prints it resolved (every default filled).\n\n"
     << "- Unknown keys, wrong types and values outside their range are errors naming the file, line and key "
        "(with the closest valid key for a misspelt one).\n"
     << "- Overrides `key.path=value` on the command line are read as YAML (`optim.lr=3e-5`, "
        "`optim.betas=[0.9,0.95]`, `teacher.path=null`) and applied before validation.\n"
     << "- Path values expand `${VAR}` and `${VAR:-fallback}` from the environment and a leading `~`; a "
        "relative path is relative to the recipe file's folder (in an override: to the current directory).\n"
     << "- A recipe holds run settings only: model dimensions come from the model's own config.json.\n"
     << "- `batch`: give any two of micro_batch_size, grad_accumulation and global_batch_size (or all three, "
        "consistent); global = micro x accumulation x data-parallel ranks. None given: micro 1, accumulation "
        "1; only global: micro 1.\n"
     << "- A recipe may hold several runs in order (`stages:`, last section), e.g. recovery then SFT; "
        "`recipes/r1/` has R1-distillation recipes per model and cluster size.\n\n"
     << "This file is the output of `mlaforge validate --explain`.\n";
  const auto& schema = recipe_detail::recipe_schema();
  for (const auto& group : recipe_detail::recipe_groups()) {
    md << "\n## " << group.name << "\n\n" << group.doc << "\n\n";
    md << "| key | type | default | description |\n| --- | --- | --- | --- |\n";
    for (const FieldSpec& spec : schema) {
      if (spec.group() != group.name) continue;
      md << "| `" << spec.path << "` | " << escape_cell(kind_description(spec)) << " | `"
         << escape_cell(cell_text(recipe_detail::field_value(spec, defaults))) << "` | " << escape_cell(spec.doc)
         << " |\n";
    }
  }
  md << "\n## stages\n\n"
     << "An optional top-level list that makes one recipe a sequence of runs, e.g. a short self-distillation "
        "stage that recovers the converted model before SFT on R1 traces:\n\n"
     << "```yaml\n"
     << "model: {path: ${MLAFORGE_MODEL}, trainable: all}     # the converted MLA model\n"
     << "teacher: {path: ${MLAFORGE_TEACHER}, kl_ratio: 0.5}  # the original GQA model\n"
     << "data: {train: general.jsonl}\n"
     << "train: {max_steps: 2000, output_dir: runs/r1}\n"
     << "stages:\n"
     << "  - name: recover            # required, [a-z0-9_-]+, unique: the stage's folder\n"
     << "    teacher: {kl_ratio: 1.0}\n"
     << "    train: {max_steps: 100}\n"
     << "  - name: sft\n"
     << "    teacher: {kl_ratio: 0.2}\n"
     << "    data: {train: r1-traces.parquet, packing: false}\n"
     << "```\n\n"
     << "- Each stage's recipe is the recipe outside `stages:` (with the command-line overrides) with the "
        "stage's groups read over it by the same schema: a key the stage sets replaces the base's value (a list "
        "as a whole), the other keys are inherited; groups merge key by key. Errors name the stage: "
        "`r1.yaml:12:21: stages[1].teacher.kl_ratio: must be in [0, 1], got 1.5`, or for whole-recipe checks "
        "`r1.yaml:10:5: stages[1] (sft): ...`.\n"
     << "- Derived per stage: `train.output_dir` is `<train.output_dir>/<name>` unless the stage sets it; "
        "`data.cache_dir` is shared (the base's); `model.path` of every stage after the first is the previous "
        "stage's exported model, `<its output_dir>/model`, unless the stage sets `model.path` itself. The "
        "teacher stays the base's (the original model).\n"
     << "- Every stage is validated on its own (the base need not be a complete run); every stage but the last "
        "must keep `train.export_at_end: true`.\n"
     << "- Overrides `key.path=value` apply to the base; `stages.<name>.<key.path>=value` to one stage, after "
        "its mapping.\n"
     << "- `mlaforge train` runs the stages in order in every rank (a barrier between them). A stage whose "
        "`report.json` says complete for the same resolved recipe and whose exported model exists is skipped "
        "with a log line, so rerunning a killed job resumes where it stopped (inside a stage, "
        "`checkpoint.resume: auto` does). `mlaforge validate` checks and prints every stage (`--json`: a "
        "`stages` list); `--estimate` adds each stage's memory per GPU and throughput estimate.\n";
  return md.str();
}

}  // namespace mlaforge
