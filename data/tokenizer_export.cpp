#include "data/tokenizer_export.h"

#include "core/error.h"
#include "data/tokenizer_impl.h"

namespace mlaforge {
namespace {

using json = nlohmann::json;

// GGUF token types (llama.cpp's llama_token_type).
constexpr int32_t kGgufControl = 3;
constexpr int32_t kGgufUserDefined = 4;

json byte_level(bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

json split(const char* pattern) {
  return {{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}, {"invert", false}};
}

// Same choices as tokenizer_from_gguf_vocab (data/tokenizer_sentencepiece.cpp), in tokenizer.json terms.
void pre_tokenizer_for(const std::string& pre, json& normalizer, json& pre_tokenizer) {
  normalizer = nullptr;
  if (pre.empty() || pre == "default" || pre == "gpt-2" || pre == "gpt2") {
    pre_tokenizer = byte_level(true);
  } else if (pre == "llama3" || pre == "llama-bpe" || pre == "llama-v3") {
    pre_tokenizer = {{"type", "Sequence"}, {"pretokenizers", {split(tok::kLlama3Pattern), byte_level(false)}}};
  } else if (pre == "qwen2") {
    normalizer = {{"type", "NFC"}};
    pre_tokenizer = {{"type", "Sequence"}, {"pretokenizers", {split(tok::kQwen2Pattern), byte_level(false)}}};
  } else if (pre == "smollm" || pre == "starcoder" || pre == "refact") {
    pre_tokenizer = {{"type", "Sequence"},
                     {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)}}};
  } else {
    fail("GGUF vocabulary: tokenizer.ggml.pre '", pre, "' cannot be exported to tokenizer.json");
  }
}

}  // namespace

HfTokenizerFiles gguf_vocab_to_hf(const GgufVocab& v, const std::string& chat_template) {
  MLA_CHECK(v.model == "gpt2", "GGUF vocabulary '", v.model,
            "': only byte-level BPE (gpt2) vocabularies can be exported to tokenizer.json");
  HfTokenizerFiles out;
  json& t = out.tokenizer;
  t["version"] = "1.0";
  t["truncation"] = nullptr;
  t["padding"] = nullptr;

  json added = json::array();
  for (size_t i = 0; i < v.tokens.size() && i < v.token_types.size(); ++i) {
    const int32_t type = v.token_types[i];
    if (type != kGgufControl && type != kGgufUserDefined) continue;
    added.push_back({{"id", i}, {"content", v.tokens[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", type != kGgufControl}, {"special", type == kGgufControl}});
  }
  t["added_tokens"] = added;
  pre_tokenizer_for(v.pre, t["normalizer"], t["pre_tokenizer"]);
  if (v.add_bos && v.bos) {
    const std::string bos = v.tokens.at(static_cast<size_t>(*v.bos));
    t["post_processor"] = {{"type", "TemplateProcessing"},
                           {"single", {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                                       {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                           {"pair", {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                                     {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                     {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
                           {"special_tokens", {{bos, {{"id", bos}, {"ids", {*v.bos}}, {"tokens", {bos}}}}}}};
  } else {
    t["post_processor"] = byte_level(false);
  }
  t["decoder"] = byte_level(true);

  json vocab = json::object();
  for (size_t i = 0; i < v.tokens.size(); ++i) vocab[v.tokens[i]] = i;
  json merges = json::array();
  for (const std::string& m : v.merges) {
    const size_t space = m.find(' ');
    MLA_CHECK(space != std::string::npos, "GGUF vocabulary: merge '", m, "' has no space");
    merges.push_back({m.substr(0, space), m.substr(space + 1)});
  }
  t["model"] = {{"type", "BPE"},           {"dropout", nullptr},     {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},       {"byte_fallback", false}, {"ignore_merges", false},
                {"vocab", vocab},          {"merges", merges}};

  json& c = out.tokenizer_config;
  c["tokenizer_class"] = "PreTrainedTokenizerFast";
  c["model_max_length"] = 1000000000;
  c["add_bos_token"] = v.add_bos;
  auto token = [&](const std::optional<int32_t>& id) -> json {
    if (!id || *id < 0 || static_cast<size_t>(*id) >= v.tokens.size()) return nullptr;
    return v.tokens[static_cast<size_t>(*id)];
  };
  c["bos_token"] = token(v.bos);
  c["eos_token"] = token(v.eos);
  c["pad_token"] = token(v.pad);
  c["unk_token"] = token(v.unk);
  if (!chat_template.empty()) c["chat_template"] = chat_template;
  return out;
}

}  // namespace mlaforge
