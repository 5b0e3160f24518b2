// SentencePiece .model files (protobuf read by hand), llama2.c tokenizer.bin, GGUF vocabularies, and
// load_tokenizer's dispatch.
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/mmap_file.h"
#include "data/tokenizer_impl.h"

namespace mlaforge {
namespace tok {
namespace {

enum PieceType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// ------------------------------------------------------------------------ protobuf wire format --
class ProtoReader {
 public:
  ProtoReader(const uint8_t* data, size_t size, const std::string& path) : p_(data), end_(data + size), path_(path) {}
  bool done() const { return p_ >= end_; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      MLA_CHECK(p_ < end_, path_, ": truncated protobuf varint");
      const uint8_t b = *p_++;
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail(path_, ": malformed protobuf varint");
  }
  // Reads a key; returns field number and wire type.
  std::pair<uint32_t, uint32_t> key() {
    const uint64_t k = varint();
    return {static_cast<uint32_t>(k >> 3), static_cast<uint32_t>(k & 7)};
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    MLA_CHECK(n <= static_cast<uint64_t>(end_ - p_), path_, ": truncated protobuf field");
    std::string_view v(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return v;
  }
  uint32_t fixed32() {
    MLA_CHECK(end_ - p_ >= 4, path_, ": truncated protobuf fixed32");
    uint32_t v;
    std::memcpy(&v, p_, 4);
    p_ += 4;
    return v;
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1:
        MLA_CHECK(end_ - p_ >= 8, path_, ": truncated protobuf fixed64");
        p_ += 8;
        break;
      case 2: bytes(); break;
      case 5: fixed32(); break;
      default: fail(path_, ": unsupported protobuf wire type ", wire);
    }
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
  const std::string& path_;
};

struct SpModel {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int32_t> types;
  int64_t model_type = 1;  // UNIGRAM unless told
  bool byte_fallback = false;
  bool treat_whitespace_as_suffix = false;
  int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  std::optional<std::string> unk_surface;
  std::string normalizer_name;
  size_t charsmap_size = 0;
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
};

SpModel parse_sentencepiece(const std::string& path) {
  MappedFile file(path);
  SpModel m;
  ProtoReader r(file.data(), file.size(), path);
  auto as_int32 = [](uint64_t v) { return static_cast<int32_t>(static_cast<uint32_t>(v)); };
  while (!r.done()) {
    const auto [field, wire] = r.key();
    if (field == 1 && wire == 2) {  // SentencePiece
      const std::string_view msg = r.bytes();
      ProtoReader p(reinterpret_cast<const uint8_t*>(msg.data()), msg.size(), path);
      std::string piece;
      float score = 0.0f;
      int32_t type = kNormal;
      while (!p.done()) {
        const auto [f, w] = p.key();
        if (f == 1 && w == 2) piece = std::string(p.bytes());
        else if (f == 2 && w == 5) {
          const uint32_t bits = p.fixed32();
          std::memcpy(&score, &bits, 4);
        } else if (f == 3 && w == 0) type = as_int32(p.varint());
        else p.skip(w);
      }
      m.pieces.push_back(std::move(piece));
      m.scores.push_back(score);
      m.types.push_back(type);
    } else if (field == 2 && wire == 2) {  // TrainerSpec
      const std::string_view msg = r.bytes();
      ProtoReader t(reinterpret_cast<const uint8_t*>(msg.data()), msg.size(), path);
      while (!t.done()) {
        const auto [f, w] = t.key();
        if (f == 44 && w == 2) {
          m.unk_surface = std::string(t.bytes());
          continue;
        }
        if (w != 0) {
          t.skip(w);
          continue;
        }
        const uint64_t v = t.varint();
        switch (f) {
          case 3: m.model_type = static_cast<int64_t>(v); break;
          case 24: m.treat_whitespace_as_suffix = v != 0; break;
          case 35: m.byte_fallback = v != 0; break;
          case 40: m.unk_id = as_int32(v); break;
          case 41: m.bos_id = as_int32(v); break;
          case 42: m.eos_id = as_int32(v); break;
          case 43: m.pad_id = as_int32(v); break;
          default: break;
        }
      }
    } else if (field == 3 && wire == 2) {  // NormalizerSpec
      const std::string_view msg = r.bytes();
      ProtoReader n(reinterpret_cast<const uint8_t*>(msg.data()), msg.size(), path);
      while (!n.done()) {
        const auto [f, w] = n.key();
        if (f == 1 && w == 2) m.normalizer_name = std::string(n.bytes());
        else if (f == 2 && w == 2) m.charsmap_size = n.bytes().size();
        else if (f == 3 && w == 0) m.add_dummy_prefix = n.varint() != 0;
        else if (f == 4 && w == 0) m.remove_extra_whitespaces = n.varint() != 0;
        else if (f == 5 && w == 0) m.escape_whitespaces = n.varint() != 0;
        else n.skip(w);
      }
    } else {
      r.skip(wire);
    }
  }
  return m;
}

std::optional<int32_t> valid_id(int32_t id, size_t n) {
  if (id < 0 || static_cast<size_t>(id) >= n) return std::nullopt;
  return id;
}

// Byte-level BPE from a GGUF "gpt2" vocabulary.
std::unique_ptr<Tokenizer> gguf_gpt2(const GgufVocab& v) {
  PipelineParts parts;
  parts.kind = "gguf-gpt2";
  const std::string& pre = v.pre;
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  if (pre.empty() || pre == "default" || pre == "gpt-2" || pre == "gpt2") {
    steps.push_back(make_byte_level_pre_tokenizer(false, true));
  } else if (pre == "llama3" || pre == "llama-bpe" || pre == "llama-v3") {
    steps.push_back(make_split_pre_tokenizer(kLlama3Pattern, true, SplitBehavior::isolated, false));
    steps.push_back(make_byte_level_pre_tokenizer(false, false));
  } else if (pre == "qwen2") {
    // Qwen's tokenizer.json also normalizes to NFC (GGUF does not record it; llama.cpp skips it).
    parts.normalizer = make_unicode_normalizer("NFC");
    steps.push_back(make_split_pre_tokenizer(kQwen2Pattern, true, SplitBehavior::isolated, false));
    steps.push_back(make_byte_level_pre_tokenizer(false, false));
  } else if (pre == "smollm" || pre == "starcoder" || pre == "refact") {
    steps.push_back(make_digits_pre_tokenizer(true));
    steps.push_back(make_byte_level_pre_tokenizer(false, true));
  } else {
    fail("GGUF vocabulary: tokenizer.ggml.pre '", pre,
         "' is not supported (supported: default, gpt-2, llama3/llama-bpe, qwen2, smollm/starcoder/refact)");
  }
  parts.pre_tokenizer = make_sequence_pre_tokenizer(std::move(steps));
  BpeConfig config;
  config.byte_level = true;
  auto model = std::make_unique<BpeModel>(config);
  model->reserve(v.tokens.size(), v.merges.size());
  for (size_t i = 0; i < v.tokens.size(); ++i) model->add_piece(static_cast<int32_t>(i), v.tokens[i]);
  for (const std::string& merge : v.merges) {
    const size_t space = merge.find(' ');
    MLA_CHECK(space != std::string::npos, "GGUF vocabulary: merge '", merge, "' has no space");
    model->add_merge(std::string_view(merge).substr(0, space), std::string_view(merge).substr(space + 1));
  }
  model->finalize();
  parts.model = std::move(model);
  for (size_t i = 0; i < v.tokens.size() && i < v.token_types.size(); ++i) {
    const int32_t type = v.token_types[i];
    if (type != kControl && type != kUserDefined) continue;
    AddedToken t;
    t.id = static_cast<int32_t>(i);
    t.content = v.tokens[i];
    t.special = type == kControl;
    if (!t.content.empty()) parts.added.push_back(std::move(t));
  }
  parts.decoder.push_back(make_byte_level_decoder());
  parts.has_decoder = true;
  const size_t n = v.tokens.size();
  parts.bos = v.bos ? valid_id(*v.bos, n) : std::nullopt;
  parts.eos = v.eos ? valid_id(*v.eos, n) : std::nullopt;
  parts.pad = v.pad ? valid_id(*v.pad, n) : std::nullopt;
  parts.unk = v.unk ? valid_id(*v.unk, n) : std::nullopt;
  if (v.add_bos && parts.bos) parts.prefix.push_back(*parts.bos);
  return std::make_unique<PipelineTokenizer>(std::move(parts));
}

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(
    std::string kind, const std::vector<std::string>& pieces, const std::vector<float>& scores,
    const std::vector<int32_t>& types, bool add_dummy_prefix, bool remove_extra_whitespaces, bool byte_fallback,
    std::optional<int32_t> unk, std::optional<int32_t> bos, std::optional<int32_t> eos,
    std::optional<int32_t> pad, bool add_bos, std::optional<std::string> unk_surface) {
  const size_t n = pieces.size();
  MLA_CHECK(scores.size() == n && types.size() == n, kind, ": pieces, scores and types differ in length");
  PipelineParts parts;
  parts.kind = std::move(kind);
  parts.normalizer = make_sentencepiece_normalizer(add_dummy_prefix, remove_extra_whitespaces);
  BpeConfig config;
  config.merges = BpeConfig::Merges::by_score;
  config.byte_fallback = byte_fallback;
  config.unk = unk;
  auto model = std::make_unique<BpeModel>(config);
  model->reserve(n, 0);
  for (size_t i = 0; i < n; ++i) model->add_piece(static_cast<int32_t>(i), pieces[i]);
  for (size_t i = 0; i < n; ++i) {
    const auto id = static_cast<int32_t>(i);
    // SentencePiece's PieceToId finds any piece; only <unk> ends a merge.
    model->set_score(id, scores[i], types[i] != kUnknown && !(unk && *unk == id));
    if (types[i] == kUserDefined && !pieces[i].empty()) model->add_frozen(pieces[i], id);
  }
  model->finalize();
  parts.model = std::move(model);
  for (size_t i = 0; i < n; ++i) {
    if (types[i] != kControl && types[i] != kUnknown) continue;
    parts.special_ids.push_back(static_cast<int32_t>(i));
    if (pieces[i].empty()) continue;
    AddedToken t;
    t.id = static_cast<int32_t>(i);
    t.content = pieces[i];
    t.special = true;
    parts.added.push_back(std::move(t));
  }
  PipelineParts::SentencePieceDecoding decoding;
  decoding.dummy_prefix = add_dummy_prefix;
  decoding.remove_extra_whitespaces = remove_extra_whitespaces;
  decoding.piece_types = types;
  if (unk_surface) decoding.unk_surface = *unk_surface;
  parts.sentencepiece_decoding = std::move(decoding);
  parts.has_decoder = true;
  parts.bos = bos;
  parts.eos = eos;
  parts.pad = pad;
  parts.unk = unk;
  if (add_bos && bos) parts.prefix.push_back(*bos);
  return std::make_unique<PipelineTokenizer>(std::move(parts));
}

}  // namespace tok

std::unique_ptr<Tokenizer> load_sentencepiece_model(const std::string& path) {
  const tok::SpModel m = tok::parse_sentencepiece(path);
  MLA_CHECK(!m.pieces.empty(), path, ": no pieces (not a SentencePiece model?)");
  MLA_CHECK(m.model_type == 2, path, ": SentencePiece model type ",
            m.model_type == 1 ? "UNIGRAM" : m.model_type == 3 ? "WORD" : m.model_type == 4 ? "CHAR" : "unknown",
            " is not supported (only BPE models; convert Unigram models to tokenizer.json with transformers)");
  MLA_CHECK(m.charsmap_size == 0, path, ": SentencePiece normalizer '", m.normalizer_name,
            "' uses a precompiled character map, which is not supported (only identity normalization)");
  MLA_CHECK(!m.treat_whitespace_as_suffix, path, ": treat_whitespace_as_suffix is not supported");
  MLA_CHECK(m.escape_whitespaces, path, ": escape_whitespaces=false is not supported");
  const size_t n = m.pieces.size();
  return tok::make_sentencepiece_tokenizer("sentencepiece-bpe", m.pieces, m.scores, m.types, m.add_dummy_prefix,
                                           m.remove_extra_whitespaces, m.byte_fallback, tok::valid_id(m.unk_id, n),
                                           tok::valid_id(m.bos_id, n), tok::valid_id(m.eos_id, n),
                                           tok::valid_id(m.pad_id, n), true, m.unk_surface);
}

std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path, int32_t vocab_size,
                                                  const Llama2cTokenizerOptions& options) {
  MappedFile file(path);
  const uint8_t* p = file.data();
  const size_t size = file.size();
  MLA_CHECK(size >= 4, path, ": too small for a llama2.c tokenizer");
  size_t off = 4;  // max_token_length
  std::vector<std::string> pieces;
  std::vector<float> scores;
  while (vocab_size > 0 ? pieces.size() < static_cast<size_t>(vocab_size) : off < size) {
    MLA_CHECK(off + 8 <= size, path, ": truncated at token ", pieces.size(),
              vocab_size > 0 ? " (fewer tokens than the vocabulary size)" : "");
    float score;
    int32_t len;
    std::memcpy(&score, p + off, 4);
    std::memcpy(&len, p + off + 4, 4);
    off += 8;
    MLA_CHECK(len >= 0 && off + static_cast<size_t>(len) <= size, path, ": bad length ", len, " of token ",
              pieces.size());
    std::string piece(reinterpret_cast<const char*>(p + off), static_cast<size_t>(len));
    off += static_cast<size_t>(len);
    // The export writes BOS/EOS as "\n<s>\n" / "\n</s>\n" and '▁' as ' '.
    if (piece.size() > 2 && piece.front() == '\n' && piece.back() == '\n') piece = piece.substr(1, piece.size() - 2);
    std::string restored;
    for (char c : piece) {
      if (c == ' ') restored.append(tok::kSpaceSymbol);
      else restored.push_back(c);
    }
    pieces.push_back(std::move(restored));
    scores.push_back(score);
  }
  const size_t n = pieces.size();
  MLA_CHECK(n >= 3, path, ": only ", n, " tokens");
  // Normalizer settings: explicit options, else the .model beside the file, else inferred.
  std::optional<tok::SpModel> sibling;
  const std::string sibling_path = std::filesystem::path(path).replace_extension(".model").string();
  if ((!options.add_dummy_prefix || !options.remove_extra_whitespaces || !options.unk_surface) &&
      file_exists(sibling_path)) {
    try {
      tok::SpModel m = tok::parse_sentencepiece(sibling_path);
      if (m.pieces.size() == n) sibling = std::move(m);
    } catch (const Error&) {
      // Not a usable SentencePiece model: infer instead.
    }
  }
  bool double_space_piece = false;
  for (const std::string& p : pieces) {
    if (p.find("\xE2\x96\x81\xE2\x96\x81") != std::string::npos) {
      double_space_piece = true;
      break;
    }
  }
  const bool add_dummy_prefix = options.add_dummy_prefix.value_or(sibling ? sibling->add_dummy_prefix : true);
  const bool remove_extra = options.remove_extra_whitespaces.value_or(
      sibling ? sibling->remove_extra_whitespaces : !double_space_piece);
  std::optional<std::string> unk_surface = options.unk_surface;
  if (!unk_surface && sibling) unk_surface = sibling->unk_surface;
  std::vector<int32_t> types(n, tok::kNormal);
  types[0] = tok::kUnknown;
  types[1] = tok::kControl;
  types[2] = tok::kControl;
  bool byte_fallback = false;
  for (size_t i = 3; i < n; ++i) {
    const std::string& s = pieces[i];
    if (s.size() == 6 && s.compare(0, 3, "<0x") == 0 && s[5] == '>' && std::isxdigit(static_cast<unsigned char>(s[3])) &&
        std::isxdigit(static_cast<unsigned char>(s[4]))) {
      types[i] = tok::kByte;
      byte_fallback = true;
    }
  }
  return tok::make_sentencepiece_tokenizer("llama2c", pieces, scores, types, add_dummy_prefix, remove_extra,
                                           byte_fallback, 0, 1, 2, std::nullopt, true, unk_surface);
}

std::unique_ptr<Tokenizer> tokenizer_from_gguf_vocab(const GgufVocab& vocab) {
  MLA_CHECK(!vocab.tokens.empty(), "GGUF vocabulary: no tokens");
  if (vocab.model == "gpt2") return tok::gguf_gpt2(vocab);
  if (vocab.model == "llama") {
    const size_t n = vocab.tokens.size();
    std::vector<float> scores = vocab.scores;
    if (scores.empty()) scores.assign(n, 0.0f);
    std::vector<int32_t> types = vocab.token_types;
    if (types.empty()) types.assign(n, tok::kNormal);
    MLA_CHECK(scores.size() == n && types.size() == n, "GGUF vocabulary: ", n, " tokens but ", scores.size(),
              " scores and ", types.size(), " token types");
    bool byte_fallback = false;
    for (int32_t t : types) byte_fallback |= t == tok::kByte;
    auto id = [&](const std::optional<int32_t>& v) { return v ? tok::valid_id(*v, n) : std::nullopt; };
    std::optional<int32_t> unk = id(vocab.unk);
    if (!unk) {
      for (size_t i = 0; i < n; ++i)
        if (types[i] == tok::kUnknown) {
          unk = static_cast<int32_t>(i);
          break;
        }
    }
    return tok::make_sentencepiece_tokenizer("gguf-llama", vocab.tokens, scores, types, vocab.add_space_prefix, false,
                                             byte_fallback, unk, id(vocab.bos), id(vocab.eos), id(vocab.pad),
                                             vocab.add_bos);
  }
  fail("GGUF vocabulary: tokenizer.ggml.model '", vocab.model, "' is not supported (supported: gpt2, llama)");
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  auto lower_ext = [](const std::string& p) {
    std::string ext = fs::path(p).extension().string();
    for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return ext;
  };
  if (is_directory(path)) {
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer.bin"}) {
      const std::string candidate = (fs::path(path) / name).string();
      if (file_exists(candidate)) return load_tokenizer(candidate);
    }
    fail(path, ": no tokenizer.json, tokenizer.model or tokenizer.bin in this folder");
  }
  MLA_CHECK(file_exists(path), path, ": no such tokenizer file");
  const std::string ext = lower_ext(path);
  if (ext == ".json") return load_tokenizer_json(path);
  if (ext == ".model") return load_sentencepiece_model(path);
  if (ext == ".bin") return load_llama2c_tokenizer(path);
  fail(path, ": unrecognised tokenizer file (expected tokenizer.json, a SentencePiece .model or a llama2.c .bin)");
}

}  // namespace mlaforge
