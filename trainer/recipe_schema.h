#pragma once
// The recipe schema: one row per key (path, type, documentation, allowed values, range) bound to the Recipe
// field it fills. Internal to the recipe files (trainer/recipe_*.cpp); the public API is trainer/recipe.h.
// Parsing, suggestions for unknown keys, the YAML dump and `validate --explain` all read this one table,
// so a key added here is parsed, dumped, suggested and documented at once.
#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "core/strings.h"
#include <variant>
#include <vector>

#include "trainer/recipe.h"

namespace mlaforge::recipe_detail {

// How a key's YAML value is read, and which C++ type holds it.
enum class FieldKind {
  boolean,          // bool: true/false (also yes/no/on/off)
  integer,          // int64_t
  opt_integer,      // std::optional<int64_t>: null allowed
  integer_or_auto,  // int64_t, "auto" stored as 0
  number,           // double (integers accepted)
  opt_number,       // std::optional<double>
  string,           // std::string, null not allowed
  opt_string,       // std::string, null stored as ""
  enumeration,      // std::string, one of `allowed`
  path,             // std::string, null stored as ""; expanded (${VAR}, ~) and made absolute
  path_or_keyword,  // std::string: one of `allowed` kept as is, anything else a path as above
  path_list,        // std::vector<std::string>: a path or a list of paths; null: empty
  string_list,      // std::vector<std::string>: a string or a list; items from `allowed` when given
  number_pair,      // std::array<double, 2>: [a, b]
};

template <class T>
using Accessor = T* (*)(Recipe&);
using FieldRef = std::variant<Accessor<bool>, Accessor<int64_t>, Accessor<std::optional<int64_t>>, Accessor<double>,
                              Accessor<std::optional<double>>, Accessor<std::string>,
                              Accessor<std::vector<std::string>>, Accessor<std::array<double, 2>>>;

struct Range {
  std::optional<double> min, max;
  bool min_exclusive = false;  // value > min rather than >= min
  bool max_exclusive = false;  // value < max rather than <= max
};

struct FieldSpec {
  std::string path;  // "optim.lr"
  FieldKind kind;
  FieldRef ref;
  std::string doc;
  std::vector<std::string> allowed;  // enumeration / path_or_keyword keywords / string_list items
  Range range;                       // numbers (each element of a number_pair)
  std::vector<std::string> aliases;  // other names people use for this key (suggestions only)
  bool split_commas = false;         // string_list: a scalar "a,b" is two items
  // string_list: checks one item; returns the problem ("" when fine). For rules a fixed list cannot say.
  std::string (*check_item)(const std::string& item) = nullptr;

  std::string group() const { return path.substr(0, path.find('.')); }
  // The accessor of type T (throws if the table binds another type: a schema bug, caught by the tests).
  template <class T>
  T& get(Recipe& recipe) const {
    return *std::get<Accessor<T>>(ref)(recipe);
  }
  template <class T>
  const T& get(const Recipe& recipe) const {
    return *std::get<Accessor<T>>(ref)(const_cast<Recipe&>(recipe));
  }
};

struct GroupSpec {
  std::string name;
  std::string doc;
};

const std::vector<FieldSpec>& recipe_schema();
const std::vector<GroupSpec>& recipe_groups();
// The row of a key path, nullptr when there is none.
const FieldSpec* find_field_spec(const std::string& path);
// "number", "integer or null", "one of: cosine, linear, constant", ... for messages and --explain.
std::string kind_description(const FieldSpec& spec);
// The value a field holds in `recipe`, as JSON (null for unset optionals and empty optional strings;
// integer_or_auto 0 as "auto").
nlohmann::json field_value(const FieldSpec& spec, const Recipe& recipe);
// Shortest text that reads back as the same double, always with a '.' or exponent so that YAML readers
// see a float: 2e-05 -> "2.0e-05", 1 -> "1.0", 0.03 -> "0.03".
std::string format_number(double value);

// Whether the C++ type bound to the row matches its kind (checked by the tests for every row).
bool accessor_matches_kind(const FieldSpec& spec);

}  // namespace mlaforge::recipe_detail
