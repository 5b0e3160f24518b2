// The BPE model: merges by rank (Hugging Face) or by piece score (SentencePiece, llama2.c, GGUF llama),
// over bytes (byte-level BPE) or UTF-8 characters, with byte fallback, <unk> handling and a per-thread
// word cache.
//
// Merge order is the one both reference implementations use: repeatedly apply the best pair (lowest
// rank / highest score), the leftmost one among equals. Short words use a linear scan over a compact
// array, long ones (a whole SentencePiece paragraph) a binary heap with lazy invalidation.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>

#include "core/error.h"
#include "data/tokenizer_impl.h"

namespace mlaforge::tok {
namespace {

constexpr uint32_t kNever = UINT32_MAX;
constexpr size_t kCacheMaxWord = 256;     // bytes; longer words are not cached (as HF)
constexpr size_t kCacheMaxEntries = 1u << 16;
constexpr size_t kLinearMaxSymbols = 32;  // linear scan up to this many symbols, heap above

std::atomic<uint64_t> next_uid{1};

// Higher score first: map the float onto an order-reversed unsigned key.
uint32_t score_key(float score) {
  if (score == 0.0f) score = 0.0f;  // -0.0 ties with 0.0, as in a float comparison
  uint32_t u;
  std::memcpy(&u, &score, 4);
  const uint32_t ordered = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  const uint32_t key = ~ordered;
  return key == kNever ? kNever - 1 : key;
}

// ------------------------------------------------------------------------------------ word cache --
class WordCache {
 public:
  WordCache() { slots_.assign(1024, Slot{}); }  // grows up to kCacheMaxEntries * 2 slots (3 MB)
  // Returns nullptr when absent; else the ids and their count.
  const int32_t* find(std::string_view word, uint64_t h, size_t& count) const {
    const size_t mask = slots_.size() - 1;
    size_t i = h & mask;
    while (true) {
      const Slot& s = slots_[i];
      if (s.key_len == 0) return nullptr;
      if (s.hash == h && s.key_len == word.size() && bytes_equal(keys_.data() + s.key_off, word.data(), word.size())) {
        count = s.ids_len;
        return ids_.data() + s.ids_off;
      }
      i = (i + 1) & mask;
    }
  }
  void insert(std::string_view word, uint64_t h, const int32_t* ids, size_t count) {
    if ((count_ + 1) * 2 > slots_.size()) {
      if (slots_.size() < kCacheMaxEntries * 2) grow();
      else clear();  // full: start over (the words that matter come back at once)
    }
    const size_t mask = slots_.size() - 1;
    size_t i = h & mask;
    while (slots_[i].key_len != 0) i = (i + 1) & mask;
    Slot& s = slots_[i];
    s.hash = h;
    s.key_off = static_cast<uint32_t>(keys_.size());
    s.key_len = static_cast<uint32_t>(word.size());
    s.ids_off = static_cast<uint32_t>(ids_.size());
    s.ids_len = static_cast<uint32_t>(count);
    keys_.append(word);
    ids_.insert(ids_.end(), ids, ids + count);
    ++count_;
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_off = 0, key_len = 0, ids_off = 0, ids_len = 0;
  };
  void grow() {
    std::vector<Slot> old(slots_.size() * 2, Slot{});
    old.swap(slots_);
    const size_t mask = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.key_len == 0) continue;
      size_t i = s.hash & mask;
      while (slots_[i].key_len != 0) i = (i + 1) & mask;
      slots_[i] = s;
    }
  }
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    keys_.clear();
    ids_.clear();
    count_ = 0;
  }
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t count_ = 0;
};

// A few caches per thread, most recently used first; entries of destroyed models age out.
WordCache& cache_for(uint64_t uid) {
  struct Entry {
    uint64_t uid;
    std::unique_ptr<WordCache> cache;
  };
  thread_local std::vector<Entry> caches;
  if (!caches.empty() && caches.front().uid == uid) return *caches.front().cache;
  for (size_t i = 1; i < caches.size(); ++i) {
    if (caches[i].uid == uid) {
      std::rotate(caches.begin(), caches.begin() + static_cast<std::ptrdiff_t>(i),
                  caches.begin() + static_cast<std::ptrdiff_t>(i) + 1);
      return *caches.front().cache;
    }
  }
  if (caches.size() >= 4) caches.pop_back();
  caches.insert(caches.begin(), Entry{uid, std::make_unique<WordCache>()});
  return *caches.front().cache;
}

// ------------------------------------------------------------------------------- merge scratch --
struct Symbol {
  int32_t id;      // -1: a character with no piece (by_score: resolved by byte fallback / <unk> at the end)
  uint32_t start;  // byte offset in the word
  uint32_t len;    // bytes; 0 = merged away (heap path)
  int32_t prev, next;
  bool frozen;
};

struct HeapEntry {
  uint32_t prio;
  uint32_t pos;    // left symbol
  uint32_t right;  // right symbol when pushed
  uint32_t total;  // combined byte length when pushed (validity check)
  int32_t merged;
};
struct HeapGreater {
  bool operator()(const HeapEntry& a, const HeapEntry& b) const {
    return a.prio != b.prio ? a.prio > b.prio : a.pos > b.pos;
  }
};

struct Scratch {
  std::vector<Symbol> syms;
  std::vector<HeapEntry> heap;
  std::vector<uint32_t> pair_prio;
  std::vector<int32_t> pair_merged;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

}  // namespace

// ------------------------------------------------------------------------------------ building --
BpeModel::BpeModel(const BpeConfig& config) : config_(config), uid_(next_uid.fetch_add(1)) {
  byte_ids_.fill(-1);
  ascii_ids_.fill(-1);
}

BpeModel::~BpeModel() = default;

void BpeModel::reserve(size_t pieces, size_t merges) {
  pieces_.reserve(pieces);
  present_.reserve(pieces);
  spelling_to_id_.reserve(pieces);
  merges_.reserve(merges);
}

void BpeModel::add_piece(int32_t id, std::string spelling) {
  MLA_CHECK(!finalized_, "tokenizer: BPE model already finalized");
  MLA_CHECK(id >= 0, "tokenizer: negative token id ", id, " for '", spelling, "'");
  const auto idx = static_cast<size_t>(id);
  if (pieces_.size() <= idx) {
    pieces_.resize(idx + 1);
    present_.resize(idx + 1, 0);
  }
  spelling_to_id_.set(spelling, id);
  pieces_[idx] = std::move(spelling);
  present_[idx] = 1;
}

void BpeModel::add_merge(std::string_view a, std::string_view b) {
  const int32_t ia = spelling_to_id_.find(a);
  const int32_t ib = spelling_to_id_.find(b);
  MLA_CHECK(ia >= 0, "tokenizer: merge '", a, " ", b, "': '", a, "' is not in the vocabulary");
  MLA_CHECK(ib >= 0, "tokenizer: merge '", a, " ", b, "': '", b, "' is not in the vocabulary");
  std::string joined;
  joined.reserve(a.size() + b.size());
  joined.append(a).append(b);
  const int32_t merged = spelling_to_id_.find(joined);
  MLA_CHECK(merged >= 0, "tokenizer: merge '", a, " ", b, "': '", joined, "' is not in the vocabulary");
  merges_.set(ia, ib, merge_count_++, merged);
}

void BpeModel::set_score(int32_t id, float score, bool mergeable) {
  MLA_CHECK(id >= 0, "tokenizer: negative token id ", id);
  const auto idx = static_cast<size_t>(id);
  if (score_keys_.size() <= idx) score_keys_.resize(idx + 1, kNever);
  score_keys_[idx] = mergeable ? score_key(score) : kNever;
}

void BpeModel::add_frozen(std::string_view spelling, int32_t id) { frozen_.add(spelling, id); }

void BpeModel::finalize() {
  MLA_CHECK(!finalized_, "tokenizer: BPE model already finalized");
  finalized_ = true;
  if (config_.merges == BpeConfig::Merges::by_score) score_keys_.resize(pieces_.size(), kNever);
  if (config_.byte_level) {
    raw_to_id_.reserve(pieces_.size());
    std::string raw;
    for (size_t id = 0; id < pieces_.size(); ++id) {
      if (!present_[id]) continue;
      if (byte_level_to_bytes(pieces_[id], raw)) raw_to_id_.set(raw, static_cast<int32_t>(id));
    }
    for (int b = 0; b < 256; ++b) {
      const char c = static_cast<char>(b);
      byte_ids_[static_cast<size_t>(b)] = raw_to_id_.find(std::string_view(&c, 1));
    }
  } else {
    // Whether '▁' only ever starts pieces (then encode_word may cut the text before each '▁').
    split_at_space_ = spelling_to_id_.find(kSpaceSymbol) >= 0;
    for (size_t id = 0; id < pieces_.size() && split_at_space_; ++id) {
      std::string_view p = pieces_[id];
      while (p.substr(0, kSpaceSymbol.size()) == kSpaceSymbol) p.remove_prefix(kSpaceSymbol.size());
      if (p.find(kSpaceSymbol) != std::string_view::npos) split_at_space_ = false;
    }
    static const char* hex = "0123456789ABCDEF";
    for (int b = 0; b < 256; ++b) {
      const char name[7] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>', 0};
      byte_ids_[static_cast<size_t>(b)] = spelling_to_id_.find(std::string_view(name, 6));
    }
    for (int c = 0; c < 128; ++c) {
      const char ch = static_cast<char>(c);
      ascii_ids_[static_cast<size_t>(c)] = spelling_to_id_.find(std::string_view(&ch, 1));
    }
  }
}

// ------------------------------------------------------------------------------------ encoding --
void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (split_at_space_ && word.size() > 2 * kSpaceSymbol.size()) {
    // SentencePiece-style text is one long "word": cut it before every '▁' that follows another character.
    // No piece holds '▁' after another character (checked in finalize), so no merge crosses such a cut and
    // the chunks tokenize independently, each through the word cache.
    if (config_.ignore_merges) {
      const int32_t id = spelling_to_id_.find(word);
      if (id >= 0) {
        out.push_back(id);
        return;
      }
    }
    size_t start = 0;
    size_t pos = word.find(kSpaceSymbol, 1);
    while (pos != std::string_view::npos) {
      const bool after_space = pos >= kSpaceSymbol.size() &&
                               word.substr(pos - kSpaceSymbol.size(), kSpaceSymbol.size()) == kSpaceSymbol;
      if (!after_space && pos > start) {
        encode_chunk(word.substr(start, pos - start), out);
        start = pos;
      }
      pos = word.find(kSpaceSymbol, pos + kSpaceSymbol.size());
    }
    encode_chunk(word.substr(start), out);
    return;
  }
  encode_chunk(word, out);
}

void BpeModel::encode_chunk(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() >= kCacheMaxWord) {
    if (config_.ignore_merges) {
      const int32_t id = config_.byte_level ? raw_to_id_.find(word) : spelling_to_id_.find(word);
      if (id >= 0) {
        out.push_back(id);
        return;
      }
    }
    merge_word(word, out);
    return;
  }
  WordCache& cache = cache_for(uid_);
  const uint64_t h = hash_bytes(word.data(), word.size());
  size_t count = 0;
  if (const int32_t* ids = cache.find(word, h, count)) {
    out.insert(out.end(), ids, ids + count);
    return;
  }
  const size_t before = out.size();
  const int32_t id = config_.ignore_merges ? (config_.byte_level ? raw_to_id_.find(word) : spelling_to_id_.find(word))
                                           : -1;
  if (id >= 0) out.push_back(id);
  else merge_word(word, out);
  cache.insert(word, h, out.data() + before, out.size() - before);
}

template <typename Lookup>
void BpeModel::merge_symbols(std::string_view word, Lookup&& lookup) const {
  Scratch& s = scratch();
  std::vector<Symbol>& syms = s.syms;
  const size_t n = syms.size();
  if (n < 2) return;
  if (n <= kLinearMaxSymbols) {
    // Compact array; pair i is (syms[i], syms[i+1]).
    auto& prio = s.pair_prio;
    auto& merged = s.pair_merged;
    prio.resize(n);
    merged.resize(n);
    size_t m = n;
    for (size_t i = 0; i + 1 < m; ++i) lookup(syms[i], syms[i + 1], prio[i], merged[i]);
    while (m > 1) {
      size_t best = 0;
      uint32_t best_prio = kNever;
      for (size_t i = 0; i + 1 < m; ++i) {
        if (prio[i] < best_prio) {
          best_prio = prio[i];
          best = i;
        }
      }
      if (best_prio == kNever) break;
      syms[best].id = merged[best];
      syms[best].len += syms[best + 1].len;
      for (size_t i = best + 1; i + 1 < m; ++i) {
        syms[i] = syms[i + 1];
        prio[i] = prio[i + 1];
        merged[i] = merged[i + 1];
      }
      --m;
      if (best > 0) lookup(syms[best - 1], syms[best], prio[best - 1], merged[best - 1]);
      if (best + 1 < m) lookup(syms[best], syms[best + 1], prio[best], merged[best]);
    }
    syms.resize(m);
    return;
  }
  // Heap path: symbols linked by prev/next, stale entries skipped when popped.
  for (size_t i = 0; i < n; ++i) {
    syms[i].prev = static_cast<int32_t>(i) - 1;
    syms[i].next = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
  }
  auto& heap = s.heap;
  heap.clear();
  auto push = [&](size_t left) {
    const int32_t right = syms[left].next;
    if (right < 0) return;
    uint32_t p;
    int32_t mg;
    lookup(syms[left], syms[static_cast<size_t>(right)], p, mg);
    if (p == kNever) return;
    heap.push_back(HeapEntry{p, static_cast<uint32_t>(left), static_cast<uint32_t>(right),
                             syms[left].len + syms[static_cast<size_t>(right)].len, mg});
    std::push_heap(heap.begin(), heap.end(), HeapGreater{});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), HeapGreater{});
    const HeapEntry top = heap.back();
    heap.pop_back();
    Symbol& left = syms[top.pos];
    if (left.len == 0 || left.next != static_cast<int32_t>(top.right)) continue;
    Symbol& right = syms[top.right];
    if (right.len == 0 || left.len + right.len != top.total) continue;
    left.id = top.merged;
    left.len += right.len;
    left.next = right.next;
    if (right.next >= 0) syms[static_cast<size_t>(right.next)].prev = static_cast<int32_t>(top.pos);
    right.len = 0;
    if (left.prev >= 0) push(static_cast<size_t>(left.prev));
    push(top.pos);
  }
  size_t m = 0;
  for (size_t i = 0; i < n; ++i)
    if (syms[i].len != 0) syms[m++] = syms[i];
  syms.resize(m);
  (void)word;
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  Scratch& s = scratch();
  std::vector<Symbol>& syms = s.syms;
  syms.clear();
  const auto* bytes = reinterpret_cast<const uint8_t*>(word.data());
  const uint32_t n = static_cast<uint32_t>(word.size());
  auto add = [&](int32_t id, uint32_t start, uint32_t len, bool frozen = false) {
    syms.push_back(Symbol{id, start, len, -1, -1, frozen});
  };

  if (config_.merges == BpeConfig::Merges::by_rank) {
    // Hugging Face BPE::merge_word: characters (bytes for byte-level), byte fallback, then <unk>.
    bool have_unk = false;
    uint32_t unk_start = 0, unk_len = 0;
    auto flush_unk = [&] {
      if (have_unk) add(*config_.unk, unk_start, unk_len);
      have_unk = false;
    };
    uint32_t i = 0;
    while (i < n) {
      const uint32_t len = config_.byte_level ? 1 : static_cast<uint32_t>(std::min<size_t>(utf8_char_len(bytes[i]), n - i));
      int32_t id;
      if (config_.byte_level) id = byte_ids_[bytes[i]];
      else if (len == 1 && bytes[i] < 0x80) id = ascii_ids_[bytes[i]];
      else id = spelling_to_id_.find(word.substr(i, len));
      if (id >= 0) {
        flush_unk();
        add(id, i, len);
      } else {
        bool done = false;
        if (config_.byte_fallback && !config_.byte_level) {
          bool all = true;
          for (uint32_t k = 0; k < len; ++k) all &= byte_ids_[bytes[i + k]] >= 0;
          if (all) {
            for (uint32_t k = 0; k < len; ++k) add(byte_ids_[bytes[i + k]], i + k, 1);
            done = true;
          }
        }
        if (!done && config_.unk) {
          if (have_unk && config_.fuse_unk) {
            unk_len += len;
          } else {
            flush_unk();
            have_unk = true;
            unk_start = i;
            unk_len = len;
          }
        }
      }
      i += len;
    }
    flush_unk();
    merge_symbols(word, [this](const Symbol& a, const Symbol& b, uint32_t& prio, int32_t& merged) {
      uint32_t rank;
      if (merges_.find(a.id, b.id, rank, merged)) prio = rank;
      else prio = kNever;
    });
    for (const Symbol& sym : syms) out.push_back(sym.id);
    return;
  }

  // SentencePiece: characters (user-defined pieces frozen), merge by score, then unknown pieces go to
  // byte fallback or <unk> (a run of them fused into one).
  uint32_t i = 0;
  while (i < n) {
    if (!frozen_.empty() && frozen_.may_start(bytes[i])) {
      int32_t value = -1;
      const size_t len = frozen_.longest_at(word, i, value);
      if (len > 0) {
        add(value, i, static_cast<uint32_t>(len), true);
        i += static_cast<uint32_t>(len);
        continue;
      }
    }
    const uint32_t len = static_cast<uint32_t>(std::min<size_t>(utf8_char_len(bytes[i]), n - i));
    const int32_t id = len == 1 && bytes[i] < 0x80 ? ascii_ids_[bytes[i]] : spelling_to_id_.find(word.substr(i, len));
    add(id, i, len);
    i += len;
  }
  const int32_t unk = config_.unk ? *config_.unk : -1;
  merge_symbols(word, [this, word, unk](const Symbol& a, const Symbol& b, uint32_t& prio, int32_t& merged) {
    prio = kNever;
    if (a.frozen || b.frozen) return;
    const int32_t id = spelling_to_id_.find(word.substr(a.start, a.len + b.len));
    if (id < 0 || id == unk) return;
    prio = score_keys_[static_cast<size_t>(id)];
    merged = id;
  });
  bool prev_unk = false;
  for (const Symbol& sym : syms) {
    if (sym.id >= 0 && sym.id != unk) {
      out.push_back(sym.id);
      prev_unk = false;
      continue;
    }
    if (config_.byte_fallback) {
      for (uint32_t k = 0; k < sym.len; ++k) {
        const int32_t b = byte_ids_[bytes[sym.start + k]];
        MLA_CHECK(b >= 0 || unk >= 0, "tokenizer: byte fallback piece missing and no <unk>");
        out.push_back(b >= 0 ? b : unk);
      }
      prev_unk = false;
      continue;
    }
    MLA_CHECK(unk >= 0, "tokenizer: unknown piece '", word.substr(sym.start, sym.len), "' and no <unk> id");
    if (!prev_unk) out.push_back(unk);
    prev_unk = true;
  }
}

}  // namespace mlaforge::tok
