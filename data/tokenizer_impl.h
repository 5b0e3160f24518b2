#pragma once
// Internals shared by the tokenizer loaders (tokenizer_*.cpp). Not part of the public API.
//
// Every loader builds one PipelineTokenizer, the Hugging Face pipeline in miniature:
//   added-token split -> normalizer -> pre-tokenizer -> BPE model -> template (BOS...)  [encode]
//   ids -> token strings -> decoder steps -> text                                      [decode]
// The byte-level step of GPT-2 style tokenizers is folded into the model: the vocabulary is stored as raw
// bytes (each byte-level character mapped back to its byte), so words are never re-encoded as strings.
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.h"

typedef struct pcre2_real_code_8 pcre2_code_8;

namespace mlaforge::tok {

// ---------------------------------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------------------------------
// Length of the valid UTF-8 sequence at s[i] (1..4), or 0 when it is not valid there.
size_t utf8_valid_len(const uint8_t* s, size_t n, size_t i);
// Length of the sequence starting with this lead byte assuming valid UTF-8 (1 for stray bytes).
inline size_t utf8_char_len(uint8_t lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}
bool utf8_is_valid(std::string_view s);
// Appends bytes to out as Rust's String::from_utf8_lossy does (each maximal invalid subpart -> U+FFFD).
void append_utf8_lossy(std::string& out, std::string_view bytes);
void append_utf8(std::string& out, uint32_t cp);
// Decodes the code point at s[i] (valid UTF-8 assumed), advancing i.
uint32_t utf8_next(std::string_view s, size_t& i);
inline constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 '▁'
inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// GPT-2 byte <-> unicode table. byte_to_unicode_utf8(b) is the UTF-8 spelling of the character that
// stands for byte b; unicode_to_byte(cp) is the byte a character stands for, or -1.
std::string_view byte_to_unicode_utf8(uint8_t b);
int unicode_to_byte(uint32_t cp);
// Maps a byte-level token spelling back to raw bytes; false when a character is not a byte character.
bool byte_level_to_bytes(std::string_view token, std::string& out);

// Unicode general categories needed outside the regexes (Rust's char::is_numeric, char::is_whitespace).
bool is_numeric_cp(uint32_t cp);
bool is_whitespace_cp(uint32_t cp);

// ---------------------------------------------------------------------------------------------------
// Hash maps
// ---------------------------------------------------------------------------------------------------
uint64_t hash_bytes(const void* data, size_t len);

// memcmp(a, b, n) == 0 for the short strings of tokenizers, without a library call.
inline bool bytes_equal(const char* a, const char* b, size_t n) {
  if (n >= 8) {
    uint64_t x, y;
    for (size_t i = 0; i + 8 <= n; i += 8) {
      __builtin_memcpy(&x, a + i, 8);
      __builtin_memcpy(&y, b + i, 8);
      if (x != y) return false;
    }
    __builtin_memcpy(&x, a + n - 8, 8);
    __builtin_memcpy(&y, b + n - 8, 8);
    return x == y;
  }
  if (n >= 4) {
    uint32_t x0, y0, x1, y1;
    __builtin_memcpy(&x0, a, 4);
    __builtin_memcpy(&y0, b, 4);
    __builtin_memcpy(&x1, a + n - 4, 4);
    __builtin_memcpy(&y1, b + n - 4, 4);
    return x0 == y0 && x1 == y1;
  }
  for (size_t i = 0; i < n; ++i)
    if (a[i] != b[i]) return false;
  return true;
}

// Open-addressing string -> id map whose keys point into storage owned by the map.
class StringIdMap {
 public:
  void reserve(size_t n);
  // Inserts or overwrites.
  void set(std::string_view key, int32_t id);
  int32_t find(std::string_view key) const;  // -1 when absent
  size_t size() const { return count_; }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t offset = 0;
    uint32_t length = 0;
    int32_t id = -1;  // -1: empty
  };
  void grow();
  std::vector<Slot> slots_;
  std::string storage_;
  size_t count_ = 0;
};

// Open-addressing (id, id) -> (rank, new id) map for BPE merges.
class PairMap {
 public:
  void reserve(size_t n);
  void set(int32_t a, int32_t b, uint32_t rank, int32_t merged);  // overwrites (HF: last one wins)
  // Returns false when absent.
  bool find(int32_t a, int32_t b, uint32_t& rank, int32_t& merged) const {
    if (slots_.empty()) return false;
    const uint64_t key = pack(a, b);
    size_t i = mix(key) & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.merged < 0) return false;
      if (s.key == key) {
        rank = s.rank;
        merged = s.merged;
        return true;
      }
      i = (i + 1) & mask_;
    }
  }
  size_t size() const { return count_; }

 private:
  struct Slot {
    uint64_t key = 0;
    uint32_t rank = 0;
    int32_t merged = -1;
  };
  static uint64_t pack(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  static uint64_t mix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return k;
  }
  void grow();
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t count_ = 0;
};

// Byte trie for leftmost-longest literal matching (added tokens, SentencePiece user-defined pieces).
class LiteralTrie {
 public:
  void add(std::string_view literal, int32_t value);
  bool empty() const { return nodes_.size() <= 1; }
  // Longest literal that starts at text[pos]: returns its length (0 when none) and its value.
  size_t longest_at(std::string_view text, size_t pos, int32_t& value) const;
  // Whether byte b starts some literal (cheap pre-filter).
  bool may_start(uint8_t b) const { return first_[b]; }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> next;  // sorted by byte
    int32_t value = -1;
  };
  std::vector<Node> nodes_{Node{}};
  std::array<bool, 256> first_{};
};

// ---------------------------------------------------------------------------------------------------
// Regex (PCRE2, UTF + UCP, JIT)
// ---------------------------------------------------------------------------------------------------
class Regex {
 public:
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Calls fn(start, end) for every non-overlapping, non-empty match of the pattern in text (valid UTF-8),
  // left to right, the way Oniguruma's find_iter does for HF.
  template <typename Fn>
  void for_each_match(std::string_view text, Fn&& fn) const {
    size_t pos = 0;
    size_t start = 0, end = 0;
    while (pos <= text.size() && next_match(text, pos, start, end)) {
      if (end > start) {
        fn(start, end);
        pos = end;
      } else {
        // Empty match: step over one character.
        pos = start + (start < text.size() ? utf8_char_len(static_cast<uint8_t>(text[start])) : 1);
      }
    }
  }
  const std::string& pattern() const { return pattern_; }

 private:
  bool next_match(std::string_view text, size_t pos, size_t& start, size_t& end) const;
  std::string pattern_;
  pcre2_code_8* code_ = nullptr;
  bool jit_ = false;
};

// ---------------------------------------------------------------------------------------------------
// Pipeline pieces
// ---------------------------------------------------------------------------------------------------
// Stable storage for strings created while pre-tokenizing one text (views into it stay valid).
class Arena {
 public:
  std::string_view copy(std::string_view a, std::string_view b = {});
  void reset();

 private:
  std::vector<std::unique_ptr<char[]>> blocks_;
  std::vector<size_t> sizes_;
  size_t block_ = 0, used_ = 0;
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

struct Piece {
  std::string_view text;
  bool at_start;  // begins at offset 0 of the original input (Metaspace prepend_scheme "first")
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Appends the splits of in to out (empty splits are dropped by the caller).
  virtual void split(const Piece& in, std::vector<Piece>& out, Arena& arena) const = 0;
  // True for ByteLevel: the model then works on bytes. Only allowed as the last pre-tokenizer.
  virtual bool is_byte_level() const { return false; }
};

class DecoderStep {
 public:
  virtual ~DecoderStep() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
  virtual bool is_byte_level() const { return false; }
};

std::unique_ptr<Normalizer> make_unicode_normalizer(const std::string& form);  // NFC NFD NFKC NFKD
std::unique_ptr<Normalizer> make_sequence_normalizer(std::vector<std::unique_ptr<Normalizer>> steps);
std::unique_ptr<Normalizer> make_prepend_normalizer(std::string prefix);
std::unique_ptr<Normalizer> make_replace_normalizer(std::string pattern, bool is_regex, std::string content);
std::unique_ptr<Normalizer> make_lowercase_normalizer();
std::unique_ptr<Normalizer> make_strip_normalizer(bool left, bool right);
// SentencePiece's own normalization of one chunk (identity character map): optional removal of
// leading/trailing/repeated spaces, dummy-prefix '▁', spaces -> '▁'.
std::unique_ptr<Normalizer> make_sentencepiece_normalizer(bool add_dummy_prefix, bool remove_extra_whitespaces);

enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };
std::unique_ptr<PreTokenizer> make_sequence_pre_tokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps);
std::unique_ptr<PreTokenizer> make_split_pre_tokenizer(std::string pattern, bool is_regex, SplitBehavior behavior,
                                                       bool invert);
std::unique_ptr<PreTokenizer> make_byte_level_pre_tokenizer(bool add_prefix_space, bool use_regex);
std::unique_ptr<PreTokenizer> make_digits_pre_tokenizer(bool individual_digits);
std::unique_ptr<PreTokenizer> make_metaspace_pre_tokenizer(std::string replacement, std::string prepend_scheme,
                                                           bool split);
std::unique_ptr<PreTokenizer> make_whitespace_pre_tokenizer();        // \w+|[^\w\s]+
std::unique_ptr<PreTokenizer> make_whitespace_split_pre_tokenizer();  // split on whitespace
// The regexes of the pre-tokenizers named by GGUF's tokenizer.ggml.pre (HF equivalents).
extern const char* const kGpt2Pattern;
extern const char* const kLlama3Pattern;
extern const char* const kQwen2Pattern;

std::unique_ptr<DecoderStep> make_byte_level_decoder();
std::unique_ptr<DecoderStep> make_replace_decoder(std::string pattern, bool is_regex, std::string content);
std::unique_ptr<DecoderStep> make_byte_fallback_decoder();
std::unique_ptr<DecoderStep> make_fuse_decoder();
std::unique_ptr<DecoderStep> make_strip_decoder(std::string content, size_t start, size_t stop);
std::unique_ptr<DecoderStep> make_metaspace_decoder(std::string replacement, bool prepend);

// ---------------------------------------------------------------------------------------------------
// BPE model
// ---------------------------------------------------------------------------------------------------
struct BpeConfig {
  enum class Merges { by_rank, by_score };
  Merges merges = Merges::by_rank;
  bool byte_level = false;     // words are raw bytes; vocabulary spelled in GPT-2 byte characters
  bool byte_fallback = false;  // unknown characters -> <0xNN> pieces
  bool ignore_merges = false;  // a word that is itself in the vocabulary is one token (Llama-3)
  bool fuse_unk = false;
  std::optional<int32_t> unk;
  // by_score (SentencePiece): consecutive unknown pieces without byte fallback are fused into one <unk>.
};

class BpeModel {
 public:
  explicit BpeModel(const BpeConfig& config);
  ~BpeModel();
  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;

  // Building, in this order: pieces, then merges (by_rank: rank = call order; HF keeps the last of
  // duplicates) or scores (by_score), frozen pieces, then finalize().
  void reserve(size_t pieces, size_t merges);
  void add_piece(int32_t id, std::string spelling);
  // Merge of two pieces by spelling; throws naming the merge when a part or the result is not a piece.
  void add_merge(std::string_view a, std::string_view b);
  // by_score: merge priority of a piece (higher first); mergeable=false: BPE never produces it.
  void set_score(int32_t id, float score, bool mergeable);
  // SentencePiece user-defined piece: matched literally, never merged.
  void add_frozen(std::string_view spelling, int32_t id);
  void finalize();

  // Appends the ids of one pre-tokenized word.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  bool has_piece(int32_t id) const {
    return id >= 0 && static_cast<size_t>(id) < present_.size() && present_[static_cast<size_t>(id)];
  }
  const std::string& piece(int32_t id) const { return pieces_[static_cast<size_t>(id)]; }
  int32_t find_piece(std::string_view spelling) const { return spelling_to_id_.find(spelling); }
  int32_t max_id() const { return static_cast<int32_t>(pieces_.size()) - 1; }
  const BpeConfig& config() const { return config_; }

 private:
  void encode_chunk(std::string_view word, std::vector<int32_t>& out) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  template <typename Lookup>
  void merge_symbols(std::string_view word, Lookup&& lookup) const;

  BpeConfig config_;
  uint64_t uid_;
  std::vector<std::string> pieces_;  // id -> spelling in the file
  std::vector<uint8_t> present_;
  StringIdMap spelling_to_id_;       // file spelling -> id
  StringIdMap raw_to_id_;            // byte_level: raw bytes -> id (char mode uses spelling_to_id_)
  PairMap merges_;
  uint32_t merge_count_ = 0;
  std::vector<uint32_t> score_keys_;  // by_score: id -> priority (smaller first); UINT32_MAX: never
  std::array<int32_t, 256> byte_ids_{};   // byte_level: id of each byte; else <0xNN> fallback ids
  std::array<int32_t, 128> ascii_ids_{};  // char mode: id of each ASCII character
  LiteralTrie frozen_;
  bool finalized_ = false;
  bool split_at_space_ = false;  // char mode: '▁' only ever starts pieces
};

// ---------------------------------------------------------------------------------------------------
// The tokenizer
// ---------------------------------------------------------------------------------------------------
struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false, rstrip = false, single_word = false, normalized = false;
};

struct PipelineParts {
  std::string kind;
  std::vector<AddedToken> added;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  std::vector<int32_t> prefix, suffix;  // added by encode(add_special=true)
  std::vector<std::unique_ptr<DecoderStep>> decoder;  // empty: join with ' ' (HF without decoder)
  bool has_decoder = false;
  std::vector<int32_t> special_ids;  // beyond added tokens with special=true (e.g. SentencePiece control)
  // SentencePiece decoding (instead of `decoder`): sentencepiece's own rules for the dummy prefix, byte
  // pieces (an invalid byte -> U+FFFD each) and <unk> (" \u2047 "). piece_types[id] as in the .model.
  struct SentencePieceDecoding {
    bool dummy_prefix = true;
    bool remove_extra_whitespaces = false;
    std::vector<int32_t> piece_types;
    std::string unk_surface = " \xE2\x81\x87 ";  // TrainerSpec.unk_surface
  };
  std::optional<SentencePieceDecoding> sentencepiece_decoding;
  std::optional<int32_t> bos, eos, pad, unk;
};

class PipelineTokenizer final : public Tokenizer {
 public:
  explicit PipelineTokenizer(PipelineParts parts);
  ~PipelineTokenizer() override;
  std::vector<int32_t> encode(std::string_view text, bool add_special = false) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int32_t id) const override;
  bool is_special(int32_t id) const override;
  std::string kind() const override { return parts_.kind; }

 private:
  struct Segment {
    std::string_view text;
    int32_t token;  // >= 0: an added token
    bool at_start;
  };
  void split_added(std::string_view text, bool normalized_pass, bool at_start, std::vector<Segment>& out) const;
  void encode_segment(const Segment& segment, std::vector<int32_t>& ids) const;
  const std::string* token_string(int32_t id) const;
  std::string decode_sentencepiece(const std::vector<int32_t>& ids, bool skip_special) const;

  PipelineParts parts_;
  LiteralTrie raw_trie_, normalized_trie_;
  std::vector<int32_t> added_index_;  // id -> index in parts_.added, or -1
  StringIdMap added_by_content_;
  std::vector<uint8_t> special_;
  int32_t vocab_size_ = 0;
  bool byte_level_decoder_only_ = false;
  std::vector<int16_t> sp_byte_;      // SentencePiece: byte value of each <0xNN> piece, else -1
  std::vector<std::string> id_bytes_;  // byte-level decoding: the bytes of each id
};

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(
    std::string kind, const std::vector<std::string>& pieces, const std::vector<float>& scores,
    const std::vector<int32_t>& types, bool add_dummy_prefix, bool remove_extra_whitespaces, bool byte_fallback,
    std::optional<int32_t> unk, std::optional<int32_t> bos, std::optional<int32_t> eos,
    std::optional<int32_t> pad, bool add_bos, std::optional<std::string> unk_surface = std::nullopt);

}  // namespace mlaforge::tok
