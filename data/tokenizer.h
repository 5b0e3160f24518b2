#pragma once
// Tokenizers, torch-free: Hugging Face tokenizer.json (byte-level BPE such as Llama-3 / Qwen2-3 /
// GPT-2 / SmolLM2, and SentencePiece-style BPE with byte fallback such as Llama-2 / Mistral),
// SentencePiece .model files (BPE), llama2.c tokenizer.bin files and vocabularies embedded in GGUF files.
//
// Compatibility contract (checked token for token by tests/core/tokenizer_*_test.cpp on > 1 MB of varied
// text against the Hugging Face `tokenizers` library and the `sentencepiece` library):
//   * encode(text, add_special) == HF Tokenizer.encode(text, add_special_tokens=add_special).ids for
//     tokenizer.json files. Added tokens (special or not) that appear literally in the text are always
//     recognised, as HF does (split_special_tokens=False). add_special adds exactly what the file's
//     post_processor adds (TemplateProcessing / Bert / Roberta): Llama-2 files add BOS; Qwen files add
//     nothing; the published early Llama-3 tokenizer.json has only a ByteLevel post-processor and so
//     adds nothing either (transformers agrees for that file): prepend *bos_id yourself if you want it.
//   * For SentencePiece .model and llama2.c .bin files: encode(text) == sentencepiece's
//     SentencePieceProcessor.encode(text) on text that contains no control-token strings; control
//     pieces (<s>, </s>) and <unk> written literally in the text are recognised as those tokens (like
//     transformers' LlamaTokenizer and llama.cpp with parse_special), each remaining chunk being encoded
//     with its own dummy prefix. add_special prepends BOS.
//   * decode(ids, skip_special) == HF Tokenizer.decode(ids, skip_special_tokens=skip_special) for
//     tokenizer.json files and GGUF gpt2 vocabularies. For byte-level tokenizers that is the exact inverse
//     of encode (modulo Qwen's NFC normalizer, and bytes a vocabulary has no token for), bytes that do not
//     form valid UTF-8 (a partial sequence of tokens) becoming U+FFFD as Rust's from_utf8_lossy does.
//   * For SentencePiece .model / llama2.c .bin / GGUF llama vocabularies, decode(ids, true) ==
//     sentencepiece's decode of the ids without control tokens: '▁' -> ' ', the dummy-prefix space
//     dropped at the start, <0xNN> pieces back to bytes with one U+FFFD per invalid byte, <unk> printed
//     as the model's unk_surface (" \u2047 "). With skip_special=false control tokens print as their text
//     ("<s>Hello"), without affecting the dummy-prefix rule.
//   * Input text that is not valid UTF-8 is first repaired (each maximal invalid subsequence becomes
//     U+FFFD), since neither HF nor sentencepiece can be given such input.
//   * Regexes run on PCRE2 (UTF + UCP + JIT) with \s rewritten to Unicode White_Space (Oniguruma's \s);
//     NFC and character properties come from ICU. Their Unicode tables (15.0 on Debian 12) decide; letters
//     and digits first assigned in Unicode 16 (e.g. Garay digits U+10D40) can split differently from HF,
//     whose Oniguruma knows Unicode 16.
//   * Unsupported components (Unigram/WordPiece models, BertPreTokenizer, precompiled SentencePiece
//     normalizers, BPE dropout...) throw mlaforge::Error naming them; nothing is silently approximated.
//     tokenizer_config.json's add_bos_token/add_eos_token are not applied (HF `tokenizers` ignores them too;
//     transformers' LlamaTokenizerFast rewrites the post-processor from them).
// All methods are const and thread-safe; each thread keeps its own word cache (a few per thread).
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mlaforge {

class Tokenizer {
 public:
  virtual ~Tokenizer();

  // Token ids of text. add_special: add the configured BOS / template tokens (see above).
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special = false) const = 0;
  // Text of ids. skip_special drops special tokens (HF's skip_special_tokens). Unknown ids throw.
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const = 0;
  // One past the largest id (model vocabulary plus added tokens), e.g. 128256 for Llama-3.
  virtual int32_t vocab_size() const = 0;
  // Vocabulary string <-> id, in the file's own spelling (byte-level "Ġhello", SentencePiece "▁hello",
  // "<0x0A>", added tokens by content).
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual std::string id_to_token(int32_t id) const = 0;  // throws for an id outside the vocabulary
  // True for special tokens (HF added tokens with special=true, SentencePiece control/unknown pieces).
  virtual bool is_special(int32_t id) const = 0;
  // Human-readable kind: "hf-bpe", "sentencepiece-bpe", "llama2c", "gguf-gpt2", "gguf-llama".
  virtual std::string kind() const = 0;

  // Special ids, when known: from tokenizer_config.json (bos_token, eos_token, pad_token), the model's
  // unk_token / the post-processor's template for tokenizer.json; from the trainer spec for .model files;
  // from the GGUF metadata for GGUF vocabularies; 1/2/0 for llama2.c files.
  std::optional<int32_t> bos_id, eos_id, pad_id, unk_id;
};

// tokenizer.json (any HF "tokenizers" file whose model is BPE). Also reads tokenizer_config.json from
// the same folder, when present, for bos/eos/pad tokens. Unsupported components throw naming them.
std::unique_ptr<Tokenizer> load_tokenizer_json(const std::string& path);

// SentencePiece .model (protobuf ModelProto, parsed here without protobuf). BPE models only: a Unigram
// model, or one whose normalizer has a precompiled character map (nmt_nfkc...), throws a clear error.
std::unique_ptr<Tokenizer> load_sentencepiece_model(const std::string& path);

// llama2.c tokenizer.bin: int32 max_token_length, then per token float32 score, int32 length, bytes
// (with ' ' standing for SentencePiece's '▁'). vocab_size <= 0 reads tokens until the end of the file.
// The file does not record the SentencePiece normalizer settings the vocabulary was trained (and its
// training data tokenized) with. Unset options come from the SentencePiece .model of the same name
// beside the .bin when there is one (tok512.bin -> tok512.model), else: dummy prefix on, and
// remove_extra_whitespaces on exactly when no piece holds two '▁' in a row (a model trained with it never
// learns such pieces: stories260K's tok512 -> on; Llama-2, whose vocabulary has "▁▁" -> off). With these
// rules the .bin encodes like sentencepiece with the .model. (llama2.c's own run.c never collapses spaces.)
struct Llama2cTokenizerOptions {
  std::optional<bool> add_dummy_prefix;
  std::optional<bool> remove_extra_whitespaces;
  std::optional<std::string> unk_surface;  // how decode prints <unk>; sentencepiece's default " \u2047 "
};
std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path, int32_t vocab_size = 0,
                                                  const Llama2cTokenizerOptions& options = {});

// A vocabulary as stored in GGUF metadata (tokenizer.ggml.*), filled by the GGUF reader.
struct GgufVocab {
  std::string model;                 // tokenizer.ggml.model: "gpt2" (byte-level BPE) | "llama" (SentencePiece)
  std::string pre;                   // tokenizer.ggml.pre: "default", "llama3"/"llama-bpe", "qwen2",
                                     // "smollm"/"starcoder"/"refact", "gpt-2"/"gpt2" (gpt2 models)
  std::vector<std::string> tokens;   // tokenizer.ggml.tokens
  std::vector<float> scores;         // tokenizer.ggml.scores (llama: merge priority; may be empty for gpt2)
  std::vector<int32_t> token_types;  // 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
  std::vector<std::string> merges;   // tokenizer.ggml.merges ("a b"), gpt2 only
  std::optional<int32_t> bos, eos, unk, pad;
  bool add_bos = false;              // tokenizer.ggml.add_bos_token
  bool add_space_prefix = true;      // tokenizer.ggml.add_space_prefix (llama)
};
// gpt2: byte-level BPE by merge rank with the pre-tokenizer HF uses for that `pre` (qwen2 adds NFC, as
// Qwen's tokenizer.json does); control (3) and user-defined (4) tokens become added tokens (control ones
// special) matched literally in the text. llama: SentencePiece BPE by score, byte fallback when the
// vocabulary has byte tokens, dummy prefix from add_space_prefix, no whitespace collapsing (as llama.cpp).
// add_bos makes encode(text, true) prepend bos.
std::unique_ptr<Tokenizer> tokenizer_from_gguf_vocab(const GgufVocab& vocab);

// Dispatch on the path: a folder (tokenizer.json, else tokenizer.model, else tokenizer.bin), *.json,
// *.model, *.bin (llama2.c, vocabulary size read from the file's length).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

}  // namespace mlaforge
