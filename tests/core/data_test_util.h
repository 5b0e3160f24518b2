#pragma once
// Helpers shared by token_cache_test.cpp and data_loader_test.cpp: a tiny byte-level tokenizer written in
// the test (so the cache and loader tests need no asset), a generated JSONL conversation dataset, and a
// tokenizer wrapper that counts encode calls.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace mlaforge::testing {

// GPT-2's byte -> printable character table (bytes_to_unicode), as UTF-8 strings.
inline std::vector<std::string> byte_level_alphabet() {
  std::vector<int> bs, cs;
  for (int b = 0; b < 256; ++b)
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) bs.push_back(b);
  cs = bs;
  int n = 0;
  for (int b = 0; b < 256; ++b)
    if (std::find(bs.begin(), bs.end(), b) == bs.end()) {
      bs.push_back(b);
      cs.push_back(256 + n++);
    }
  std::vector<std::string> out(256);
  for (size_t i = 0; i < bs.size(); ++i) {
    const int c = cs[i];
    std::string s;
    if (c < 0x80) {
      s += static_cast<char>(c);
    } else {
      s += static_cast<char>(0xC0 | (c >> 6));
      s += static_cast<char>(0x80 | (c & 0x3F));
    }
    out[static_cast<size_t>(bs[i])] = s;
  }
  return out;
}

// A byte-level BPE tokenizer.json: ids 0..255 are the bytes, 256.. the ChatML / Mistral markers (special),
// then one token per merge. No merges: every byte is a token, so sample lengths are text lengths.
// Writes <dir>/tokenizer.json and a tokenizer_config.json (eos <|im_end|>, pad <|endoftext|>).
inline std::string write_tiny_tokenizer(const std::string& dir, const std::vector<std::string>& merges = {}) {
  std::filesystem::create_directories(dir);
  const std::vector<std::string> alphabet = byte_level_alphabet();
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[alphabet[static_cast<size_t>(b)]] = b;
  const std::vector<std::string> added_names = {"<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>"};
  nlohmann::json added = nlohmann::json::array();
  int id = 256;
  for (const std::string& a : added_names) {
    added.push_back({{"id", id}, {"content", a}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
    vocab[a] = id++;
  }
  nlohmann::json merge_list = nlohmann::json::array();
  for (const std::string& m : merges) {
    const size_t space = m.find(' ');
    vocab[m.substr(0, space) + m.substr(space + 1)] = id++;
    merge_list.push_back(m);
  }
  const nlohmann::json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  const nlohmann::json tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", byte_level},
      {"post_processor", nullptr},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
        {"vocab", vocab}, {"merges", merge_list}}}};
  std::ofstream(dir + "/tokenizer.json") << tok.dump();
  std::ofstream(dir + "/tokenizer_config.json") << R"({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})";
  return dir + "/tokenizer.json";
}

// Deterministic pseudo-random conversations: {"messages": [...]} per line. Most are one user/assistant
// exchange, every fifth has a system prompt and two exchanges; answers run from one to 36 words, so
// with max_seq_len ~256 some lose trailing turns and some are dropped. Rows listed in `bad_rows` (0-based)
// have two user turns in a row (valid for ChatML, invalid for Mistral).
inline void write_conversations(const std::string& path, int rows, uint64_t seed, const std::vector<int>& bad_rows = {}) {
  static const char* const kWords[] = {"the", "cat", "sat", "on", "a", "mat", "while", "numbers", "grow", "quickly",
                                       "under", "bright", "stars", "and", "seven", "quiet", "rivers", "carry",
                                       "old", "stories", "to", "distant", "towns", "because", "nobody", "asked"};
  uint64_t state = seed * 6364136223846793005ull + 1442695040888963407ull;
  const auto next = [&](uint64_t n) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (state >> 33) % n;
  };
  const auto text = [&](uint64_t min_words, uint64_t max_words) {
    std::string s;
    const uint64_t n = min_words + next(max_words - min_words + 1);
    for (uint64_t i = 0; i < n; ++i) s += (i ? " " : "") + std::string(kWords[next(std::size(kWords))]);
    return s;
  };
  std::ofstream out(path);
  for (int r = 0; r < rows; ++r) {
    nlohmann::json messages = nlohmann::json::array();
    const bool bad = std::find(bad_rows.begin(), bad_rows.end(), r) != bad_rows.end();
    if (r % 5 == 4) {
      messages.push_back({{"role", "system"}, {"content", "Row " + std::to_string(r) + ": " + text(2, 6)}});
      messages.push_back({{"role", "user"}, {"content", text(3, 12)}});
      messages.push_back({{"role", "assistant"}, {"content", text(2, 30)}});
    }
    messages.push_back({{"role", "user"}, {"content", "Question " + std::to_string(r) + ": " + text(3, 15)}});
    if (bad) messages.push_back({{"role", "user"}, {"content", text(2, 5)}});
    messages.push_back({{"role", "assistant"}, {"content", text(1, 36)}});
    out << nlohmann::json{{"messages", messages}, {"id", r}}.dump() << "\n";
  }
}

// Delegates to another tokenizer and counts encode() calls.
class CountingTokenizer : public Tokenizer {
 public:
  explicit CountingTokenizer(const Tokenizer& inner) : inner_(inner) {
    bos_id = inner.bos_id;
    eos_id = inner.eos_id;
    pad_id = inner.pad_id;
    unk_id = inner.unk_id;
  }
  std::vector<int32_t> encode(std::string_view text, bool add_special) const override {
    ++encodes;
    return inner_.encode(text, add_special);
  }
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    return inner_.decode(ids, skip_special);
  }
  int32_t vocab_size() const override { return inner_.vocab_size(); }
  std::optional<int32_t> token_to_id(std::string_view t) const override { return inner_.token_to_id(t); }
  std::string id_to_token(int32_t id) const override { return inner_.id_to_token(id); }
  bool is_special(int32_t id) const override { return inner_.is_special(id); }
  std::string kind() const override { return inner_.kind(); }

  mutable std::atomic<int64_t> encodes{0};

 private:
  const Tokenizer& inner_;
};

}  // namespace mlaforge::testing
