#include "trainer/trainable.h"

#include <map>
#include <regex>
#include <set>

#include "core/error.h"
#include "model/weight_names.h"

namespace mlaforge {
namespace {

std::string trim(const std::string& s) {
  const auto begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  const auto end = s.find_last_not_of(" \t\r\n");
  return s.substr(begin, end - begin + 1);
}

// Whole-string glob match: '*' any run (possibly empty, dots included), '?' one character. Iterative
// with one backtrack point, so it is linear-ish and never recurses.
bool glob_match(const std::string& pattern, const std::string& text) {
  size_t p = 0, t = 0, star = std::string::npos, star_t = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p, ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_t = t;
    } else if (star != std::string::npos) {
      p = star + 1;
      t = ++star_t;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

// "layers.{i}.attn.<rest>" -> "<rest>"; empty when the name is not inside a layer's attention block.
std::string attention_suffix(const std::string& ours) {
  if (ours.rfind("layers.", 0) != 0) return "";
  const auto dot = ours.find('.', 7);
  if (dot == std::string::npos) return "";
  const std::string prefix = "attn.";
  if (ours.compare(dot + 1, prefix.size(), prefix) != 0) return "";
  return ours.substr(dot + 1 + prefix.size());
}

struct NamedParam {
  std::string ours, hf;  // hf empty when the table has no row (never for a well-formed model)
  torch::Tensor tensor;
};

std::vector<NamedParam> named_params(const DecoderImpl& model) {
  std::map<std::string, std::string> to_hf;
  for (const WeightName& w : expand_weight_names(model.config())) to_hf[w.ours] = w.hf;
  std::vector<NamedParam> out;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    auto it = to_hf.find(item.key());
    out.push_back({item.key(), it == to_hf.end() ? "" : it->second, item.value()});
  }
  return out;
}

std::string model_kind(const ModelConfig& c) {
  return family_name(c.family) + (c.is_mla() ? " (MLA attention)" : " (GQA attention)");
}

}  // namespace

std::vector<std::string> parse_trainable_spec(const std::string& spec) {
  std::vector<std::string> items;
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t comma = spec.find(',', start);
    const std::string item = trim(spec.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (!item.empty()) items.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return items;
}

bool trainable_pattern_matches(const std::string& pattern, const std::string& name) {
  if (pattern.rfind("re:", 0) == 0) {
    const std::string expr = pattern.substr(3);
    try {
      return std::regex_match(name, std::regex(expr, std::regex::ECMAScript));
    } catch (const std::regex_error& e) {
      fail("trainable parameters: invalid regular expression '", expr, "' (", e.what(), ")");
    }
  }
  return glob_match(pattern, name);
}

TrainableSelection select_trainable(DecoderImpl& model, const std::vector<std::string>& items,
                                    const TrainableOptions& options) {
  const ModelConfig& c = model.config();
  MLA_CHECK(!items.empty(), "trainable parameters: empty selection (give up_proj, attention, all or name patterns)");
  const std::vector<NamedParam> params = named_params(model);
  std::set<std::string> chosen;

  for (const std::string& raw : items) {
    const std::string item = trim(raw);
    MLA_CHECK(!item.empty(), "trainable parameters: empty item in the selection");
    size_t matched = 0;
    if (item == "all") {
      for (const auto& p : params) chosen.insert(p.ours), ++matched;
    } else if (item == "up_proj") {
      MLA_CHECK(c.is_mla(), "trainable set 'up_proj' (the MLA up-projections kv_b_proj/q_b_proj) needs an MLA "
                "model, but this is ", model_kind(c), "; convert it first, or use 'attention', 'all' or name "
                "patterns");
      for (const auto& p : params) {
        const std::string rest = attention_suffix(p.ours);
        if (rest == "wkv_b.weight" || rest == "wq_b.weight") chosen.insert(p.ours), ++matched;
      }
    } else if (item == "attention") {
      for (const auto& p : params)
        if (!attention_suffix(p.ours).empty()) chosen.insert(p.ours), ++matched;
    } else {
      for (const auto& p : params) {
        if (trainable_pattern_matches(item, p.ours) || (!p.hf.empty() && trainable_pattern_matches(item, p.hf)))
          chosen.insert(p.ours), ++matched;
      }
    }
    if (matched == 0) {
      const NamedParam& example = params.size() > 1 ? params[1] : params.front();
      fail("trainable parameters: '", item, "' matches no parameter of this ", model_kind(c),
           " model (patterns match whole names, Hugging Face like '", example.hf, "' or mlaforge like '",
           example.ours, "'; `*` matches any characters, `re:` starts a regular expression)");
    }
  }

  TrainableSelection selection;
  for (const auto& p : params) {
    const bool train = chosen.count(p.ours) != 0;
    // requires_grad_ on a leaf Parameter is always allowed; the tensor object itself is kept.
    p.tensor.requires_grad_(train);
    (train ? selection.trainable : selection.frozen).push_back(p.ours);
    (train ? selection.trainable_numel : selection.frozen_numel) += p.tensor.numel();
  }
  if (options.frozen_dtype) cast_frozen_parameters(model, *options.frozen_dtype);
  return selection;
}

TrainableSelection select_trainable(DecoderImpl& model, const std::string& spec, const TrainableOptions& options) {
  const auto items = parse_trainable_spec(spec);
  MLA_CHECK(!items.empty(), "trainable parameters: empty selection '", spec,
            "' (give up_proj, attention, all or name patterns)");
  return select_trainable(model, items, options);
}

void cast_frozen_parameters(DecoderImpl& model, torch::Dtype dtype) {
  torch::NoGradGuard no_grad;
  for (auto& item : model.named_parameters(true)) {
    torch::Tensor& p = item.value();
    if (p.requires_grad() || p.scalar_type() == dtype) continue;
    // set_data swaps the storage under the same Parameter (what Module::to does), so the module's member
    // tensors and any list of parameters taken earlier see the new dtype.
    p.set_data(p.to(dtype));
  }
}

void check_uniform_dtype(const DecoderImpl& model, torch::Dtype dtype) {
  for (const auto& item : model.named_parameters(true)) {
    MLA_CHECK(item.value().scalar_type() == dtype, "parameter '", item.key(), "' is ",
              c10::toString(item.value().scalar_type()), " but the model computes in ", c10::toString(dtype),
              " (every parameter must share the compute dtype; frozen parameters can be cast only when the "
              "model computes in that dtype)");
  }
}

std::vector<std::pair<std::string, torch::Tensor>> trainable_parameters(const DecoderImpl& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : model.named_parameters(true))
    if (item.value().requires_grad()) out.emplace_back(item.key(), item.value());
  return out;
}

}  // namespace mlaforge
