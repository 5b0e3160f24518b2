// Reading a recipe: YAML (with line/column marks) -> Recipe through the schema table, overrides, path
// expansion and derived defaults. Every error names where (FILE:LINE:COL or the override) and the key.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "core/error.h"
#include "trainer/recipe.h"
#include "trainer/recipe_schema.h"

namespace mlaforge {
namespace {

namespace fs = std::filesystem;
using recipe_detail::FieldKind;
using recipe_detail::FieldSpec;

// Where values come from: a file (with marks) or an override.
struct Origin {
  std::string source;    // file name, or "override 'a.b=v'"
  bool has_marks = true;  // file: prefix messages with LINE:COL
  std::string base_dir;  // relative paths resolve against this
  // Where the keys sit, for messages: "" for the recipe itself, "stages[1]." inside a stage's mapping,
  // "stages.sft." in a stage override. The schema lookups use the plain key path.
  std::string key_prefix;
  std::set<std::string>* assigned = nullptr;  // when set: receives every key path read
  bool stages_allowed = false;                // top level: `stages:` is read separately (skipped here)
  bool stage_mapping = false;                 // a stage's mapping: its `name:` is read separately
};

// Where an override's values come from: messages name the override, relative paths are the cwd's.
Origin override_origin(const std::string& text) {
  Origin origin;
  origin.source = "override '" + text + "'";
  origin.has_marks = false;
  origin.base_dir = fs::current_path().string();
  return origin;
}

[[noreturn]] void fail_at(const Origin& origin, const YAML::Mark& mark, const std::string& key,
                          const std::string& message) {
  std::ostringstream out;
  out << origin.source;
  if (origin.has_marks && !mark.is_null()) out << ":" << mark.line + 1 << ":" << mark.column + 1;
  out << ": ";
  if (!key.empty()) {
    out << origin.key_prefix << key << ": ";
  } else if (!origin.key_prefix.empty()) {
    out << origin.key_prefix.substr(0, origin.key_prefix.size() - 1) << ": ";
  }
  out << message;
  throw Error(out.str());
}

std::string leaf_of(const std::string& path) {
  const size_t dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}
std::string parent_of(const std::string& path) {
  const size_t dot = path.rfind('.');
  return dot == std::string::npos ? std::string() : path.substr(0, dot);
}

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += items[i];
  }
  return out;
}

// Whether `path` is a group or a nested table ("data.columns") of the schema.
bool is_table(const std::string& path) {
  const std::string prefix = path + ".";
  for (const auto& spec : recipe_detail::recipe_schema()) {
    if (spec.path.compare(0, prefix.size(), prefix) == 0) return true;
  }
  return false;
}

// The keys directly inside a table, for "valid keys are ..." messages.
std::vector<std::string> table_keys(const std::string& table) {
  std::vector<std::string> keys;
  const std::string prefix = table + ".";
  for (const auto& spec : recipe_detail::recipe_schema()) {
    if (spec.path.compare(0, prefix.size(), prefix) != 0) continue;
    std::string rest = spec.path.substr(prefix.size());
    rest = rest.substr(0, rest.find('.'));
    if (std::find(keys.begin(), keys.end(), rest) == keys.end()) keys.push_back(rest);
  }
  return keys;
}

// The valid key closest to an unknown one, or "". Candidates are every key and every alias (an alias is
// the key's name under another tool's vocabulary: learning_rate -> optim.lr). The distance is the leaf's
// edit distance plus a capped penalty for another table, so `train.lr` finds optim.lr and
// `optim.lerning_rate` finds optim.lr through its alias learning_rate.
std::string suggest_key(const std::string& path) {
  const std::string leaf = leaf_of(path), parent = parent_of(path);
  size_t best_score = SIZE_MAX;
  std::string best;
  for (const auto& spec : recipe_detail::recipe_schema()) {
    std::vector<std::string> names = {leaf_of(spec.path)};
    names.insert(names.end(), spec.aliases.begin(), spec.aliases.end());
    const std::string spec_parent = parent_of(spec.path);
    const size_t penalty = std::min<size_t>(3, edit_distance(parent, spec_parent));
    for (const auto& name : names) {
      const size_t score = edit_distance(leaf, name) + penalty;
      if (score < best_score) {
        best_score = score;
        best = spec.path;
      }
    }
  }
  const size_t threshold = std::max<size_t>(3, leaf.size() / 3);
  return best_score <= threshold ? best : std::string();
}

std::string suggest_value(const std::string& value, const std::vector<std::string>& allowed) {
  size_t best_score = SIZE_MAX;
  std::string best;
  for (const auto& a : allowed) {
    const size_t score = edit_distance(value, a);
    if (score < best_score) {
      best_score = score;
      best = a;
    }
  }
  return best_score <= std::max<size_t>(2, value.size() / 3) ? best : std::string();
}

[[noreturn]] void fail_unknown_key(const Origin& origin, const YAML::Mark& mark, const std::string& path) {
  const std::string parent = parent_of(path);
  if (parent.empty()) {
    // A top-level name: a misspelt group, or a key written outside its group.
    std::string group;
    size_t best = SIZE_MAX;
    for (const auto& g : recipe_detail::recipe_groups()) {
      // "optimizer", "logging", "evaluation": a longer word for the group counts as a match.
      const bool extends = path.size() > g.name.size() && path.compare(0, g.name.size(), g.name) == 0;
      const size_t d = extends ? 0 : edit_distance(path, g.name);
      if (d < best) {
        best = d;
        group = g.name;
      }
    }
    if (best <= std::max<size_t>(1, path.size() / 3)) fail_at(origin, mark, path, "unknown group; did you mean " + group + "?");
    const std::string key = suggest_key(path);
    if (!key.empty()) fail_at(origin, mark, path, "unknown key; did you mean " + key + "?");
    std::vector<std::string> groups;
    for (const auto& g : recipe_detail::recipe_groups()) groups.push_back(g.name);
    fail_at(origin, mark, path, "unknown group (groups: " + join(groups, ", ") + ")");
  }
  const std::string key = suggest_key(path);
  if (!key.empty()) fail_at(origin, mark, path, "unknown key; did you mean " + key + "?");
  fail_at(origin, mark, path, "unknown key (keys of " + parent + ": " + join(table_keys(parent), ", ") + ")");
}

// --- scalars ---------------------------------------------------------------------------------------
std::string describe_node(const YAML::Node& node) {
  if (node.IsNull()) return "null";
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  return "'" + node.Scalar() + "'";
}

std::string trimmed(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::optional<double> to_double(const std::string& raw) {
  std::string text = trimmed(raw);
  if (!text.empty() && text[0] == '+') text.erase(0, 1);
  if (text.empty()) return std::nullopt;
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(value)) return std::nullopt;
  return value;
}

struct FieldReader {
  const FieldSpec& spec;
  const Origin& origin;
  YAML::Mark key_mark = YAML::Mark::null_mark();  // where the key is: a null value has no place of its own

  YAML::Mark mark_of(const YAML::Node& node) const {
    return node.IsNull() || node.Mark().is_null() ? key_mark : node.Mark();
  }

  [[noreturn]] void wrong(const YAML::Node& node, const std::string& expected) const {
    fail_at(origin, mark_of(node), spec.path, "expected " + expected + ", got " + describe_node(node));
  }

  std::string scalar(const YAML::Node& node, const std::string& expected) const {
    if (!node.IsScalar()) wrong(node, expected);
    return node.Scalar();
  }

  static std::string bound_text(double v) {
    return v == std::floor(v) && std::fabs(v) < 1e15 ? std::to_string(static_cast<int64_t>(v))
                                                      : recipe_detail::format_number(v);
  }

  // "> 0", ">= 1", "in [0, 1]", "in [0, 1)".
  std::string range_rule() const {
    const auto& r = spec.range;
    if (r.min && r.max) {
      return std::string("in ") + (r.min_exclusive ? "(" : "[") + bound_text(*r.min) + ", " + bound_text(*r.max) +
             (r.max_exclusive ? ")" : "]");
    }
    if (r.min) return std::string(r.min_exclusive ? "> " : ">= ") + bound_text(*r.min);
    if (r.max) return std::string(r.max_exclusive ? "< " : "<= ") + bound_text(*r.max);
    return "";
  }

  void check_range(const YAML::Node& node, double value) const {
    const auto& r = spec.range;
    const bool low = r.min && (r.min_exclusive ? !(value > *r.min) : !(value >= *r.min));
    const bool high = r.max && (r.max_exclusive ? !(value < *r.max) : !(value <= *r.max));
    if (low || high) fail_at(origin, node.Mark(), spec.path, "must be " + range_rule() + ", got " + trimmed(node.Scalar()));
  }

  double number(const YAML::Node& node) const {
    const auto value = to_double(scalar(node, "a number"));
    if (!value) wrong(node, "a number");
    check_range(node, *value);
    return *value;
  }

  int64_t integer(const YAML::Node& node) const {
    const std::string text = trimmed(scalar(node, "an integer"));
    int64_t value = 0;
    const char* begin = text.data() + (!text.empty() && text[0] == '+' ? 1 : 0);
    auto [end, ec] = std::from_chars(begin, text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || begin == end) {
      // 1e4 or 100.0 are whole numbers written as floats: accept them, refuse 2.5.
      const auto d = to_double(text);
      if (!d || *d != std::floor(*d) || std::fabs(*d) > 9.0e15) wrong(node, "an integer");
      value = static_cast<int64_t>(*d);
    }
    check_range(node, static_cast<double>(value));
    return value;
  }

  bool boolean(const YAML::Node& node) const {
    std::string text = scalar(node, "true or false");
    std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
    if (text == "true" || text == "yes" || text == "on") return true;
    if (text == "false" || text == "no" || text == "off") return false;
    wrong(node, "true or false");
  }

  std::string one_of(const YAML::Node& node) const {
    const std::string value = scalar(node, "one of " + join(spec.allowed, ", "));
    if (std::find(spec.allowed.begin(), spec.allowed.end(), value) != spec.allowed.end()) return value;
    std::string message = "'" + value + "' is not one of " + join(spec.allowed, ", ");
    const std::string near = suggest_value(value, spec.allowed);
    if (!near.empty()) message += " (did you mean " + near + "?)";
    fail_at(origin, node.Mark(), spec.path, message);
  }

  std::string path(const std::string& value, const YAML::Mark& mark) const {
    try {
      return expand_recipe_path(value, origin.base_dir, origin.key_prefix + spec.path);
    } catch (const Error& e) {
      Origin located = origin;
      located.key_prefix.clear();  // the message already names the key, prefix included
      fail_at(located, mark, "", e.what());
    }
  }
  std::string path(const YAML::Node& node) const { return path(scalar(node, "a path"), node.Mark()); }

  std::string list_item(const std::string& value, const YAML::Mark& mark, bool paths) const {
    if (paths) return path(value, mark);
    if (spec.check_item) {
      const std::string problem = spec.check_item(value);
      if (!problem.empty()) fail_at(origin, mark, spec.path, problem);
    }
    if (!spec.allowed.empty() && std::find(spec.allowed.begin(), spec.allowed.end(), value) == spec.allowed.end()) {
      std::string message = "'" + value + "' is not one of " + join(spec.allowed, ", ");
      const std::string near = suggest_value(value, spec.allowed);
      if (!near.empty()) message += " (did you mean " + near + "?)";
      fail_at(origin, mark, spec.path, message);
    }
    return value;
  }

  // A scalar is a one-item list (split at commas for split_commas keys); null is the empty list.
  std::vector<std::string> list(const YAML::Node& node, bool paths) const {
    std::vector<std::string> items;
    if (node.IsNull()) return items;
    if (node.IsScalar()) {
      if (!paths && spec.split_commas) {
        std::stringstream parts(node.Scalar());
        std::string part;
        while (std::getline(parts, part, ',')) {
          part = trimmed(part);
          if (!part.empty()) items.push_back(list_item(part, node.Mark(), paths));
        }
      } else {
        items.push_back(list_item(node.Scalar(), node.Mark(), paths));
      }
      return items;
    }
    if (!node.IsSequence()) wrong(node, paths ? "a path or a list of paths" : "a string or a list of strings");
    for (const auto& item : node) {
      if (!item.IsScalar()) fail_at(origin, item.Mark(), spec.path, "list items must be strings, got " + describe_node(item));
      items.push_back(list_item(item.Scalar(), item.Mark(), paths));
    }
    return items;
  }

  void read(const YAML::Node& node, Recipe& recipe) const {
    if (origin.assigned) origin.assigned->insert(spec.path);
    switch (spec.kind) {
      case FieldKind::boolean: spec.get<bool>(recipe) = boolean(node); return;
      case FieldKind::integer: spec.get<int64_t>(recipe) = integer(node); return;
      case FieldKind::opt_integer:
        spec.get<std::optional<int64_t>>(recipe) = node.IsNull() ? std::nullopt : std::optional<int64_t>(integer(node));
        return;
      case FieldKind::integer_or_auto:
        if (node.IsScalar() && trimmed(node.Scalar()) == "auto") {
          spec.get<int64_t>(recipe) = 0;
        } else {
          if (!node.IsScalar() || !to_double(node.Scalar())) wrong(node, "an integer or auto");
          spec.get<int64_t>(recipe) = integer(node);
        }
        return;
      case FieldKind::number: spec.get<double>(recipe) = number(node); return;
      case FieldKind::opt_number:
        spec.get<std::optional<double>>(recipe) = node.IsNull() ? std::nullopt : std::optional<double>(number(node));
        return;
      case FieldKind::string: spec.get<std::string>(recipe) = scalar(node, "a string"); return;
      case FieldKind::opt_string: spec.get<std::string>(recipe) = node.IsNull() ? "" : scalar(node, "a string or null"); return;
      case FieldKind::enumeration: spec.get<std::string>(recipe) = one_of(node); return;
      case FieldKind::path: spec.get<std::string>(recipe) = node.IsNull() ? "" : path(node); return;
      case FieldKind::path_or_keyword: {
        const std::string value = scalar(node, kind_description(spec));
        const bool keyword = std::find(spec.allowed.begin(), spec.allowed.end(), value) != spec.allowed.end();
        spec.get<std::string>(recipe) = keyword ? value : path(node);
        return;
      }
      case FieldKind::path_list: spec.get<std::vector<std::string>>(recipe) = list(node, true); return;
      case FieldKind::string_list: spec.get<std::vector<std::string>>(recipe) = list(node, false); return;
      case FieldKind::number_pair: {
        if (!node.IsSequence() || node.size() != 2) wrong(node, "a list of two numbers [a, b]");
        auto& pair = spec.get<std::array<double, 2>>(recipe);
        pair = {number(node[0]), number(node[1])};
        return;
      }
    }
  }
};

// Reads a mapping at `table` ("" for the top level) into the recipe.
void read_table(const YAML::Node& map, const std::string& table, Recipe& recipe, const Origin& origin) {
  std::set<std::string> seen;
  for (const auto& entry : map) {
    const YAML::Node& key = entry.first;
    if (!key.IsScalar()) fail_at(origin, key.Mark(), table, "keys must be plain names, got " + describe_node(key));
    const std::string name = key.Scalar();
    const std::string path = table.empty() ? name : table + "." + name;
    if (!seen.insert(name).second) fail_at(origin, key.Mark(), path, "duplicate key");
    if (table.empty() && name == "stages" && origin.stages_allowed) continue;  // read by StageReader
    if (table.empty() && name == "name" && origin.stage_mapping) continue;
    if (const FieldSpec* spec = recipe_detail::find_field_spec(path)) {
      FieldReader{*spec, origin, key.Mark()}.read(entry.second, recipe);
    } else if (is_table(path)) {
      if (entry.second.IsNull()) continue;  // "teacher:" with nothing under it
      if (!entry.second.IsMap()) {
        fail_at(origin, entry.second.Mark(), path,
                "expected a mapping of keys (" + join(table_keys(path), ", ") + "), got " + describe_node(entry.second));
      }
      read_table(entry.second, path, recipe, origin);
    } else {
      fail_unknown_key(origin, key.Mark(), path);
    }
  }
}

// "a.b=value" -> (a.b, value); the origin names the whole override.
std::pair<std::string, std::string> split_override(const std::string& text) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos) {
    fail_at(override_origin(text), YAML::Mark::null_mark(), "", "expected key.path=value");
  }
  return {trimmed(text.substr(0, eq)), text.substr(eq + 1)};
}

// Applies `path`=`raw` (already split from the override `text`); `key_prefix` places it in messages.
void apply_override_at(const std::string& text, const std::string& key_prefix, const std::string& path,
                       const std::string& raw, Recipe& recipe, std::set<std::string>* assigned) {
  Origin origin = override_origin(text);
  origin.key_prefix = key_prefix;
  origin.assigned = assigned;
  const FieldSpec* spec = recipe_detail::find_field_spec(path);
  if (!spec) {
    if (is_table(path)) {
      fail_at(origin, YAML::Mark::null_mark(), path,
              "is a group; name one of its keys (" + join(table_keys(path), ", ") + ")");
    }
    fail_unknown_key(origin, YAML::Mark::null_mark(), path);
  }
  // The value is YAML (3e-5, [0.9, 0.95], null, auto); strings that are not valid YAML or that parse as
  // something other than a scalar ("You are: helpful") are taken verbatim for string keys.
  YAML::Node node;
  bool parsed = true;
  try {
    node = YAML::Load(raw);
  } catch (const YAML::Exception&) {
    parsed = false;
  }
  const bool scalar_kind = spec->kind == FieldKind::string || spec->kind == FieldKind::opt_string ||
                           spec->kind == FieldKind::enumeration || spec->kind == FieldKind::path ||
                           spec->kind == FieldKind::path_or_keyword;
  // A list of strings given as one value that YAML cannot read (`*.kv_b_proj.weight` starts like an
  // alias) is that string, split on commas like any scalar for a list key.
  const bool string_list = spec->kind == FieldKind::string_list || spec->kind == FieldKind::path_list;
  if (scalar_kind && (!parsed || !(node.IsScalar() || node.IsNull()))) {
    node = YAML::Node(raw);
  } else if (string_list && !parsed) {
    node = YAML::Node(raw);
  } else if (!parsed) {
    fail_at(origin, YAML::Mark::null_mark(), path, "value is not valid YAML: " + raw);
  }
  FieldReader{*spec, origin}.read(node, recipe);
}

// Step 4: values whose default depends on others.
void fill_derived_defaults(Recipe& recipe, const std::string& name) {
  if (recipe.train.output_dir.empty()) {
    recipe.train.output_dir = (fs::current_path() / "out" / (name.empty() ? "run" : name)).lexically_normal().string();
  }
  if (recipe.data.cache_dir.empty()) {
    recipe.data.cache_dir = (fs::path(recipe.train.output_dir) / "data_cache").lexically_normal().string();
  }
  if (!recipe.data.seed) recipe.data.seed = recipe.train.seed;
}

}  // namespace

std::string expand_recipe_path(const std::string& value, const std::string& base_dir, const std::string& what) {
  const std::string prefix = what.empty() ? std::string() : what + ": ";
  std::string out;
  for (size_t i = 0; i < value.size(); ++i) {
    if (value[i] != '$' || i + 1 >= value.size() || value[i + 1] != '{') {
      out += value[i];
      continue;
    }
    const size_t close = value.find('}', i + 2);
    if (close == std::string::npos) fail(prefix, "unclosed ${ in '", value, "'");
    const std::string inner = value.substr(i + 2, close - i - 2);
    const size_t sep = inner.find(":-");
    const std::string name = inner.substr(0, sep);
    const bool valid_name = !name.empty() && !std::isdigit(static_cast<unsigned char>(name[0])) &&
                            std::all_of(name.begin(), name.end(), [](unsigned char c) { return std::isalnum(c) || c == '_'; });
    if (!valid_name) fail(prefix, "'${", inner, "}' is not a variable reference (${NAME} or ${NAME:-fallback})");
    const char* env = std::getenv(name.c_str());
    if (env && *env) {
      out += env;
    } else if (sep != std::string::npos) {
      out += inner.substr(sep + 2);
    } else {
      fail(prefix, "environment variable ", name, " is not set (in '", value, "'; write ${", name,
           ":-fallback} for a default)");
    }
    i = close;
  }
  if (out == "~" || out.rfind("~/", 0) == 0) {
    const char* home = std::getenv("HOME");
    if (!home || !*home) fail(prefix, "'", value, "' starts with ~ but HOME is not set");
    out = std::string(home) + out.substr(1);
  }
  if (out.empty()) fail(prefix, "'", value, "' expands to an empty path");
  fs::path p(out);
  if (p.is_relative() && !base_dir.empty()) p = fs::path(base_dir) / p;
  return p.lexically_normal().string();
}

namespace {

const std::regex& stage_name_rule() {
  static const std::regex rule("[a-z0-9_-]+");
  return rule;
}

// One stage of a `stages:` list: its mapping merged over the base recipe, its overrides, its derived
// defaults (step 4 per stage), validated.
struct StageReader {
  const Origin& file;        // the recipe file
  const Recipe& base;        // as written + base overrides, derived defaults NOT filled
  const Recipe& base_filled;  // the same with them filled (its output_dir and cache_dir are the stages')

  RecipeStage read(const YAML::Node& item, size_t index, const std::vector<RecipeStage>& before,
                   const std::vector<std::pair<std::string, std::string>>& overrides) const {
    const std::string label = "stages[" + std::to_string(index) + "]";
    Origin origin = file;
    origin.key_prefix = label + ".";
    origin.stages_allowed = false;
    std::set<std::string> assigned;
    origin.assigned = &assigned;
    if (!item.IsMap()) {
      fail_at(file, item.Mark(), label,
              "expected a mapping (name: ..., then any recipe groups: teacher:, train:, ...), got " + describe_node(item));
    }
    RecipeStage stage;
    stage.index = static_cast<int64_t>(index);
    stage.recipe = base;
    // The name first, so that every later message can say which stage it is about.
    YAML::Mark name_mark = item.Mark();
    for (const auto& entry : item) {
      if (!entry.first.IsScalar() || entry.first.Scalar() != "name") continue;
      name_mark = entry.second.Mark().is_null() ? entry.first.Mark() : entry.second.Mark();
      if (!entry.second.IsScalar() || entry.second.Scalar().empty()) {
        fail_at(origin, name_mark, "name", "expected a stage name ([a-z0-9_-]+), got " + describe_node(entry.second));
      }
      stage.name = entry.second.Scalar();
    }
    if (stage.name.empty()) fail_at(file, item.Mark(), label, "name: not set: every stage needs a name ([a-z0-9_-]+)");
    if (!std::regex_match(stage.name, stage_name_rule())) {
      fail_at(origin, name_mark, "name",
              "'" + stage.name + "' is not a valid stage name (lower-case letters, digits, '_' and '-' only: it "
              "names the stage's folder)");
    }
    for (const auto& other : before) {
      if (other.name == stage.name) {
        fail_at(origin, name_mark, "name", "'" + stage.name + "' is also the name of stages[" + std::to_string(other.index) + "]");
      }
    }
    // The rest is recipe groups, read over the base: what the stage sets replaces, the rest is inherited
    // (a list replaces the whole list; a group merges key by key).
    for (const auto& entry : item) {
      const std::string key = entry.first.IsScalar() ? entry.first.Scalar() : std::string();
      if (key == "stages") fail_at(origin, entry.first.Mark(), key, "a stage cannot contain stages");
      if (key.size() >= 3 && key != "name" && !is_table(key) && edit_distance(key, "name") <= 2) {
        fail_at(origin, entry.first.Mark(), key, "unknown key; did you mean name?");
      }
    }
    origin.stage_mapping = true;
    read_table(item, "", stage.recipe, origin);
    for (const auto& [text, rest] : overrides) {
      const auto [path, raw] = split_override(rest);
      apply_override_at(text, "stages." + stage.name + ".", path, raw, stage.recipe, &assigned);
    }
    Recipe& r = stage.recipe;
    // Derived defaults: the stage's own folder under the base's; the data cache shared (it is keyed by
    // content); stage k > 0 starts from stage k-1's exported model unless it names a model itself.
    if (!assigned.count("train.output_dir")) {
      r.train.output_dir = (fs::path(base_filled.train.output_dir) / stage.name).lexically_normal().string();
    }
    if (r.data.cache_dir.empty()) r.data.cache_dir = base_filled.data.cache_dir;
    if (!r.data.seed) r.data.seed = r.train.seed;
    if (!before.empty() && !assigned.count("model.path")) {
      r.model.path = (fs::path(before.back().recipe.train.output_dir) / "model").lexically_normal().string();
      stage.model_from_previous = true;
    }
    const std::string where = label + " (" + stage.name + ")";
    try {
      validate_recipe(r);
    } catch (const Error& e) {
      fail_at(file, item.Mark(), "", where + ": " + e.what());
    }
    for (const auto& other : before) {
      if (other.recipe.train.output_dir == r.train.output_dir) {
        fail_at(file, item.Mark(), "", where + ": train.output_dir " + r.train.output_dir + " is also stage " +
                                           other.name + "'s: every stage needs its own folder");
      }
    }
    stage.where = file.source + (item.Mark().is_null() ? "" : ":" + std::to_string(item.Mark().line + 1) + ":" +
                                                              std::to_string(item.Mark().column + 1));
    return stage;
  }
};

// Splits the command-line overrides: "stages.<name>.<key>=v" address one stage, the rest the base.
struct SplitOverrides {
  std::vector<std::string> base;
  std::vector<std::pair<std::string, std::string>> staged;  // (whole text, "<name>.<key>=v")
};
SplitOverrides split_overrides(const std::vector<std::string>& overrides) {
  SplitOverrides out;
  for (const auto& o : overrides) {
    if (o.rfind("stages.", 0) == 0) {
      out.staged.emplace_back(o, o.substr(7));
    } else {
      out.base.push_back(o);
    }
  }
  return out;
}

}  // namespace

StagedRecipe parse_staged_recipe_text(const std::string& yaml, const std::string& source, const std::string& base_dir,
                                      const std::vector<std::string>& overrides, const std::string& name) {
  Origin origin;
  origin.source = source;
  origin.base_dir = base_dir.empty() ? fs::current_path().string() : fs::absolute(base_dir).string();
  origin.stages_allowed = true;
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::ParserException& e) {
    fail_at(origin, e.mark, "", "invalid YAML: " + e.msg);
  } catch (const YAML::Exception& e) {
    fail_at(origin, e.mark, "", std::string("invalid YAML: ") + e.what());
  }
  StagedRecipe out;
  Recipe& recipe = out.base;
  YAML::Node stages_node;
  YAML::Mark stages_mark = YAML::Mark::null_mark();
  if (root.IsMap()) {
    try {
      read_table(root, "", recipe, origin);
      for (const auto& entry : root) {
        if (entry.first.IsScalar() && entry.first.Scalar() == "stages") {
          stages_node = entry.second;
          stages_mark = entry.first.Mark();
        }
      }
    } catch (const YAML::Exception& e) {  // a node yaml-cpp refuses to read: still one located error
      fail_at(origin, e.mark, "", std::string("invalid YAML: ") + e.what());
    }
  } else if (!root.IsNull()) {
    fail_at(origin, root.Mark(), "", "a recipe is a mapping of groups (model:, data:, train:, ...), got " + describe_node(root));
  }
  const SplitOverrides split = split_overrides(overrides);
  for (const auto& o : split.base) {
    const auto [path, raw] = split_override(o);
    apply_override_at(o, "", path, raw, recipe, nullptr);
  }

  const bool staged = stages_node.IsDefined() && !stages_node.IsNull();
  if (!staged) {
    if (!split.staged.empty()) {
      fail_at(override_origin(split.staged.front().first), YAML::Mark::null_mark(), "",
              "the recipe has no stages (a stages: list addresses them as stages.<name>.<key>=value)");
    }
    fill_derived_defaults(recipe, name);
    try {
      validate_recipe(recipe);
    } catch (const Error& e) {
      fail(source, ": ", e.what());
    }
    return out;
  }

  // A recipe with stages: the base is what the stages inherit; it need not be a complete run by itself.
  if (!stages_node.IsSequence() || stages_node.size() == 0) {
    fail_at(origin, stages_node.Mark().is_null() ? stages_mark : stages_node.Mark(), "stages",
            "expected a non-empty list of stages (- name: ..., then the groups the stage changes), got " +
                describe_node(stages_node));
  }
  Recipe base_filled = recipe;
  fill_derived_defaults(base_filled, name);
  const StageReader reader{origin, recipe, base_filled};
  for (size_t i = 0; i < stages_node.size(); ++i) {
    // This stage's overrides: "stages.<its name>.<key>=v". The name is read first to pick them.
    std::string stage_name;
    if (stages_node[i].IsMap() && stages_node[i]["name"] && stages_node[i]["name"].IsScalar())
      stage_name = stages_node[i]["name"].Scalar();
    std::vector<std::pair<std::string, std::string>> mine;
    for (const auto& [text, rest] : split.staged) {
      if (!stage_name.empty() && rest.rfind(stage_name + ".", 0) == 0) mine.emplace_back(text, rest.substr(stage_name.size() + 1));
    }
    try {
      out.stages.push_back(reader.read(stages_node[i], i, out.stages, mine));
    } catch (const YAML::Exception& e) {
      fail_at(origin, e.mark, "", std::string("invalid YAML: ") + e.what());
    }
  }
  // Overrides naming no stage.
  for (const auto& [text, rest] : split.staged) {
    const size_t dot = rest.find('.'), eq = rest.find('=');
    const Origin where = override_origin(text);
    if (dot == std::string::npos || (eq != std::string::npos && eq < dot)) {
      fail_at(where, YAML::Mark::null_mark(), "", "expected stages.<name>.<key.path>=value");
    }
    const std::string stage_name = rest.substr(0, dot);
    const bool known = std::any_of(out.stages.begin(), out.stages.end(), [&](const RecipeStage& s) { return s.name == stage_name; });
    std::vector<std::string> names;
    for (const auto& s : out.stages) names.push_back(s.name);
    if (!known) fail_at(where, YAML::Mark::null_mark(), "", "no stage is called '" + stage_name + "' (stages: " + join(names, ", ") + ")");
  }
  // Every stage but the last hands its exported model on (and the skip-on-rerun check needs it).
  for (size_t i = 0; i + 1 < out.stages.size(); ++i) {
    const RecipeStage& s = out.stages[i];
    if (!s.recipe.train.export_at_end) {
      fail(s.where, ": stages[", i, "] (", s.name, "): train.export_at_end: false, but every stage "
           "but the last must export its model: the next stage (", out.stages[i + 1].name, ") ",
           out.stages[i + 1].model_from_previous ? "starts from it" : "follows it",
           ", and a rerun recognises a finished stage by its report and exported model");
    }
  }
  return out;
}

StagedRecipe load_staged_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  if (fs::is_directory(path, ec)) fail(path, ": is a folder, not a recipe file");
  if (!in) fail(path, ": cannot open recipe (no such file or directory?)");
  std::stringstream text;
  text << in.rdbuf();
  const fs::path file = fs::absolute(path);
  return parse_staged_recipe_text(text.str(), path, file.parent_path().string(), overrides, file.stem().string());
}

namespace {
Recipe single_stage(StagedRecipe staged, const std::string& source) {
  if (!staged.stages.empty()) {
    std::vector<std::string> names;
    for (const auto& s : staged.stages) names.push_back(s.name);
    fail(source, ": the recipe has stages (", join(names, ", "),
         "): it is several runs, read it with load_staged_recipe (`mlaforge train` runs the stages in order)");
  }
  return std::move(staged.base);
}
}  // namespace

Recipe parse_recipe_text(const std::string& yaml, const std::string& source, const std::string& base_dir,
                         const std::vector<std::string>& overrides, const std::string& name) {
  return single_stage(parse_staged_recipe_text(yaml, source, base_dir, overrides, name), source);
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  return single_stage(load_staged_recipe(path, overrides), path);
}

}  // namespace mlaforge
