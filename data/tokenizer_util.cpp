// Tokenizer support code: UTF-8, the GPT-2 byte table, hash maps, the literal trie, PCRE2 regexes.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/uchar.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "data/tokenizer_impl.h"

namespace mlaforge::tok {

// ---------------------------------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------------------------------
size_t utf8_valid_len(const uint8_t* s, size_t n, size_t i) {
  const uint8_t c = s[i];
  if (c < 0x80) return 1;
  if (c < 0xC2 || c > 0xF4) return 0;
  auto cont = [&](size_t k) { return i + k < n && (s[i + k] & 0xC0) == 0x80; };
  if (c < 0xE0) return cont(1) ? 2 : 0;
  if (i + 1 >= n) return 0;
  const uint8_t c1 = s[i + 1];
  if (c < 0xF0) {
    const bool ok1 = c == 0xE0 ? (c1 >= 0xA0 && c1 <= 0xBF) : c == 0xED ? (c1 >= 0x80 && c1 <= 0x9F)
                                                                          : (c1 & 0xC0) == 0x80;
    return ok1 && cont(2) ? 3 : 0;
  }
  const bool ok1 = c == 0xF0 ? (c1 >= 0x90 && c1 <= 0xBF) : c == 0xF4 ? (c1 >= 0x80 && c1 <= 0x8F)
                                                                        : (c1 & 0xC0) == 0x80;
  return ok1 && cont(2) && cont(3) ? 4 : 0;
}

bool utf8_is_valid(std::string_view text) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, s + i, 8);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= n) break;
    const size_t len = utf8_valid_len(s, n, i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

void append_utf8_lossy(std::string& out, std::string_view bytes) {
  const auto* s = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const size_t len = utf8_valid_len(s, n, i);
    if (len > 0) {
      out.append(bytes.data() + i, len);
      i += len;
      continue;
    }
    // Maximal subpart of a valid sequence (Unicode "best practice", as Rust's Utf8Chunks): the lead byte
    // plus every following byte that still fits a valid sequence.
    const uint8_t c = s[i];
    size_t bad = 1;
    if (c >= 0xC2 && c <= 0xF4) {
      const size_t want = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
      auto in_range = [&](size_t k) {
        if (i + k >= n) return false;
        const uint8_t b = s[i + k];
        if (k == 1) {
          if (c == 0xE0) return b >= 0xA0 && b <= 0xBF;
          if (c == 0xED) return b >= 0x80 && b <= 0x9F;
          if (c == 0xF0) return b >= 0x90 && b <= 0xBF;
          if (c == 0xF4) return b >= 0x80 && b <= 0x8F;
        }
        return (b & 0xC0) == 0x80;
      };
      while (bad < want && in_range(bad)) ++bad;
    }
    out.append(kReplacementChar);
    i += bad;
  }
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint32_t utf8_next(std::string_view s, size_t& i) {
  const auto c = static_cast<uint8_t>(s[i]);
  if (c < 0x80) {
    ++i;
    return c;
  }
  const size_t len = utf8_char_len(c);
  uint32_t cp = c & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
  for (size_t k = 1; k < len && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
  i += len;
  return cp;
}

// ---------------------------------------------------------------------------------------------------
// GPT-2 byte table: printable Latin-1 bytes stand for themselves, the other 68 bytes for U+0100.. in order.
// ---------------------------------------------------------------------------------------------------
namespace {
struct ByteTable {
  std::array<uint32_t, 256> to_cp{};
  std::array<std::string, 256> to_utf8;
  std::array<int16_t, 512> from_cp{};
  ByteTable() {
    from_cp.fill(-1);
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_cp[b] = printable ? b : 256 + extra++;
    }
    for (uint32_t b = 0; b < 256; ++b) {
      append_utf8(to_utf8[b], to_cp[b]);
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteTable& byte_table() {
  static const ByteTable table;
  return table;
}
}  // namespace

std::string_view byte_to_unicode_utf8(uint8_t b) { return byte_table().to_utf8[b]; }

int unicode_to_byte(uint32_t cp) { return cp < 512 ? byte_table().from_cp[cp] : -1; }

bool byte_level_to_bytes(std::string_view token, std::string& out) {
  out.clear();
  size_t i = 0;
  while (i < token.size()) {
    const uint32_t cp = utf8_next(token, i);
    const int b = unicode_to_byte(cp);
    if (b < 0) return false;
    out.push_back(static_cast<char>(b));
  }
  return true;
}

bool is_numeric_cp(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  const int8_t t = u_charType(static_cast<UChar32>(cp));
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

bool is_whitespace_cp(uint32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_WHITE_SPACE);
}

// ---------------------------------------------------------------------------------------------------
// Hashing and maps
// ---------------------------------------------------------------------------------------------------
namespace {
inline uint64_t mix64(uint64_t x) {
  x ^= x >> 32;
  x *= 0xd6e8feb86659fd93ULL;
  x ^= x >> 32;
  x *= 0xd6e8feb86659fd93ULL;
  x ^= x >> 32;
  return x;
}
}  // namespace

uint64_t hash_bytes(const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ (len * 0xff51afd7ed558ccdULL);
  while (len >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ (w * 0xbf58476d1ce4e5b9ULL)) * 0x94d049bb133111ebULL;
    h ^= h >> 29;
    p += 8;
    len -= 8;
  }
  if (len > 0) {
    // The tail (1..7 bytes) in at most two fixed-size loads; the length is already mixed in.
    uint64_t w;
    if (len >= 4) {
      uint32_t lo, hi;
      std::memcpy(&lo, p, 4);
      std::memcpy(&hi, p + len - 4, 4);
      w = lo | (static_cast<uint64_t>(hi) << 32);
    } else {
      w = p[0] | (static_cast<uint64_t>(p[len / 2]) << 8) | (static_cast<uint64_t>(p[len - 1]) << 16);
    }
    h = (h ^ (w * 0xbf58476d1ce4e5b9ULL)) * 0x94d049bb133111ebULL;
  }
  return mix64(h);
}

void StringIdMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  if (cap <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(cap, Slot{});
  const size_t mask = cap - 1;
  for (const Slot& s : old) {
    if (s.id < 0) continue;
    size_t i = s.hash & mask;
    while (slots_[i].id >= 0) i = (i + 1) & mask;
    slots_[i] = s;
  }
}

void StringIdMap::grow() { reserve(std::max<size_t>(16, count_ * 2 + 2)); }

void StringIdMap::set(std::string_view key, int32_t id) {
  MLA_CHECK(id >= 0, "tokenizer: negative id for '", key, "'");
  if ((count_ + 1) * 2 > slots_.size()) grow();
  const uint64_t h = hash_bytes(key.data(), key.size());
  const size_t mask = slots_.size() - 1;
  size_t i = h & mask;
  while (slots_[i].id >= 0) {
    const Slot& s = slots_[i];
    if (s.hash == h && s.length == key.size() && bytes_equal(storage_.data() + s.offset, key.data(), key.size())) {
      slots_[i].id = id;
      return;
    }
    i = (i + 1) & mask;
  }
  Slot s;
  s.hash = h;
  s.offset = static_cast<uint32_t>(storage_.size());
  s.length = static_cast<uint32_t>(key.size());
  s.id = id;
  storage_.append(key);
  slots_[i] = s;
  ++count_;
}

int32_t StringIdMap::find(std::string_view key) const {
  if (slots_.empty()) return -1;
  const uint64_t h = hash_bytes(key.data(), key.size());
  const size_t mask = slots_.size() - 1;
  size_t i = h & mask;
  while (true) {
    const Slot& s = slots_[i];
    if (s.id < 0) return -1;
    if (s.hash == h && s.length == key.size() && bytes_equal(storage_.data() + s.offset, key.data(), key.size()))
      return s.id;
    i = (i + 1) & mask;
  }
}

void PairMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  if (cap <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  for (const Slot& s : old) {
    if (s.merged < 0) continue;
    size_t i = mix(s.key) & mask_;
    while (slots_[i].merged >= 0) i = (i + 1) & mask_;
    slots_[i] = s;
  }
}

void PairMap::grow() { reserve(std::max<size_t>(16, count_ * 2 + 2)); }

void PairMap::set(int32_t a, int32_t b, uint32_t rank, int32_t merged) {
  MLA_CHECK(merged >= 0, "tokenizer: merge produces a negative id");
  if ((count_ + 1) * 2 > slots_.size()) grow();
  const uint64_t key = pack(a, b);
  size_t i = mix(key) & mask_;
  while (slots_[i].merged >= 0) {
    if (slots_[i].key == key) {
      slots_[i].rank = rank;
      slots_[i].merged = merged;
      return;
    }
    i = (i + 1) & mask_;
  }
  slots_[i] = Slot{key, rank, merged};
  ++count_;
}

void LiteralTrie::add(std::string_view literal, int32_t value) {
  if (literal.empty()) return;
  first_[static_cast<uint8_t>(literal[0])] = true;
  size_t node = 0;
  for (char ch : literal) {
    const auto b = static_cast<uint8_t>(ch);
    auto& next = nodes_[node].next;
    auto it = std::lower_bound(next.begin(), next.end(), b,
                               [](const std::pair<uint8_t, int32_t>& e, uint8_t v) { return e.first < v; });
    if (it != next.end() && it->first == b) {
      node = static_cast<size_t>(it->second);
    } else {
      const auto child = static_cast<int32_t>(nodes_.size());
      next.insert(it, {b, child});
      nodes_.emplace_back();
      node = static_cast<size_t>(child);
    }
  }
  nodes_[node].value = value;
}

size_t LiteralTrie::longest_at(std::string_view text, size_t pos, int32_t& value) const {
  size_t node = 0, best = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto b = static_cast<uint8_t>(text[i]);
    const auto& next = nodes_[node].next;
    auto it = std::lower_bound(next.begin(), next.end(), b,
                               [](const std::pair<uint8_t, int32_t>& e, uint8_t v) { return e.first < v; });
    if (it == next.end() || it->first != b) break;
    node = static_cast<size_t>(it->second);
    if (nodes_[node].value >= 0) {
      best = i + 1 - pos;
      value = nodes_[node].value;
    }
  }
  return best;
}

// ---------------------------------------------------------------------------------------------------
// Arena
// ---------------------------------------------------------------------------------------------------
std::string_view Arena::copy(std::string_view a, std::string_view b) {
  const size_t n = a.size() + b.size();
  while (true) {
    if (block_ == blocks_.size()) {
      const size_t size = std::max<size_t>(64 * 1024, n);
      blocks_.push_back(std::make_unique<char[]>(size));
      sizes_.push_back(size);
      used_ = 0;
      break;
    }
    if (used_ + n <= sizes_[block_]) break;
    if (used_ == 0) {  // a fresh block too small for this string: replace it (nothing points into it)
      const size_t size = std::max<size_t>(64 * 1024, n);
      blocks_[block_] = std::make_unique<char[]>(size);
      sizes_[block_] = size;
      break;
    }
    ++block_;
    used_ = 0;
  }
  char* dst = blocks_[block_].get() + used_;
  if (!a.empty()) std::memcpy(dst, a.data(), a.size());
  if (!b.empty()) std::memcpy(dst + a.size(), b.data(), b.size());
  used_ += n;
  return {dst, n};
}

void Arena::reset() {
  block_ = 0;
  used_ = 0;
}

// ---------------------------------------------------------------------------------------------------
// Regex
// ---------------------------------------------------------------------------------------------------
namespace {
struct MatchScratch {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchScratch() {
    data = pcre2_match_data_create(64, nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
    if (context && stack) pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    if (data) pcre2_match_data_free(data);
    if (context) pcre2_match_context_free(context);
    if (stack) pcre2_jit_stack_free(stack);
  }
};
MatchScratch& match_scratch() {
  thread_local MatchScratch scratch;
  return scratch;
}
}  // namespace

namespace {
// Oniguruma's (and Unicode's White_Space) \s; PCRE2's also matches U+180E, which Unicode dropped in 6.3.
constexpr const char* kWhiteSpaceSet =
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

// Rewrites \s (anywhere) and \S (outside character classes) as explicit White_Space classes.
std::string rewrite_whitespace_escapes(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  size_t i = 0;
  while (i < p.size()) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      if (d == 's') {
        if (in_class) out += kWhiteSpaceSet;
        else out.append("[").append(kWhiteSpaceSet).append("]");
      } else if (d == 'S' && !in_class) {
        out.append("[^").append(kWhiteSpaceSet).append("]");
      } else {
        out += c;
        out += d;
      }
      i += 2;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      ++i;
      if (i < p.size() && p[i] == '^') out += p[i++];
      if (i < p.size() && p[i] == ']') out += p[i++];  // a leading ']' is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX class [:name:]
      const size_t close = p.find(":]", i + 2);
      if (close != std::string::npos) {
        out.append(p, i, close + 2 - i);
        i = close + 2;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
    ++i;
  }
  return out;
}
}  // namespace

Regex::Regex(const std::string& pattern) : pattern_(pattern) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  const std::string compiled = rewrite_whitespace_escapes(pattern);
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(compiled.data()), compiled.size(), PCRE2_UTF | PCRE2_UCP,
                        &error, &offset, nullptr);
  if (code_ == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    fail("tokenizer: cannot compile regex /", pattern, "/ at offset ", offset, ": ",
         reinterpret_cast<const char*>(message));
  }
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  if (code_) pcre2_code_free(code_);
}

bool Regex::next_match(std::string_view text, size_t pos, size_t& start, size_t& end) const {
  MatchScratch& scratch = match_scratch();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const int rc = jit_ ? pcre2_jit_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, scratch.data,
                                        scratch.context)
                      : pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, scratch.data,
                                    scratch.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(rc, message, sizeof(message));
    fail("tokenizer: regex /", pattern_, "/ failed: ", reinterpret_cast<const char*>(message));
  }
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(scratch.data);
  start = ov[0];
  end = ov[1];
  return true;
}

}  // namespace mlaforge::tok
