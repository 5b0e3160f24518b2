#pragma once
// Small string utilities shared by the parsers that suggest "did you mean ...?" (safetensors tensor
// names, recipe keys and values).
#include <cstddef>
#include <string_view>

namespace mlaforge {

// Levenshtein distance (insertions, deletions, substitutions each cost 1), O(|a| |b|) time, O(|b|) memory.
size_t edit_distance(std::string_view a, std::string_view b);

}  // namespace mlaforge
