// Normalizers, pre-tokenizers and decoder steps with the semantics of the Hugging Face `tokenizers`
// components of the same names.
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "data/tokenizer_impl.h"

namespace mlaforge::tok {

const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

bool is_ascii(std::string_view s) {
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    if (w & 0x8080808080808080ULL) return false;
  }
  for (; i < s.size(); ++i)
    if (static_cast<uint8_t>(s[i]) & 0x80) return false;
  return true;
}

// Replaces every non-overlapping occurrence of a literal, left to right.
void replace_literal(std::string& text, std::string_view pattern, std::string_view content) {
  if (pattern.empty()) return;
  size_t pos = text.find(pattern);
  if (pos == std::string::npos) return;
  std::string out;
  out.reserve(text.size() + text.size() / 4);
  size_t last = 0;
  while (pos != std::string::npos) {
    out.append(text, last, pos - last);
    out.append(content);
    last = pos + pattern.size();
    pos = text.find(pattern, last);
  }
  out.append(text, last, std::string::npos);
  text.swap(out);
}

void replace_regex(std::string& text, const Regex& regex, std::string_view content) {
  std::string out;
  size_t last = 0;
  bool any = false;
  regex.for_each_match(text, [&](size_t start, size_t end) {
    any = true;
    out.append(text, last, start - last);
    out.append(content);
    last = end;
  });
  if (!any) return;
  out.append(text, last, std::string::npos);
  text.swap(out);
}

// ------------------------------------------------------------------------------------ normalizers --
class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(const std::string& form) {
    UErrorCode status = U_ZERO_ERROR;
    if (form == "NFC") norm_ = icu::Normalizer2::getNFCInstance(status);
    else if (form == "NFD") norm_ = icu::Normalizer2::getNFDInstance(status);
    else if (form == "NFKC") norm_ = icu::Normalizer2::getNFKCInstance(status);
    else if (form == "NFKD") norm_ = icu::Normalizer2::getNFKDInstance(status);
    else fail("tokenizer: unknown Unicode normalization form ", form);
    MLA_CHECK(U_SUCCESS(status) && norm_ != nullptr, "tokenizer: ICU cannot provide ", form, " (",
              u_errorName(status), ")");
  }
  void normalize(std::string& text) const override {
    if (is_ascii(text)) return;  // ASCII is invariant under every normalization form
    UErrorCode status = U_ZERO_ERROR;
    if (norm_->isNormalizedUTF8(icu::StringPiece(text.data(), static_cast<int32_t>(text.size())), status) &&
        U_SUCCESS(status))
      return;
    status = U_ZERO_ERROR;
    std::string out;
    out.reserve(text.size() + 16);
    icu::StringByteSink<std::string> sink(&out);
    norm_->normalizeUTF8(0, icu::StringPiece(text.data(), static_cast<int32_t>(text.size())), sink, nullptr, status);
    MLA_CHECK(U_SUCCESS(status), "tokenizer: Unicode normalization failed (", u_errorName(status), ")");
    text.swap(out);
  }

 private:
  const icu::Normalizer2* norm_ = nullptr;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  void normalize(std::string& text) const override {
    for (const auto& s : steps_) s->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(std::string pattern, bool is_regex, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {
    if (is_regex) regex_ = std::make_unique<Regex>(pattern_);
  }
  void normalize(std::string& text) const override {
    if (regex_) replace_regex(text, *regex_, content_);
    else replace_literal(text, pattern_, content_);
  }

 private:
  std::string pattern_, content_;
  std::unique_ptr<Regex> regex_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    if (is_ascii(text)) {
      for (char& c : text)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      return;
    }
    // Character by character, like Rust's char::to_lowercase (no final-sigma context): the full mapping
    // differs from the simple one only for U+0130.
    std::string out;
    out.reserve(text.size());
    size_t i = 0;
    while (i < text.size()) {
      const uint32_t cp = utf8_next(text, i);
      if (cp == 0x130) out.append("i\xCC\x87");
      else append_utf8(out, static_cast<uint32_t>(u_tolower(static_cast<UChar32>(cp))));
    }
    text.swap(out);
  }
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      while (begin < end) {
        size_t i = begin;
        if (!is_whitespace_cp(utf8_next(text, i))) break;
        begin = i;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
        size_t i = start;
        if (!is_whitespace_cp(utf8_next(text, i))) break;
        end = start;
      }
    }
    text = text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

class SentencePieceNormalizer final : public Normalizer {
 public:
  SentencePieceNormalizer(bool add_dummy_prefix, bool remove_extra_whitespaces)
      : add_dummy_prefix_(add_dummy_prefix), remove_extra_(remove_extra_whitespaces) {}
  void normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size() + text.size() / 2 + 3);
    size_t i = 0;
    const size_t end = text.size();
    if (remove_extra_)
      while (i < end && text[i] == ' ') ++i;
    if (i == end) {
      text.clear();
      return;
    }
    if (add_dummy_prefix_) out.append(kSpaceSymbol);
    bool prev_space = false;
    for (; i < end; ++i) {
      const char c = text[i];
      if (c == ' ') {
        if (remove_extra_ && prev_space) continue;
        out.append(kSpaceSymbol);
        prev_space = true;
      } else {
        out.push_back(c);
        prev_space = false;
      }
    }
    // Trailing '▁' go, including ones written literally in the text (as sentencepiece does).
    if (remove_extra_)
      while (out.size() >= kSpaceSymbol.size() &&
             std::string_view(out).substr(out.size() - kSpaceSymbol.size()) == kSpaceSymbol)
        out.resize(out.size() - kSpaceSymbol.size());
    text.swap(out);
  }

 private:
  bool add_dummy_prefix_, remove_extra_;
};

// -------------------------------------------------------------------------------- pre-tokenizers --
void push_piece(std::vector<Piece>& out, std::string_view text, bool at_start) {
  if (!text.empty()) out.push_back(Piece{text, at_start});
}

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {
    for (size_t i = 0; i < steps_.size(); ++i)
      MLA_CHECK(!steps_[i]->is_byte_level() || i + 1 == steps_.size(),
                "tokenizer: a ByteLevel pre-tokenizer followed by another one is not supported");
  }
  void split(const Piece& in, std::vector<Piece>& out, Arena& arena) const override {
    thread_local std::vector<Piece> a, b;
    std::vector<Piece> cur, next;
    cur.swap(a);
    next.swap(b);
    cur.clear();
    cur.push_back(in);
    for (const auto& step : steps_) {
      next.clear();
      for (const Piece& p : cur) step->split(p, next, arena);
      cur.swap(next);
    }
    out.insert(out.end(), cur.begin(), cur.end());
    cur.swap(a);
    next.swap(b);
  }
  bool is_byte_level() const override { return !steps_.empty() && steps_.back()->is_byte_level(); }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

// HF NormalizedString::split: (offsets, is_match) spans covering the text, then the behavior.
void apply_behavior(const Piece& in, const std::vector<std::pair<std::pair<size_t, size_t>, bool>>& spans,
                    SplitBehavior behavior, std::vector<Piece>& out) {
  std::vector<std::pair<size_t, size_t>> parts;
  switch (behavior) {
    case SplitBehavior::isolated:
      for (const auto& s : spans) parts.push_back(s.first);
      break;
    case SplitBehavior::removed:
      for (const auto& s : spans)
        if (!s.second) parts.push_back(s.first);
      break;
    case SplitBehavior::contiguous: {
      bool prev = false;
      for (const auto& s : spans) {
        if (s.second == prev && !parts.empty()) parts.back().second = s.first.second;
        else parts.push_back(s.first);
        prev = s.second;
      }
      break;
    }
    case SplitBehavior::merged_with_previous: {
      bool prev = false;
      for (const auto& s : spans) {
        if (s.second && !prev && !parts.empty()) parts.back().second = s.first.second;
        else parts.push_back(s.first);
        prev = s.second;
      }
      break;
    }
    case SplitBehavior::merged_with_next: {
      bool prev = false;
      for (size_t k = spans.size(); k-- > 0;) {
        const auto& s = spans[k];
        if (s.second && !prev && !parts.empty()) parts.back().first = s.first.first;
        else parts.push_back(s.first);
        prev = s.second;
      }
      std::reverse(parts.begin(), parts.end());
      break;
    }
  }
  for (const auto& p : parts)
    push_piece(out, in.text.substr(p.first, p.second - p.first), in.at_start && p.first == 0);
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(std::string pattern, bool is_regex, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {
    if (is_regex) regex_ = std::make_unique<Regex>(pattern_);
  }
  void split(const Piece& in, std::vector<Piece>& out, Arena&) const override {
    const std::string_view text = in.text;
    if (behavior_ == SplitBehavior::isolated && !invert_) {
      // Fast path: every match and every gap is a piece.
      size_t last = 0;
      for_each_match(text, [&](size_t start, size_t end) {
        if (start > last) push_piece(out, text.substr(last, start - last), in.at_start && last == 0);
        push_piece(out, text.substr(start, end - start), in.at_start && start == 0);
        last = end;
      });
      if (last < text.size()) push_piece(out, text.substr(last), in.at_start && last == 0);
      return;
    }
    std::vector<std::pair<std::pair<size_t, size_t>, bool>> spans;
    size_t last = 0;
    for_each_match(text, [&](size_t start, size_t end) {
      if (start > last) spans.push_back({{last, start}, invert_});
      spans.push_back({{start, end}, !invert_});
      last = end;
    });
    if (last < text.size()) spans.push_back({{last, text.size()}, invert_});
    apply_behavior(in, spans, behavior_, out);
  }

 private:
  template <typename Fn>
  void for_each_match(std::string_view text, Fn&& fn) const {
    if (regex_) {
      regex_->for_each_match(text, fn);
      return;
    }
    if (pattern_.empty()) return;
    size_t pos = text.find(pattern_);
    while (pos != std::string_view::npos) {
      fn(pos, pos + pattern_.size());
      pos = text.find(pattern_, pos + pattern_.size());
    }
  }
  std::string pattern_;
  std::unique_ptr<Regex> regex_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex) : add_prefix_space_(add_prefix_space) {
    if (use_regex) regex_ = std::make_unique<Regex>(kGpt2Pattern);
  }
  void split(const Piece& in, std::vector<Piece>& out, Arena& arena) const override {
    Piece p = in;
    if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) p.text = arena.copy(" ", p.text);
    if (!regex_) {
      push_piece(out, p.text, p.at_start);
      return;
    }
    // Isolated split (the GPT-2 regex matches every character, so there are no gaps in practice).
    const std::string_view text = p.text;
    size_t last = 0;
    regex_->for_each_match(text, [&](size_t start, size_t end) {
      if (start > last) push_piece(out, text.substr(last, start - last), p.at_start && last == 0);
      push_piece(out, text.substr(start, end - start), p.at_start && start == 0);
      last = end;
    });
    if (last < text.size()) push_piece(out, text.substr(last), p.at_start && last == 0);
  }
  bool is_byte_level() const override { return true; }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}
  void split(const Piece& in, std::vector<Piece>& out, Arena&) const override {
    const std::string_view text = in.text;
    size_t run_start = 0;
    bool run_digit = false;
    size_t i = 0;
    while (i < text.size()) {
      const size_t start = i;
      const uint32_t cp = utf8_next(text, i);
      const bool digit = is_numeric_cp(cp);
      if (individual_) {
        if (digit) {
          if (start > run_start) push_piece(out, text.substr(run_start, start - run_start), in.at_start && run_start == 0);
          push_piece(out, text.substr(start, i - start), in.at_start && start == 0);
          run_start = i;
        }
      } else if (start > run_start && digit != run_digit) {
        push_piece(out, text.substr(run_start, start - run_start), in.at_start && run_start == 0);
        run_start = start;
      }
      if (start == run_start) run_digit = digit;
    }
    if (run_start < text.size()) push_piece(out, text.substr(run_start), in.at_start && run_start == 0);
  }

 private:
  bool individual_;
};

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, std::string scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(std::move(scheme)), split_(split) {
    MLA_CHECK(scheme_ == "always" || scheme_ == "first" || scheme_ == "never",
              "tokenizer: Metaspace prepend_scheme '", scheme_, "' is not always/first/never");
  }
  void split(const Piece& in, std::vector<Piece>& out, Arena& arena) const override {
    std::string text(in.text);
    replace_literal(text, " ", replacement_);
    const bool starts = text.compare(0, replacement_.size(), replacement_) == 0;
    if (!starts && (scheme_ == "always" || (scheme_ == "first" && in.at_start))) text.insert(0, replacement_);
    const std::string_view stored = arena.copy(text);
    if (!split_) {
      push_piece(out, stored, in.at_start);
      return;
    }
    // Split on the replacement, merged with the next piece.
    size_t begin = 0;
    size_t pos = stored.find(replacement_, replacement_.size() > 0 ? 1 : 0);
    while (pos != std::string_view::npos && pos > 0) {
      push_piece(out, stored.substr(begin, pos - begin), in.at_start && begin == 0);
      begin = pos;
      pos = stored.find(replacement_, pos + replacement_.size());
    }
    push_piece(out, stored.substr(begin), in.at_start && begin == 0);
  }

 private:
  std::string replacement_, scheme_;
  bool split_;
};

class WhitespacePreTokenizer final : public PreTokenizer {
 public:
  WhitespacePreTokenizer() : regex_(R"(\w+|[^\w\s]+)") {}
  void split(const Piece& in, std::vector<Piece>& out, Arena&) const override {
    regex_.for_each_match(in.text, [&](size_t start, size_t end) {
      push_piece(out, in.text.substr(start, end - start), in.at_start && start == 0);
    });
  }

 private:
  Regex regex_;
};

class WhitespaceSplitPreTokenizer final : public PreTokenizer {
 public:
  void split(const Piece& in, std::vector<Piece>& out, Arena&) const override {
    const std::string_view text = in.text;
    size_t word = 0, i = 0;
    while (i < text.size()) {
      const size_t start = i;
      if (is_whitespace_cp(utf8_next(text, i))) {
        if (start > word) push_piece(out, text.substr(word, start - word), in.at_start && word == 0);
        word = i;
      }
    }
    if (word < text.size()) push_piece(out, text.substr(word), in.at_start && word == 0);
  }
};

// -------------------------------------------------------------------------------------- decoders --
class ByteLevelDecoder final : public DecoderStep {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes, mapped;
    for (const std::string& t : tokens) {
      if (byte_level_to_bytes(t, mapped)) bytes += mapped;
      else bytes += t;
    }
    std::string text;
    text.reserve(bytes.size());
    append_utf8_lossy(text, bytes);
    tokens.assign(1, std::move(text));
  }
  bool is_byte_level() const override { return true; }
};

class ReplaceDecoder final : public DecoderStep {
 public:
  ReplaceDecoder(std::string pattern, bool is_regex, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {
    if (is_regex) regex_ = std::make_unique<Regex>(pattern_);
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      if (regex_) replace_regex(t, *regex_, content_);
      else replace_literal(t, pattern_, content_);
    }
  }

 private:
  std::string pattern_, content_;
  std::unique_ptr<Regex> regex_;
};

class ByteFallbackDecoder final : public DecoderStep {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (utf8_is_valid(pending)) {
        out.push_back(pending);
      } else {
        for (size_t k = 0; k < pending.size(); ++k) out.emplace_back(kReplacementChar);
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      int byte = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        auto hex = [](char c) -> int {
          if (c >= '0' && c <= '9') return c - '0';
          if (c >= 'a' && c <= 'f') return c - 'a' + 10;
          if (c >= 'A' && c <= 'F') return c - 'A' + 10;
          return -1;
        };
        const int hi = hex(t[3]), lo = hex(t[4]);
        if (hi >= 0 && lo >= 0) byte = hi * 16 + lo;
      }
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
};

class FuseDecoder final : public DecoderStep {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    size_t n = 0;
    for (const auto& t : tokens) n += t.size();
    all.reserve(n);
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDecoder final : public DecoderStep {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      size_t begin = 0;
      for (size_t k = 0; k < start_ && begin < t.size() && t.compare(begin, content_.size(), content_) == 0; ++k)
        begin += content_.size();
      size_t end = t.size();
      for (size_t k = 0; k < stop_ && end >= begin + content_.size() &&
                         t.compare(end - content_.size(), content_.size(), content_) == 0;
           ++k)
        end -= content_.size();
      t = t.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

class MetaspaceDecoder final : public DecoderStep {
 public:
  MetaspaceDecoder(std::string replacement, bool prepend) : replacement_(std::move(replacement)), prepend_(prepend) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      replace_literal(tokens[i], replacement_, i == 0 && prepend_ ? "" : " ");
    }
  }

 private:
  std::string replacement_;
  bool prepend_;
};

}  // namespace

std::unique_ptr<Normalizer> make_unicode_normalizer(const std::string& form) {
  return std::make_unique<UnicodeNormalizer>(form);
}
std::unique_ptr<Normalizer> make_sequence_normalizer(std::vector<std::unique_ptr<Normalizer>> steps) {
  return std::make_unique<SequenceNormalizer>(std::move(steps));
}
std::unique_ptr<Normalizer> make_prepend_normalizer(std::string prefix) {
  return std::make_unique<PrependNormalizer>(std::move(prefix));
}
std::unique_ptr<Normalizer> make_replace_normalizer(std::string pattern, bool is_regex, std::string content) {
  return std::make_unique<ReplaceNormalizer>(std::move(pattern), is_regex, std::move(content));
}
std::unique_ptr<Normalizer> make_lowercase_normalizer() { return std::make_unique<LowercaseNormalizer>(); }
std::unique_ptr<Normalizer> make_strip_normalizer(bool left, bool right) {
  return std::make_unique<StripNormalizer>(left, right);
}
std::unique_ptr<Normalizer> make_sentencepiece_normalizer(bool add_dummy_prefix, bool remove_extra_whitespaces) {
  return std::make_unique<SentencePieceNormalizer>(add_dummy_prefix, remove_extra_whitespaces);
}

std::unique_ptr<PreTokenizer> make_sequence_pre_tokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) {
  return std::make_unique<SequencePreTokenizer>(std::move(steps));
}
std::unique_ptr<PreTokenizer> make_split_pre_tokenizer(std::string pattern, bool is_regex, SplitBehavior behavior,
                                                       bool invert) {
  return std::make_unique<SplitPreTokenizer>(std::move(pattern), is_regex, behavior, invert);
}
std::unique_ptr<PreTokenizer> make_byte_level_pre_tokenizer(bool add_prefix_space, bool use_regex) {
  return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, use_regex);
}
std::unique_ptr<PreTokenizer> make_digits_pre_tokenizer(bool individual_digits) {
  return std::make_unique<DigitsPreTokenizer>(individual_digits);
}
std::unique_ptr<PreTokenizer> make_metaspace_pre_tokenizer(std::string replacement, std::string prepend_scheme,
                                                           bool split) {
  return std::make_unique<MetaspacePreTokenizer>(std::move(replacement), std::move(prepend_scheme), split);
}
std::unique_ptr<PreTokenizer> make_whitespace_pre_tokenizer() { return std::make_unique<WhitespacePreTokenizer>(); }
std::unique_ptr<PreTokenizer> make_whitespace_split_pre_tokenizer() {
  return std::make_unique<WhitespaceSplitPreTokenizer>();
}

std::unique_ptr<DecoderStep> make_byte_level_decoder() { return std::make_unique<ByteLevelDecoder>(); }
std::unique_ptr<DecoderStep> make_replace_decoder(std::string pattern, bool is_regex, std::string content) {
  return std::make_unique<ReplaceDecoder>(std::move(pattern), is_regex, std::move(content));
}
std::unique_ptr<DecoderStep> make_byte_fallback_decoder() { return std::make_unique<ByteFallbackDecoder>(); }
std::unique_ptr<DecoderStep> make_fuse_decoder() { return std::make_unique<FuseDecoder>(); }
std::unique_ptr<DecoderStep> make_strip_decoder(std::string content, size_t start, size_t stop) {
  return std::make_unique<StripDecoder>(std::move(content), start, stop);
}
std::unique_ptr<DecoderStep> make_metaspace_decoder(std::string replacement, bool prepend) {
  return std::make_unique<MetaspaceDecoder>(std::move(replacement), prepend);
}

}  // namespace mlaforge::tok
