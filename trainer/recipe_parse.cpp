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
};

[[noreturn]] void fail_at(const Origin& origin, const YAML::Mark& mark, const std::string& key,
                          const std::string& message) {
  std::ostringstream out;
  out << origin.source;
  if (origin.has_marks && !mark.is_null()) out << ":" << mark.line + 1 << ":" << mark.column + 1;
  out << ": ";
  if (!key.empty()) out << key << ": ";
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
      return expand_recipe_path(value, origin.base_dir, spec.path);
    } catch (const Error& e) {
      fail_at(origin, mark, "", e.what());  // the message already names the key
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

void apply_override(const std::string& text, Recipe& recipe) {
  Origin origin{"override '" + text + "'", false, fs::current_path().string()};
  const size_t eq = text.find('=');
  if (eq == std::string::npos) fail_at(origin, YAML::Mark::null_mark(), "", "expected key.path=value");
  const std::string path = trimmed(text.substr(0, eq));
  const std::string raw = text.substr(eq + 1);
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

Recipe parse_recipe_text(const std::string& yaml, const std::string& source, const std::string& base_dir,
                         const std::vector<std::string>& overrides, const std::string& name) {
  Origin origin{source, true, base_dir.empty() ? fs::current_path().string() : fs::absolute(base_dir).string()};
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::ParserException& e) {
    fail_at(origin, e.mark, "", "invalid YAML: " + e.msg);
  } catch (const YAML::Exception& e) {
    fail_at(origin, e.mark, "", std::string("invalid YAML: ") + e.what());
  }
  Recipe recipe;
  if (root.IsMap()) {
    try {
      read_table(root, "", recipe, origin);
    } catch (const YAML::Exception& e) {  // a node yaml-cpp refuses to read: still one located error
      fail_at(origin, e.mark, "", std::string("invalid YAML: ") + e.what());
    }
  } else if (!root.IsNull()) {
    fail_at(origin, root.Mark(), "", "a recipe is a mapping of groups (model:, data:, train:, ...), got " + describe_node(root));
  }
  for (const auto& o : overrides) apply_override(o, recipe);
  fill_derived_defaults(recipe, name);
  try {
    validate_recipe(recipe);
  } catch (const Error& e) {
    fail(source, ": ", e.what());
  }
  return recipe;
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  if (fs::is_directory(path, ec)) fail(path, ": is a folder, not a recipe file");
  if (!in) fail(path, ": cannot open recipe (no such file or directory?)");
  std::stringstream text;
  text << in.rdbuf();
  const fs::path file = fs::absolute(path);
  return parse_recipe_text(text.str(), path, file.parent_path().string(), overrides, file.stem().string());
}

}  // namespace mlaforge
