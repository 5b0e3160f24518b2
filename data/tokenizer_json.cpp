// Hugging Face tokenizer.json -> PipelineTokenizer.
#include <nlohmann/json.hpp>

#include <filesystem>

#include "core/error.h"
#include "core/mmap_file.h"
#include "data/tokenizer_impl.h"

namespace mlaforge {
namespace tok {
namespace {

using json = nlohmann::json;

struct Context {
  std::string path;
  bool byte_level = false;  // a ByteLevel pre-tokenizer was found
};

std::string str_or(const json& j, const char* key, const std::string& fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
}
bool bool_or(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

// {"String": "x"} or {"Regex": "..."}
std::pair<std::string, bool> parse_pattern(const Context& ctx, const json& j, const char* where) {
  MLA_CHECK(j.is_object(), ctx.path, ": ", where, ": pattern must be an object");
  if (j.contains("String")) return {j["String"].get<std::string>(), false};
  if (j.contains("Regex")) return {j["Regex"].get<std::string>(), true};
  fail(ctx.path, ": ", where, ": pattern must be {\"String\": ...} or {\"Regex\": ...}");
}

std::unique_ptr<Normalizer> parse_normalizer(const Context& ctx, const json& j) {
  if (j.is_null()) return nullptr;
  const std::string type = str_or(j, "type", "");
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") return make_unicode_normalizer(type);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const json& s : j.at("normalizers"))
      if (auto n = parse_normalizer(ctx, s)) steps.push_back(std::move(n));
    return make_sequence_normalizer(std::move(steps));
  }
  if (type == "Prepend") return make_prepend_normalizer(j.at("prepend").get<std::string>());
  if (type == "Replace") {
    auto [pattern, is_regex] = parse_pattern(ctx, j.at("pattern"), "Replace normalizer");
    return make_replace_normalizer(pattern, is_regex, j.at("content").get<std::string>());
  }
  if (type == "Lowercase") return make_lowercase_normalizer();
  if (type == "Strip") return make_strip_normalizer(bool_or(j, "strip_left", true), bool_or(j, "strip_right", true));
  fail(ctx.path, ": normalizer type '", type, "' is not supported (supported: NFC, NFD, NFKC, NFKD, Sequence, ",
       "Prepend, Replace, Lowercase, Strip)");
}

SplitBehavior parse_behavior(const Context& ctx, const std::string& name) {
  if (name == "Removed") return SplitBehavior::removed;
  if (name == "Isolated") return SplitBehavior::isolated;
  if (name == "MergedWithPrevious") return SplitBehavior::merged_with_previous;
  if (name == "MergedWithNext") return SplitBehavior::merged_with_next;
  if (name == "Contiguous") return SplitBehavior::contiguous;
  fail(ctx.path, ": unknown Split behavior '", name, "'");
}

std::string metaspace_scheme(const json& j) {
  if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) return j["prepend_scheme"].get<std::string>();
  return bool_or(j, "add_prefix_space", true) ? "always" : "never";
}

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(Context& ctx, const json& j) {
  if (j.is_null()) return nullptr;
  const std::string type = str_or(j, "type", "");
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const json& s : j.at("pretokenizers"))
      if (auto p = parse_pre_tokenizer(ctx, s)) steps.push_back(std::move(p));
    return make_sequence_pre_tokenizer(std::move(steps));
  }
  if (type == "Split") {
    auto [pattern, is_regex] = parse_pattern(ctx, j.at("pattern"), "Split pre-tokenizer");
    return make_split_pre_tokenizer(pattern, is_regex, parse_behavior(ctx, j.at("behavior").get<std::string>()),
                                    bool_or(j, "invert", false));
  }
  if (type == "ByteLevel") {
    ctx.byte_level = true;
    return make_byte_level_pre_tokenizer(bool_or(j, "add_prefix_space", true), bool_or(j, "use_regex", true));
  }
  if (type == "Digits") return make_digits_pre_tokenizer(bool_or(j, "individual_digits", false));
  if (type == "Metaspace") {
    return make_metaspace_pre_tokenizer(str_or(j, "replacement", std::string(kSpaceSymbol)), metaspace_scheme(j),
                                        bool_or(j, "split", true));
  }
  if (type == "Whitespace") return make_whitespace_pre_tokenizer();
  if (type == "WhitespaceSplit") return make_whitespace_split_pre_tokenizer();
  fail(ctx.path, ": pre_tokenizer type '", type, "' is not supported (supported: Sequence, Split, ByteLevel, ",
       "Digits, Metaspace, Whitespace, WhitespaceSplit)");
}

void parse_decoder(const Context& ctx, const json& j, std::vector<std::unique_ptr<DecoderStep>>& steps) {
  const std::string type = str_or(j, "type", "");
  if (type == "Sequence") {
    for (const json& s : j.at("decoders")) parse_decoder(ctx, s, steps);
  } else if (type == "ByteLevel") {
    steps.push_back(make_byte_level_decoder());
  } else if (type == "Replace") {
    auto [pattern, is_regex] = parse_pattern(ctx, j.at("pattern"), "Replace decoder");
    steps.push_back(make_replace_decoder(pattern, is_regex, j.at("content").get<std::string>()));
  } else if (type == "ByteFallback") {
    steps.push_back(make_byte_fallback_decoder());
  } else if (type == "Fuse") {
    steps.push_back(make_fuse_decoder());
  } else if (type == "Strip") {
    steps.push_back(make_strip_decoder(j.at("content").get<std::string>(), j.value("start", size_t{0}),
                                       j.value("stop", size_t{0})));
  } else if (type == "Metaspace") {
    steps.push_back(make_metaspace_decoder(str_or(j, "replacement", std::string(kSpaceSymbol)),
                                           metaspace_scheme(j) != "never"));
  } else {
    fail(ctx.path, ": decoder type '", type, "' is not supported (supported: Sequence, ByteLevel, Replace, ",
         "ByteFallback, Fuse, Strip, Metaspace)");
  }
}

// Special tokens the post-processor puts around a single sequence.
void parse_post_processor(const Context& ctx, const json& j, std::vector<int32_t>& prefix,
                          std::vector<int32_t>& suffix) {
  if (j.is_null()) return;
  const std::string type = str_or(j, "type", "");
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    for (const json& p : j.at("processors")) parse_post_processor(ctx, p, prefix, suffix);
    return;
  }
  if (type == "TemplateProcessing") {
    const json& special = j.contains("special_tokens") ? j["special_tokens"] : json::object();
    bool seen_sequence = false;
    for (const json& item : j.at("single")) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      MLA_CHECK(item.contains("SpecialToken"), ctx.path, ": TemplateProcessing item ", item.dump(),
                " is neither Sequence nor SpecialToken");
      const std::string name = item["SpecialToken"].at("id").get<std::string>();
      MLA_CHECK(special.contains(name), ctx.path, ": TemplateProcessing names special token '", name,
                "' missing from special_tokens");
      for (const json& id : special[name].at("ids")) (seen_sequence ? suffix : prefix).push_back(id.get<int32_t>());
    }
    return;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    prefix.push_back(j.at("cls").at(1).get<int32_t>());
    suffix.push_back(j.at("sep").at(1).get<int32_t>());
    return;
  }
  fail(ctx.path, ": post_processor type '", type, "' is not supported (supported: ByteLevel, Sequence, ",
       "TemplateProcessing, BertProcessing, RobertaProcessing)");
}

std::optional<std::string> config_token(const json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace
}  // namespace tok

std::unique_ptr<Tokenizer> load_tokenizer_json(const std::string& path) {
  using tok::json;
  json j;
  try {
    j = json::parse(read_text_file(path));
  } catch (const json::exception& e) {
    fail(path, ": not valid JSON (", e.what(), ")");
  }
  tok::Context ctx{path};
  tok::PipelineParts parts;
  parts.kind = "hf-bpe";
  try {
    MLA_CHECK(j.is_object() && j.contains("model"), path, ": no \"model\" (not a tokenizer.json?)");
    const json& m = j["model"];
    const std::string type = tok::str_or(m, "type", m.contains("merges") ? "BPE" : "");
    MLA_CHECK(type == "BPE", path, ": model type '", type,
              "' is not supported (only BPE: Unigram/WordPiece/WordLevel tokenizers are not implemented)");
    if (m.contains("dropout") && m["dropout"].is_number())
      MLA_CHECK(m["dropout"].get<double>() == 0.0, path, ": BPE dropout is not supported");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      const std::string v = tok::str_or(m, key, "");
      MLA_CHECK(v.empty(), path, ": BPE ", key, " '", v, "' is not supported");
    }
    parts.normalizer = tok::parse_normalizer(ctx, j.value("normalizer", json()));
    parts.pre_tokenizer = tok::parse_pre_tokenizer(ctx, j.value("pre_tokenizer", json()));
    if (parts.pre_tokenizer && ctx.byte_level)
      MLA_CHECK(parts.pre_tokenizer->is_byte_level(), path, ": a ByteLevel pre-tokenizer must come last");

    tok::BpeConfig config;
    config.byte_level = ctx.byte_level;
    config.byte_fallback = tok::bool_or(m, "byte_fallback", false);
    config.fuse_unk = tok::bool_or(m, "fuse_unk", false);
    config.ignore_merges = tok::bool_or(m, "ignore_merges", false);
    const json& vocab = m.at("vocab");
    MLA_CHECK(vocab.is_object(), path, ": model.vocab must be an object");
    const std::string unk = tok::str_or(m, "unk_token", "");
    if (!unk.empty()) {
      auto it = vocab.find(unk);
      MLA_CHECK(it != vocab.end(), path, ": unk_token '", unk, "' is not in the vocabulary");
      config.unk = it->get<int32_t>();
      parts.unk = config.unk;
    }
    const json no_merges = json::array();
    const json& merges = m.contains("merges") ? m["merges"] : no_merges;
    auto model = std::make_unique<tok::BpeModel>(config);
    model->reserve(vocab.size(), merges.size());
    for (auto it = vocab.begin(); it != vocab.end(); ++it) model->add_piece(it.value().get<int32_t>(), it.key());
    for (const json& merge : merges) {
      if (merge.is_string()) {
        const std::string& s = merge.get_ref<const std::string&>();
        const size_t space = s.find(' ');
        MLA_CHECK(space != std::string::npos, path, ": merge '", s, "' has no space");
        model->add_merge(std::string_view(s).substr(0, space), std::string_view(s).substr(space + 1));
      } else {
        MLA_CHECK(merge.is_array() && merge.size() == 2, path, ": merge ", merge.dump(), " is not a pair");
        model->add_merge(merge[0].get_ref<const std::string&>(), merge[1].get_ref<const std::string&>());
      }
    }
    model->finalize();
    parts.model = std::move(model);

    if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
      for (const json& a : j["added_tokens"]) {
        tok::AddedToken t;
        t.id = a.at("id").get<int32_t>();
        t.content = a.at("content").get<std::string>();
        t.special = tok::bool_or(a, "special", false);
        t.lstrip = tok::bool_or(a, "lstrip", false);
        t.rstrip = tok::bool_or(a, "rstrip", false);
        t.single_word = tok::bool_or(a, "single_word", false);
        t.normalized = tok::bool_or(a, "normalized", !t.special);
        parts.added.push_back(std::move(t));
      }
    }
    tok::parse_post_processor(ctx, j.value("post_processor", json()), parts.prefix, parts.suffix);
    const json& decoder = j.value("decoder", json());
    if (!decoder.is_null()) {
      parts.has_decoder = true;
      tok::parse_decoder(ctx, decoder, parts.decoder);
    }
  } catch (const json::exception& e) {
    fail(path, ": unexpected tokenizer.json layout (", e.what(), ")");
  }

  auto tokenizer = std::make_unique<tok::PipelineTokenizer>(std::move(parts));
  // bos/eos/pad from tokenizer_config.json beside the file, when present.
  const std::string config_path = (std::filesystem::path(path).parent_path() / "tokenizer_config.json").string();
  bool have_config = false;
  if (file_exists(config_path)) {
    json config;
    try {
      config = json::parse(read_text_file(config_path));
    } catch (const json::exception& e) {
      fail(config_path, ": not valid JSON (", e.what(), ")");
    }
    have_config = true;
    auto lookup = [&](const char* key) -> std::optional<int32_t> {
      const auto name = tok::config_token(config, key);
      if (!name) return std::nullopt;
      return tokenizer->token_to_id(*name);
    };
    tokenizer->bos_id = lookup("bos_token");
    tokenizer->eos_id = lookup("eos_token");
    tokenizer->pad_id = lookup("pad_token");
    if (auto unk = lookup("unk_token")) tokenizer->unk_id = unk;
  }
  if (!have_config && !tokenizer->bos_id) {
    // Without a config, the first token the template puts before the text is the BOS.
    const auto ids = tokenizer->encode("", true);
    if (!ids.empty()) tokenizer->bos_id = ids.front();
  }
  return tokenizer;
}

}  // namespace mlaforge
