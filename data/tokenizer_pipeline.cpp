// PipelineTokenizer: added tokens, normalizer, pre-tokenizer, BPE model, template, decoder.
#include <unicode/uchar.h>

#include <algorithm>

#include "core/error.h"
#include "data/tokenizer_impl.h"

namespace mlaforge {

Tokenizer::~Tokenizer() = default;

namespace tok {
namespace {

// Rust regex's \w: Alphabetic, marks, decimal numbers, connector punctuation, Join_Control.
bool is_word_cp(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') || cp == '_';
  const auto c = static_cast<UChar32>(cp);
  if (u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL)) return true;
  const int8_t t = u_charType(c);
  return t == U_NON_SPACING_MARK || t == U_ENCLOSING_MARK || t == U_COMBINING_SPACING_MARK ||
         t == U_DECIMAL_DIGIT_NUMBER || t == U_CONNECTOR_PUNCTUATION;
}

// Code point ending at text[end) (valid UTF-8), and its start.
uint32_t prev_cp(std::string_view text, size_t end, size_t& start) {
  start = end - 1;
  while (start > 0 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
  size_t i = start;
  return utf8_next(text, i);
}

struct EncodeScratch {
  std::string normalized;
  std::vector<Piece> pieces;
  Arena arena;
};

}  // namespace

PipelineTokenizer::PipelineTokenizer(PipelineParts parts) : parts_(std::move(parts)) {
  MLA_CHECK(parts_.model != nullptr, "tokenizer: no model");
  bos_id = parts_.bos;
  eos_id = parts_.eos;
  pad_id = parts_.pad;
  unk_id = parts_.unk;
  int32_t max_id = parts_.model->max_id();
  for (const AddedToken& t : parts_.added) max_id = std::max(max_id, t.id);
  vocab_size_ = max_id + 1;
  added_index_.assign(static_cast<size_t>(vocab_size_), -1);
  special_.assign(static_cast<size_t>(vocab_size_), 0);
  for (size_t i = 0; i < parts_.added.size(); ++i) {
    const AddedToken& t = parts_.added[i];
    MLA_CHECK(t.id >= 0, "tokenizer: added token '", t.content, "' has a negative id");
    MLA_CHECK(!t.content.empty(), "tokenizer: added token ", t.id, " is empty");
    added_index_[static_cast<size_t>(t.id)] = static_cast<int32_t>(i);
    added_by_content_.set(t.content, t.id);
    if (t.special) special_[static_cast<size_t>(t.id)] = 1;
    if (t.normalized && parts_.normalizer) {
      std::string content = t.content;
      parts_.normalizer->normalize(content);
      if (!content.empty()) normalized_trie_.add(content, t.id);
    } else {
      raw_trie_.add(t.content, t.id);
    }
  }
  for (int32_t id : parts_.special_ids)
    if (id >= 0 && id < vocab_size_) special_[static_cast<size_t>(id)] = 1;
  byte_level_decoder_only_ = parts_.decoder.size() == 1 && parts_.decoder[0]->is_byte_level();
  if (byte_level_decoder_only_) {
    // Bytes of every token once and for all (HF's ByteLevel decoder: a token whose characters are not all
    // byte characters, such as an added token, contributes its UTF-8 as is).
    id_bytes_.resize(static_cast<size_t>(vocab_size_));
    std::string raw;
    for (int32_t id = 0; id < vocab_size_; ++id) {
      const std::string* s = token_string(id);
      if (s == nullptr) continue;
      id_bytes_[static_cast<size_t>(id)] = byte_level_to_bytes(*s, raw) ? raw : *s;
    }
  }
  if (parts_.sentencepiece_decoding) {
    auto& types = parts_.sentencepiece_decoding->piece_types;
    types.resize(static_cast<size_t>(vocab_size_), 1);
    sp_byte_.assign(static_cast<size_t>(vocab_size_), -1);
    for (int32_t id = 0; id < vocab_size_; ++id) {
      if (types[static_cast<size_t>(id)] != 6 || !parts_.model->has_piece(id)) continue;
      const std::string& p = parts_.model->piece(id);
      if (p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>')
        sp_byte_[static_cast<size_t>(id)] = static_cast<int16_t>(std::stoi(p.substr(3, 2), nullptr, 16));
    }
  }
}

PipelineTokenizer::~PipelineTokenizer() = default;

const std::string* PipelineTokenizer::token_string(int32_t id) const {
  if (id < 0 || id >= vocab_size_) return nullptr;
  const int32_t added = added_index_[static_cast<size_t>(id)];
  if (added >= 0) return &parts_.added[static_cast<size_t>(added)].content;
  if (parts_.model->has_piece(id)) return &parts_.model->piece(id);
  return nullptr;
}

std::optional<int32_t> PipelineTokenizer::token_to_id(std::string_view token) const {
  int32_t id = added_by_content_.find(token);
  if (id < 0) id = parts_.model->find_piece(token);
  if (id < 0) return std::nullopt;
  return id;
}

std::string PipelineTokenizer::id_to_token(int32_t id) const {
  const std::string* s = token_string(id);
  MLA_CHECK(s != nullptr, "tokenizer: id ", id, " is not in the vocabulary (size ", vocab_size_, ")");
  return *s;
}

bool PipelineTokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size_ && special_[static_cast<size_t>(id)];
}

// HF AddedVocabulary::find_matches: leftmost-longest literal matches, with single_word / lstrip / rstrip.
void PipelineTokenizer::split_added(std::string_view text, bool normalized_pass, bool at_start,
                                    std::vector<Segment>& out) const {
  const LiteralTrie& trie = normalized_pass ? normalized_trie_ : raw_trie_;
  if (trie.empty()) {
    if (!text.empty()) out.push_back(Segment{text, -1, at_start});
    return;
  }
  size_t start_offset = 0, pos = 0;
  const size_t n = text.size();
  while (pos < n) {
    if (!trie.may_start(static_cast<uint8_t>(text[pos]))) {
      ++pos;
      continue;
    }
    int32_t id = -1;
    const size_t len = trie.longest_at(text, pos, id);
    if (len == 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    const AddedToken& token = parts_.added[static_cast<size_t>(added_index_[static_cast<size_t>(id)])];
    if (token.single_word) {
      size_t before_start = 0;
      const bool start_space = start == 0 || !is_word_cp(prev_cp(text, start, before_start));
      size_t k = stop;
      const bool stop_space = stop == n || !is_word_cp(utf8_next(text, k));
      if (!start_space || !stop_space) {
        pos = stop;
        continue;
      }
    }
    if (token.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t cs = 0;
        if (!is_whitespace_cp(prev_cp(text, s, cs))) break;
        s = cs;
      }
      start = std::max(s, start_offset);
    }
    if (token.rstrip) {
      while (stop < n) {
        size_t k = stop;
        if (!is_whitespace_cp(utf8_next(text, k))) break;
        stop = k;
      }
    }
    if (start_offset < start)
      out.push_back(Segment{text.substr(start_offset, start - start_offset), -1, at_start && start_offset == 0});
    out.push_back(Segment{text.substr(start, stop - start), id, false});
    start_offset = stop;
    pos = stop;
  }
  if (start_offset < n) out.push_back(Segment{text.substr(start_offset), -1, at_start && start_offset == 0});
}

void PipelineTokenizer::encode_segment(const Segment& segment, std::vector<int32_t>& ids) const {
  thread_local EncodeScratch scratch;
  const BpeModel& model = *parts_.model;
  auto model_pass = [&](std::string_view text, bool at_start) {
    if (!parts_.pre_tokenizer) {
      model.encode_word(text, ids);
      return;
    }
    std::vector<Piece> pieces;
    pieces.swap(scratch.pieces);
    pieces.clear();
    scratch.arena.reset();
    parts_.pre_tokenizer->split(Piece{text, at_start}, pieces, scratch.arena);
    for (const Piece& p : pieces) model.encode_word(p.text, ids);
    pieces.swap(scratch.pieces);
  };
  if (!parts_.normalizer) {
    model_pass(segment.text, segment.at_start);
    return;
  }
  std::string normalized;
  normalized.swap(scratch.normalized);
  normalized.assign(segment.text);
  parts_.normalizer->normalize(normalized);
  if (normalized_trie_.empty()) {
    if (!normalized.empty()) model_pass(normalized, segment.at_start);
  } else {
    std::vector<Segment> parts;
    split_added(normalized, true, segment.at_start, parts);
    for (const Segment& p : parts) {
      if (p.token >= 0) ids.push_back(p.token);
      else model_pass(p.text, p.at_start);
    }
  }
  normalized.swap(scratch.normalized);
}

std::vector<int32_t> PipelineTokenizer::encode(std::string_view text, bool add_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  if (add_special) ids.insert(ids.end(), parts_.prefix.begin(), parts_.prefix.end());
  std::string repaired;
  if (!utf8_is_valid(text)) {
    append_utf8_lossy(repaired, text);
    text = repaired;
  }
  std::vector<Segment> segments;
  split_added(text, false, true, segments);
  for (const Segment& s : segments) {
    if (s.token >= 0) ids.push_back(s.token);
    else encode_segment(s, ids);
  }
  if (add_special) ids.insert(ids.end(), parts_.suffix.begin(), parts_.suffix.end());
  return ids;
}

// sentencepiece's SentencePieceProcessor::Decode: a leading '▁' is dropped from the first piece that
// comes before any visible text (and from every such piece when remove_extra_whitespaces); runs of byte
// pieces are decoded as UTF-8 with one U+FFFD per invalid byte; <unk> prints as " \u2047 "; control
// pieces are invisible (printed as their text when !skip_special, without affecting the prefix rule).
std::string PipelineTokenizer::decode_sentencepiece(const std::vector<int32_t>& ids, bool skip_special) const {
  const auto& sp = *parts_.sentencepiece_decoding;
  std::string text, bytes;
  bool visible = false;  // some visible text has been produced
  bool is_bos_ws = true, bos_ws_seen = false;
  auto flush_bytes = [&] {
    size_t i = 0;
    const auto* b = reinterpret_cast<const uint8_t*>(bytes.data());
    while (i < bytes.size()) {
      const size_t len = utf8_valid_len(b, bytes.size(), i);
      if (len == 0) {
        text.append(kReplacementChar);
        ++i;
      } else {
        text.append(bytes, i, len);
        i += len;
      }
      visible = true;
    }
    bytes.clear();
  };
  for (int32_t id : ids) {
    const std::string* s = token_string(id);
    MLA_CHECK(s != nullptr, "tokenizer: cannot decode id ", id, " (vocabulary size ", vocab_size_, ")");
    const int32_t type = sp.piece_types[static_cast<size_t>(id)];
    if (type == 6 && sp_byte_[static_cast<size_t>(id)] >= 0) {
      bytes.push_back(static_cast<char>(sp_byte_[static_cast<size_t>(id)]));
      continue;
    }
    flush_bytes();
    if (bos_ws_seen || visible) is_bos_ws = false;
    if (type == 3) {  // control
      if (!skip_special) text += *s;
      bos_ws_seen = false;
      continue;
    }
    if (type == 2) {  // unknown
      text += sp.unk_surface;
      visible = true;
      bos_ws_seen = false;
      continue;
    }
    std::string_view piece = *s;
    bos_ws_seen = false;
    if (is_bos_ws && (sp.dummy_prefix || sp.remove_extra_whitespaces) &&
        piece.substr(0, kSpaceSymbol.size()) == kSpaceSymbol) {
      piece.remove_prefix(kSpaceSymbol.size());
      bos_ws_seen = !sp.remove_extra_whitespaces;
    }
    size_t pos = 0;
    while (pos < piece.size()) {
      const size_t hit = piece.find(kSpaceSymbol, pos);
      if (hit == std::string_view::npos) {
        text.append(piece.substr(pos));
        break;
      }
      text.append(piece.substr(pos, hit - pos));
      text.push_back(' ');
      pos = hit + kSpaceSymbol.size();
    }
    if (!piece.empty()) visible = true;
  }
  flush_bytes();
  return text;
}

std::string PipelineTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  if (parts_.sentencepiece_decoding) return decode_sentencepiece(ids, skip_special);
  if (byte_level_decoder_only_) {
    std::string bytes;
    bytes.reserve(ids.size() * 6);
    for (int32_t id : ids) {
      MLA_CHECK(id >= 0 && id < vocab_size_ && token_string(id) != nullptr, "tokenizer: cannot decode id ", id,
                " (vocabulary size ", vocab_size_, ")");
      if (skip_special && special_[static_cast<size_t>(id)]) continue;
      bytes += id_bytes_[static_cast<size_t>(id)];
    }
    if (utf8_is_valid(bytes)) return bytes;
    std::string text;
    text.reserve(bytes.size() + 16);
    append_utf8_lossy(text, bytes);
    return text;
  }
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* s = token_string(id);
    MLA_CHECK(s != nullptr, "tokenizer: cannot decode id ", id, " (vocabulary size ", vocab_size_, ")");
    if (skip_special && special_[static_cast<size_t>(id)]) continue;
    tokens.push_back(*s);
  }
  if (!parts_.has_decoder) {
    std::string text;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) text += ' ';
      text += tokens[i];
    }
    return text;
  }
  for (const auto& step : parts_.decoder) step->decode_chain(tokens);
  std::string text;
  for (const auto& t : tokens) text += t;
  return text;
}

}  // namespace tok
}  // namespace mlaforge
