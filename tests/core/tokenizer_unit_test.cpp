// Tokenizer facts that need no Python references: golden ids, loader dispatch, UTF-8 repair and lossy
// decoding, errors for unsupported files, special-token handling, several instances per thread.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "core/error.h"
#include "core/mmap_file.h"
#include "data/tokenizer.h"
#include "tests/support/test_support.h"

namespace mlaforge {
namespace {

std::string first_paragraph(const std::string& path) {
  const std::string text = read_text_file(path);
  const size_t end = text.find("\n\n");
  return text.substr(0, end);
}

const std::vector<int32_t> kStoriesGolden = {1, 301, 427, 309, 426, 301, 427, 309, 394, 265, 262, 415};

void expect_prefix(const std::vector<int32_t>& ids, const std::vector<int32_t>& prefix) {
  ASSERT_GE(ids.size(), prefix.size());
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(prefix.size())), prefix);
}

TEST(Tokenizer, Stories260KGoldenIdsFromModelAndBin) {
  REQUIRE_ASSET("models/stories260K/tok512.model");
  REQUIRE_ASSET("models/stories260K/tok512.bin");
  REQUIRE_ASSET("text/tinystories_val_part1.txt");
  const std::string paragraph = first_paragraph(testing::asset_path("text/tinystories_val_part1.txt"));
  ASSERT_FALSE(paragraph.empty());
  auto model = load_sentencepiece_model(testing::asset_path("models/stories260K/tok512.model"));
  auto bin = load_llama2c_tokenizer(testing::asset_path("models/stories260K/tok512.bin"), 512);
  auto bin_auto = load_tokenizer(testing::asset_path("models/stories260K/tok512.bin"));  // size from the file
  EXPECT_EQ(bin_auto->vocab_size(), 512);
  EXPECT_EQ(bin_auto->kind(), "llama2c");
  for (const Tokenizer* tk : {model.get(), bin.get(), bin_auto.get()}) {
    const auto ids = tk->encode(paragraph, /*add_special=*/true);
    expect_prefix(ids, kStoriesGolden);
    EXPECT_EQ(tk->decode(ids, /*skip_special=*/true), paragraph);
    EXPECT_EQ(tk->bos_id, std::optional<int32_t>(1));
    EXPECT_EQ(tk->eos_id, std::optional<int32_t>(2));
    EXPECT_EQ(tk->encode(paragraph), std::vector<int32_t>(ids.begin() + 1, ids.end()));
  }
  // The model's greedy continuation from BOS, as documented with the asset.
  EXPECT_EQ(model->decode(model->encode("Once upon a time, there was a little girl named Lily.", true), true),
            "Once upon a time, there was a little girl named Lily.");
}

// Without the .model beside it, the .bin's normalizer settings are inferred from its pieces.
TEST(Tokenizer, Llama2cBinAloneInfersWhitespaceHandling) {
  REQUIRE_ASSET("models/stories260K/tok512.bin");
  REQUIRE_ASSET("tokenizers/llama2-sentencepiece/tokenizer.bin");
  REQUIRE_ASSET("text/tinystories_val_part1.txt");
  const std::string dir = testing::make_temp_dir("llama2c");
  const std::string text = read_text_file(testing::asset_path("text/tinystories_val_part1.txt")).substr(0, 60000);
  for (const char* rel : {"models/stories260K/tok512", "tokenizers/llama2-sentencepiece/tokenizer"}) {
    const std::string base = testing::asset_path(rel);
    const std::string lone = dir + "/" + std::filesystem::path(base).filename().string() + ".bin";
    std::filesystem::copy_file(base + ".bin", lone, std::filesystem::copy_options::overwrite_existing);
    auto model = load_sentencepiece_model(base + ".model");
    auto bin = load_llama2c_tokenizer(lone);
    size_t start = 0, compared = 0;
    while (start < text.size()) {
      size_t end = text.find("\n\n", start);
      if (end == std::string::npos) end = text.size();
      const std::string p = " " + text.substr(start, end - start) + "  two  spaces ";
      start = end + 2;
      EXPECT_EQ(bin->encode(p, true), model->encode(p, true)) << rel << ": " << p.substr(0, 60);
      ++compared;
    }
    EXPECT_GT(compared, 100u);
  }
  // Explicit options win: llama2.c's own behaviour (no whitespace collapsing) on tok512.
  auto raw = load_llama2c_tokenizer(testing::asset_path("models/stories260K/tok512.bin"), 512,
                                    {.remove_extra_whitespaces = false});
  auto model = load_sentencepiece_model(testing::asset_path("models/stories260K/tok512.model"));
  EXPECT_NE(raw->encode("a  b "), model->encode("a  b "));
  EXPECT_EQ(raw->encode("a b"), model->encode("a b"));
}

TEST(Tokenizer, LoadTokenizerDispatch) {
  REQUIRE_ASSET("tokenizers/llama2-sentencepiece/tokenizer.model");
  REQUIRE_ASSET("tokenizers/qwen3/tokenizer.json");
  auto folder = load_tokenizer(testing::asset_path("tokenizers/qwen3"));
  EXPECT_EQ(folder->kind(), "hf-bpe");
  EXPECT_EQ(folder->vocab_size(), 151669);
  auto sp_folder = load_tokenizer(testing::asset_path("tokenizers/llama2-sentencepiece"));
  EXPECT_EQ(sp_folder->kind(), "sentencepiece-bpe");  // tokenizer.model wins over tokenizer.bin
  auto bin = load_tokenizer(testing::asset_path("tokenizers/llama2-sentencepiece/tokenizer.bin"));
  EXPECT_EQ(bin->kind(), "llama2c");
  EXPECT_EQ(bin->vocab_size(), 32000);
  EXPECT_EQ(bin->encode("Hello world", true), sp_folder->encode("Hello world", true));
  EXPECT_EQ(sp_folder->encode("Hello world", true), (std::vector<int32_t>{1, 15043, 3186}));
  EXPECT_EQ(bin->id_to_token(15043), "▁Hello");  // llama2.c's ' ' is restored to '▁'
}

TEST(Tokenizer, SpecialAndAddedTokens) {
  REQUIRE_ASSET("tokenizers/qwen3/tokenizer.json");
  auto tk = load_tokenizer_json(testing::asset_path("tokenizers/qwen3/tokenizer.json"));
  const int32_t im_start = *tk->token_to_id("<|im_start|>");
  const int32_t think = *tk->token_to_id("<think>");
  EXPECT_TRUE(tk->is_special(im_start));
  EXPECT_FALSE(tk->is_special(think));  // an added token, but not special: kept by skip_special
  const auto ids = tk->encode("<|im_start|>user\nhi<think>ok</think><|im_end|>");
  EXPECT_EQ(ids.front(), im_start);
  EXPECT_NE(std::find(ids.begin(), ids.end(), think), ids.end());
  EXPECT_EQ(tk->decode(ids), "<|im_start|>user\nhi<think>ok</think><|im_end|>");
  EXPECT_EQ(tk->decode(ids, true), "user\nhi<think>ok</think>");
  EXPECT_EQ(tk->encode("x", true), tk->encode("x"));  // Qwen adds nothing
  EXPECT_TRUE(tk->encode("").empty());
  EXPECT_THROW(tk->id_to_token(tk->vocab_size()), Error);
  EXPECT_THROW(tk->decode({tk->vocab_size() + 5}), Error);
  EXPECT_FALSE(tk->token_to_id("no such token ####").has_value());
}

TEST(Tokenizer, Llama2JsonAddsBosAndPrefixesEverySegment) {
  REQUIRE_ASSET("tokenizers/llama2/tokenizer.json");
  auto tk = load_tokenizer_json(testing::asset_path("tokenizers/llama2/tokenizer.json"));
  EXPECT_EQ(tk->encode("", true), std::vector<int32_t>{1});
  const auto ids = tk->encode("Hello world", true);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(tk->decode(ids), "<s> Hello world");  // HF's Strip removes only the first decoded space
  EXPECT_EQ(tk->decode(ids, true), "Hello world");
}

TEST(Tokenizer, InvalidUtf8InputIsRepairedLikeLossyDecoding) {
  REQUIRE_ASSET("tokenizers/llama3/tokenizer.json");
  auto tk = load_tokenizer_json(testing::asset_path("tokenizers/llama3/tokenizer.json"));
  // Each maximal invalid subsequence becomes one U+FFFD: \xff; \xe4\xb8 (truncated 3-byte sequence);
  // \xed\xa0 is a surrogate lead (two separate errors).
  EXPECT_EQ(tk->encode("ab\xff" "cd\xe4\xb8 x\xed\xa0\x80y"),
            tk->encode("ab\xEF\xBF\xBD" "cd\xEF\xBF\xBD x\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDy"));
  EXPECT_EQ(tk->decode(tk->encode("ab\xff")), "ab\xEF\xBF\xBD");
}

TEST(Tokenizer, ByteLevelDecodeOfPartialCharacters) {
  REQUIRE_ASSET("tokenizers/llama3/tokenizer.json");
  auto tk = load_tokenizer_json(testing::asset_path("tokenizers/llama3/tokenizer.json"));
  // Byte tokens: 'ä' is byte 0xE4 in GPT-2's byte alphabet, '¸' 0xB8, 'Ģ' 0x80 ... take them by spelling.
  const int32_t e4 = *tk->token_to_id("\xC3\xA4");   // 'ä' -> byte 0xE4
  const int32_t b8 = *tk->token_to_id("\xC2\xB8");   // '¸' -> byte 0xB8
  const int32_t x80 = *tk->token_to_id("\xC4\xA2");  // 'Ģ' -> byte 0x80
  EXPECT_EQ(tk->decode({e4, b8, x80}), "\xE4\xB8\x80");          // 一
  EXPECT_EQ(tk->decode({e4, b8}), "\xEF\xBF\xBD");               // one U+FFFD for the truncated sequence
  EXPECT_EQ(tk->decode({x80, e4}), "\xEF\xBF\xBD\xEF\xBF\xBD");  // stray continuation, truncated lead
  // Every single id decodes without throwing, and whole texts round-trip.
  for (int32_t id = 0; id < tk->vocab_size(); id += 97) (void)tk->decode({id});
  const std::string text = "Tokenizers 🤗: 東京 café naïve — ∑ x² \t\n done.";
  EXPECT_EQ(tk->decode(tk->encode(text)), text);
}

// Arbitrary bytes (mostly invalid UTF-8) never break encoding; byte-level decoding gives back the repaired
// text; SentencePiece-family output is made of valid ids.
TEST(Tokenizer, RandomBytesEncodeSafely) {
  REQUIRE_ASSET("tokenizers/llama3/tokenizer.json");
  REQUIRE_ASSET("tokenizers/llama2/tokenizer.json");
  REQUIRE_ASSET("models/stories260K/tok512.model");
  auto llama3 = load_tokenizer_json(testing::asset_path("tokenizers/llama3/tokenizer.json"));
  auto llama2 = load_tokenizer_json(testing::asset_path("tokenizers/llama2/tokenizer.json"));
  auto tok512 = load_sentencepiece_model(testing::asset_path("models/stories260K/tok512.model"));
  uint64_t state = 0x9E3779B97F4A7C15ULL;
  auto next = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  const std::string alphabet = " \n\ta<s>|'\xE2\x96\x81\xC3\xA9\xF0\x9F\x98\x80\xFF\x80\xED\xA0";
  for (int round = 0; round < 300; ++round) {
    std::string text;
    const size_t n = next() % 64;
    for (size_t i = 0; i < n; ++i)
      text.push_back(next() % 3 == 0 ? static_cast<char>(next() & 0xFF) : alphabet[next() % alphabet.size()]);
    const auto a = llama3->encode(text, true);
    const std::string back = llama3->decode(a);
    // The repaired text: what the tokenizer actually saw.
    std::string repaired;
    {
      const auto via = llama3->encode(back);
      EXPECT_EQ(via, llama3->encode(text)) << round;
      repaired = llama3->decode(via);
    }
    EXPECT_EQ(back, repaired) << round;
    for (const Tokenizer* tk : {llama2.get(), tok512.get()}) {
      const auto ids = tk->encode(text, true);
      for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < tk->vocab_size());
      EXPECT_NO_THROW(tk->decode(ids));
    }
  }
}

TEST(Tokenizer, SentencePieceDecodeRules) {
  REQUIRE_ASSET("tokenizers/llama2-sentencepiece/tokenizer.model");
  auto tk = load_sentencepiece_model(testing::asset_path("tokenizers/llama2-sentencepiece/tokenizer.model"));
  // Byte pieces: an invalid byte becomes U+FFFD each (sentencepiece), valid neighbours are kept.
  const int32_t b41 = *tk->token_to_id("<0x41>"), be4 = *tk->token_to_id("<0xE4>");
  EXPECT_EQ(tk->decode({b41, be4, b41}), "A\xEF\xBF\xBD" "A");
  // The dummy-prefix space is dropped only at the start; control tokens are invisible unless asked for.
  const auto ids = tk->encode("Hello world", true);
  EXPECT_EQ(tk->decode(ids, true), "Hello world");
  EXPECT_EQ(tk->decode(ids, false), "<s>Hello world");
  EXPECT_EQ(tk->decode({0}), " \xE2\x81\x87 ");  // <unk>
  // Control strings written in the text are recognised, each chunk getting its own dummy prefix.
  EXPECT_EQ(tk->encode("a</s>b"), (std::vector<int32_t>{263, 2, 289}));
}

TEST(Tokenizer, SeveralInstancesShareAThread) {
  REQUIRE_ASSET("models/stories260K/tok512.model");
  std::vector<std::unique_ptr<Tokenizer>> tks;
  for (int i = 0; i < 7; ++i) tks.push_back(load_sentencepiece_model(testing::asset_path("models/stories260K/tok512.model")));
  const std::string text = "The little dog ran to the park, and the cat sat on the mat. Then it rained.";
  const auto expected = tks[0]->encode(text);
  for (int round = 0; round < 3; ++round)
    for (auto& tk : tks) EXPECT_EQ(tk->encode(text), expected);
  tks.erase(tks.begin() + 2, tks.end());
  auto fresh = load_sentencepiece_model(testing::asset_path("models/stories260K/tok512.model"));
  EXPECT_EQ(fresh->encode(text), expected);
  std::thread other([&] { EXPECT_EQ(fresh->encode(text), expected); });
  other.join();
}

// ------------------------------------------------------------------------------- unsupported input --
void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string expect_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no mlaforge::Error thrown";
  return "";
}

// Protobuf helpers for a hand-made SentencePiece model.
std::string varint(uint64_t v) {
  std::string out;
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
  return out;
}
std::string field_bytes(int field, const std::string& bytes) {
  return varint(static_cast<uint64_t>(field) << 3 | 2) + varint(bytes.size()) + bytes;
}
std::string field_varint(int field, uint64_t v) { return varint(static_cast<uint64_t>(field) << 3) + varint(v); }
std::string sp_piece(const std::string& piece, int type) {
  return field_bytes(1, field_bytes(1, piece) + std::string("\x15\x00\x00\x00\x00", 5) + field_varint(3, type));
}

TEST(Tokenizer, UnsupportedFilesFailClearly) {
  const std::string dir = testing::make_temp_dir("tokenizer");
  EXPECT_NE(expect_error([&] { load_tokenizer(dir + "/missing.json"); }).find("missing.json"), std::string::npos);
  EXPECT_NE(expect_error([&] { load_tokenizer(dir); }).find("no tokenizer.json"), std::string::npos);

  write_file(dir + "/wordpiece.json", R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})");
  EXPECT_NE(expect_error([&] { load_tokenizer_json(dir + "/wordpiece.json"); }).find("WordPiece"),
            std::string::npos);
  write_file(dir + "/bad.json", "{not json");
  EXPECT_NE(expect_error([&] { load_tokenizer_json(dir + "/bad.json"); }).find("not valid JSON"), std::string::npos);
  write_file(dir + "/pre.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                   "pre_tokenizer": {"type": "BertPreTokenizer"}})");
  EXPECT_NE(expect_error([&] { load_tokenizer_json(dir + "/pre.json"); }).find("BertPreTokenizer"),
            std::string::npos);
  write_file(dir + "/merge.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})");
  EXPECT_NE(expect_error([&] { load_tokenizer_json(dir + "/merge.json"); }).find("'ab' is not in the vocabulary"),
            std::string::npos);

  const std::string pieces = sp_piece("<unk>", 2) + sp_piece("<s>", 3) + sp_piece("</s>", 3) + sp_piece("a", 1);
  write_file(dir + "/unigram.model", pieces + field_bytes(2, field_varint(3, 1)));
  EXPECT_NE(expect_error([&] { load_sentencepiece_model(dir + "/unigram.model"); }).find("UNIGRAM"),
            std::string::npos);
  write_file(dir + "/nfkc.model",
             pieces + field_bytes(2, field_varint(3, 2)) + field_bytes(3, field_bytes(1, "nmt_nfkc") + field_bytes(2, "xyz")));
  EXPECT_NE(expect_error([&] { load_sentencepiece_model(dir + "/nfkc.model"); }).find("nmt_nfkc"), std::string::npos);
  write_file(dir + "/truncated.model", pieces.substr(0, pieces.size() - 2));
  EXPECT_NE(expect_error([&] { load_sentencepiece_model(dir + "/truncated.model"); }).find("truncated"),
            std::string::npos);

  // A valid hand-made BPE model: merges by score, dummy prefix, remove_extra_whitespaces default (true).
  const std::string bpe = sp_piece("<unk>", 2) + sp_piece("<s>", 3) + sp_piece("</s>", 3) + sp_piece("\xE2\x96\x81", 1) +
                          sp_piece("a", 1) + sp_piece("b", 1) + sp_piece("ab", 1) + sp_piece("\xE2\x96\x81" "ab", 1);
  write_file(dir + "/tiny.model", bpe + field_bytes(2, field_varint(3, 2)));
  auto tiny = load_sentencepiece_model(dir + "/tiny.model");
  EXPECT_EQ(tiny->encode("  ab  ab ", true), (std::vector<int32_t>{1, 7, 7}));
  EXPECT_EQ(tiny->encode("abc"), (std::vector<int32_t>{7, 0}));  // 'c' has no piece and no byte fallback

  GgufVocab v;
  v.model = "bert";
  v.tokens = {"a"};
  EXPECT_NE(expect_error([&] { tokenizer_from_gguf_vocab(v); }).find("bert"), std::string::npos);
  v.model = "gpt2";
  v.pre = "mystery";
  EXPECT_NE(expect_error([&] { tokenizer_from_gguf_vocab(v); }).find("mystery"), std::string::npos);
  write_file(dir + "/short.bin", std::string("\x07\x00\x00\x00", 4));
  EXPECT_NE(expect_error([&] { load_llama2c_tokenizer(dir + "/short.bin", 10); }).find("truncated"),
            std::string::npos);
}

}  // namespace
}  // namespace mlaforge
