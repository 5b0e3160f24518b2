// Token cache (data/token_cache.h): the cached samples are exactly SampleBuilder's, a second open reuses the
// folder without tokenising, every key input invalidates, the files do not depend on the thread count, and
// corrupt or truncated folders are detected (and rebuilt on request). Uses a tiny byte-level tokenizer
// written by the test; one test also runs on the real Qwen3 tokenizer when the asset is there.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <thread>

#include "core/error.h"
#include "core/mmap_file.h"
#include "data/token_cache.h"
#include "tests/core/data_test_util.h"
#include "tests/support/test_support.h"

namespace mlaforge {
namespace {

namespace fs = std::filesystem;

std::string file_bytes(const std::string& path) { return read_text_file(path); }

class TokenCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::make_temp_dir("tokcache");
    data_ = dir_ + "/train.jsonl";
    testing::write_conversations(data_, 120, 7);
    tokenizer_file_ = testing::write_tiny_tokenizer(dir_ + "/tok");
    tokenizer_ = load_tokenizer(tokenizer_file_);
  }

  TokenCacheOptions options(const std::string& cache = "cache") const {
    TokenCacheOptions o;
    o.data = {data_};
    o.cache_dir = dir_ + "/" + cache;
    o.tokenizer_file = tokenizer_file_;
    o.sample.max_seq_len = 256;
    o.num_threads = 2;
    return o;
  }

  std::string dir_, data_, tokenizer_file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ChatTemplate chatml_ = ChatTemplate::builtin("chatml");
};

// Every cached sample equals what SampleBuilder::build_all makes of read_examples, in order; the counts in
// meta.json are SampleBuilder's statistics.
TEST_F(TokenCacheTest, SamplesEqualSampleBuilder) {
  const TokenCacheOptions o = options();
  const TokenCache cache = TokenCache::open_or_build(o, *tokenizer_, chatml_);
  EXPECT_TRUE(cache.built());
  EXPECT_EQ(fs::path(cache.folder()).filename().string(), cache.key());
  EXPECT_EQ(cache.key().size(), 32u);

  const SampleBuilder builder(*tokenizer_, chatml_, o.sample);
  SampleStats expected_stats;
  const std::vector<TokenizedSample> expected = builder.build_all(read_examples(data_), expected_stats);
  ASSERT_EQ(cache.size(), static_cast<int64_t>(expected.size()));
  int64_t tokens = 0, trained = 0, longest = 0;
  for (int64_t i = 0; i < cache.size(); ++i) {
    const TokenizedSample s = cache.sample(i);
    ASSERT_EQ(s.ids, expected[static_cast<size_t>(i)].ids) << "sample " << i;
    ASSERT_EQ(s.loss_mask, expected[static_cast<size_t>(i)].loss_mask) << "sample " << i;
    EXPECT_EQ(cache.trained_tokens(i), expected[static_cast<size_t>(i)].trained_tokens());
    tokens += cache.length(i);
    trained += cache.trained_tokens(i);
    longest = std::max(longest, cache.length(i));
  }
  EXPECT_EQ(cache.num_tokens(), tokens);
  EXPECT_EQ(cache.total_trained_tokens(), trained);
  EXPECT_EQ(cache.max_sample_tokens(), longest);
  EXPECT_LE(longest, 256);
  const SampleStats& st = cache.stats();
  EXPECT_EQ(st.examples, 120);
  EXPECT_EQ(st.samples, expected_stats.samples);
  EXPECT_EQ(st.tokens, tokens);
  EXPECT_EQ(st.trained_tokens, trained);
  EXPECT_EQ(st.truncated_turns, expected_stats.truncated_turns);
  EXPECT_EQ(st.dropped_too_long, expected_stats.dropped_too_long);
  EXPECT_EQ(st.samples + st.dropped_too_long + st.dropped_no_trained + st.invalid, st.examples);
  // The generated data exercises truncation: some conversations lose their second exchange, some are dropped.
  EXPECT_GT(st.truncated_turns + st.dropped_too_long, 0);
  EXPECT_EQ(cache.dataset_stats().examples, 120u);
  EXPECT_EQ(cache.pad_id(), 258);  // <|endoftext|> from the tokenizer_config.json
  // meta.json records the key's inputs readably.
  const nlohmann::json& in = cache.meta()["inputs"];
  EXPECT_EQ(in["template"]["name"], "chatml");
  EXPECT_EQ(in["sample"]["max_seq_len"], 256);
  EXPECT_EQ(in["files"][0]["path"], fs::weakly_canonical(data_).string());
  EXPECT_EQ(in["files"][0]["size"], static_cast<int64_t>(fs::file_size(data_)));
  EXPECT_TRUE(in["files"][0].contains("mtime_ns"));
  EXPECT_EQ(TokenCache::key_of(in), cache.key());
  // On disk: the sizes the header promises.
  EXPECT_EQ(fs::file_size(cache.folder() + "/tokens.bin"), static_cast<uintmax_t>(4 * tokens));
  EXPECT_EQ(fs::file_size(cache.folder() + "/mask.bin"), static_cast<uintmax_t>(tokens));
  EXPECT_EQ(fs::file_size(cache.folder() + "/index.bin"), static_cast<uintmax_t>(8 * (cache.size() + 1)));
  cache.verify_checksums();
  // Nothing but the finished folder (and its empty lock file) is left in the cache dir.
  std::set<std::string> entries;
  for (const auto& e : fs::directory_iterator(o.cache_dir)) entries.insert(e.path().filename().string());
  EXPECT_EQ(entries, (std::set<std::string>{cache.key(), cache.key() + ".lock"}));
}

// The second open finds the folder and tokenises nothing: its only encode() calls are the tokenizer
// fingerprint's probes, exactly as many as computing the key alone takes.
TEST_F(TokenCacheTest, SecondOpenReusesWithoutTokenising) {
  const TokenCacheOptions o = options();
  testing::CountingTokenizer counting(*tokenizer_);
  const TokenCache first = TokenCache::open_or_build(o, counting, chatml_);
  const int64_t build_encodes = counting.encodes.exchange(0);
  (void)TokenCache::key_inputs(o, counting, chatml_);
  const int64_t key_encodes = counting.encodes.exchange(0);
  EXPECT_GT(build_encodes, 120 + key_encodes);  // at least one encode per example
  EXPECT_GT(key_encodes, 0);

  const TokenCache second = TokenCache::open_or_build(o, counting, chatml_);
  EXPECT_FALSE(second.built());
  EXPECT_EQ(counting.encodes.load(), key_encodes);
  EXPECT_EQ(second.folder(), first.folder());
  EXPECT_EQ(second.size(), first.size());
  EXPECT_EQ(second.num_tokens(), first.num_tokens());
  // The CountingTokenizer's fingerprint equals the plain tokenizer's: the key is about behaviour.
  EXPECT_EQ(tokenizer_fingerprint(counting), tokenizer_fingerprint(*tokenizer_));
}

// Each input of the key changes it; recomputing with the same inputs does not.
TEST_F(TokenCacheTest, KeyChangesWithEveryInput) {
  const auto key = [&](const TokenCacheOptions& o, const Tokenizer& t, const ChatTemplate& c) {
    return TokenCache::key_of(TokenCache::key_inputs(o, t, c));
  };
  const TokenCacheOptions base = options();
  const std::string k0 = key(base, *tokenizer_, chatml_);
  EXPECT_EQ(key(base, *tokenizer_, chatml_), k0);
  {
    TokenCacheOptions o = base;
    o.num_threads = 7;         // not an input: output does not depend on it
    o.cache_dir = dir_ + "/elsewhere";
    o.sample.verify_tokenization = true;
    EXPECT_EQ(key(o, *tokenizer_, chatml_), k0);
  }
  std::vector<std::pair<std::string, std::string>> keys;
  const auto add = [&](const std::string& what, const std::string& k) {
    EXPECT_NE(k, k0) << what;
    for (const auto& [other, ok] : keys) EXPECT_NE(k, ok) << what << " vs " << other;
    keys.emplace_back(what, k);
  };
  {
    TokenCacheOptions o = base;
    o.sample.max_seq_len = 512;
    add("max_seq_len", key(o, *tokenizer_, chatml_));
  }
  {
    TokenCacheOptions o = base;
    o.sample.truncate_inside_turn = true;
    add("truncate_inside_turn", key(o, *tokenizer_, chatml_));
  }
  add("template", key(base, *tokenizer_, ChatTemplate::builtin("qwen3")));
  add("default system prompt",
      key(base, *tokenizer_, ChatTemplate(ChatFormat::chatml, "chatml", "You are a helpful assistant.")));
  {
    TokenCacheOptions o = base;
    o.sample.render.think = ThinkPolicy::strip_all;
    add("think policy", key(o, *tokenizer_, chatml_));
  }
  {
    TokenCacheOptions o = base;
    o.sample.render.trained_roles = {"assistant", "user"};
    add("trained roles", key(o, *tokenizer_, chatml_));
  }
  {
    TokenCacheOptions o = base;
    o.schema.system_prompt = "Be brief.";
    add("schema", key(o, *tokenizer_, chatml_));
  }
  {
    // Another tokenizer: the same bytes plus one merge (also as an object without a file).
    const std::string other_file = testing::write_tiny_tokenizer(dir_ + "/tok2", {"t h"});
    const auto other = load_tokenizer(other_file);
    EXPECT_NE(tokenizer_fingerprint(*other), tokenizer_fingerprint(*tokenizer_));
    TokenCacheOptions o = base;
    o.tokenizer_file = other_file;
    add("tokenizer", key(o, *other, chatml_));
    o.tokenizer_file.clear();
    add("tokenizer object only", key(o, *other, chatml_));
  }
  {
    // Same tokenizer object, different tokenizer_config.json bytes beside the file.
    const std::string copy = testing::write_tiny_tokenizer(dir_ + "/tok3");
    std::ofstream(dir_ + "/tok3/tokenizer_config.json") << R"({"eos_token": "<|endoftext|>"})";
    TokenCacheOptions o = base;
    o.tokenizer_file = copy;
    add("tokenizer_config.json", key(o, *tokenizer_, chatml_));
  }
  {
    // The data file rewritten with the same bytes: new mtime, new key; with hash_data_contents the key
    // follows the bytes instead.
    TokenCacheOptions hashed = base;
    hashed.hash_data_contents = true;
    const std::string kh = key(hashed, *tokenizer_, chatml_);
    add("hash_data_contents", kh);
    const std::string bytes = file_bytes(data_);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::ofstream(data_, std::ios::binary | std::ios::trunc) << bytes;
    add("data mtime", key(base, *tokenizer_, chatml_));
    EXPECT_EQ(key(hashed, *tokenizer_, chatml_), kh);
    std::ofstream(data_, std::ios::app) << "\n";  // one more (blank) line: other bytes
    EXPECT_NE(key(hashed, *tokenizer_, chatml_), kh);
  }
  EXPECT_EQ(keys.size(), 12u);
}

// 1 and 4 threads (and small chunks) write byte-identical files: output order never depends on scheduling.
TEST_F(TokenCacheTest, FilesDoNotDependOnThreadCount) {
  TokenCacheOptions one = options("one");
  one.num_threads = 1;
  TokenCacheOptions four = options("four");
  four.num_threads = 4;
  four.chunk_examples = 7;
  const TokenCache a = TokenCache::open_or_build(one, *tokenizer_, chatml_);
  const TokenCache b = TokenCache::open_or_build(four, *tokenizer_, chatml_);
  ASSERT_TRUE(a.built() && b.built());
  EXPECT_EQ(a.key(), b.key());
  for (const char* f : {"tokens.bin", "mask.bin", "index.bin"}) {
    const std::string x = file_bytes(a.folder() + "/" + f), y = file_bytes(b.folder() + "/" + f);
    EXPECT_GT(x.size(), 0u);
    EXPECT_TRUE(x == y) << f << " differs between 1 and 4 threads";
  }
  EXPECT_EQ(a.meta()["sample_stats"], b.meta()["sample_stats"]);
  EXPECT_EQ(a.meta()["checksums"], b.meta()["checksums"]);
}

// Invalid examples: the error names the FIRST invalid row whatever the thread count; skip_invalid counts them.
TEST_F(TokenCacheTest, InvalidExamplesFailOrAreSkippedDeterministically) {
  const std::string bad = dir_ + "/bad.jsonl";
  testing::write_conversations(bad, 60, 3, {11, 40});
  const ChatTemplate mistral = ChatTemplate::builtin("mistral");  // needs alternating user/assistant turns
  for (int threads : {1, 4}) {
    TokenCacheOptions o = options("bad" + std::to_string(threads));
    o.data = {bad};
    o.num_threads = threads;
    o.chunk_examples = 16;
    try {
      (void)TokenCache::open_or_build(o, *tokenizer_, mistral);
      ADD_FAILURE() << "invalid examples accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("bad.jsonl:12"), std::string::npos) << e.what();
    }
    for (const auto& e : fs::directory_iterator(o.cache_dir))
      EXPECT_EQ(e.path().extension(), ".lock") << "a failed build left " << e.path() << " behind";
    o.skip_invalid = true;
    const TokenCache c = TokenCache::open_or_build(o, *tokenizer_, mistral);
    EXPECT_EQ(c.stats().invalid, 2);
    EXPECT_NE(c.stats().first_invalid.find("bad.jsonl:12"), std::string::npos) << c.stats().first_invalid;
    EXPECT_EQ(c.stats().examples, 60);
    EXPECT_EQ(c.stats().samples + c.stats().dropped_too_long + c.stats().dropped_no_trained + 2, 60);
  }
}

// Truncated, padded, reordered and bit-flipped files; broken metadata.
TEST_F(TokenCacheTest, DetectsCorruptionAndRebuildsOnRequest) {
  TokenCacheOptions o = options();
  std::string folder;
  std::string tokens_before;
  int64_t samples = 0;
  {
    const TokenCache c = TokenCache::open_or_build(o, *tokenizer_, chatml_);
    folder = c.folder();
    samples = c.size();
    tokens_before = file_bytes(folder + "/tokens.bin");
  }
  const auto expect_error = [&](const std::string& needle) {
    try {
      (void)TokenCache::open(folder);
      ADD_FAILURE() << "corruption not detected (" << needle << ")";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  // Truncated tokens.bin: named, with sizes.
  fs::resize_file(folder + "/tokens.bin", tokens_before.size() - 4);
  expect_error("tokens.bin: " + std::to_string(tokens_before.size() - 4) + " bytes, expected " +
               std::to_string(tokens_before.size()));
  try {
    (void)TokenCache::open_or_build(o, *tokenizer_, chatml_);
    ADD_FAILURE() << "open_or_build accepted a truncated cache";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rebuild_if_invalid"), std::string::npos) << e.what();
  }
  o.rebuild_if_invalid = true;
  {
    const TokenCache c = TokenCache::open_or_build(o, *tokenizer_, chatml_);
    EXPECT_TRUE(c.built());
    EXPECT_EQ(c.folder(), folder);
    EXPECT_EQ(c.size(), samples);
    EXPECT_TRUE(file_bytes(folder + "/tokens.bin") == tokens_before);
  }
  // An extra byte in mask.bin.
  std::ofstream(folder + "/mask.bin", std::ios::app) << 'x';
  expect_error("mask.bin: ");
  (void)TokenCache::open_or_build(o, *tokenizer_, chatml_);
  // index.bin of the right size but with two offsets swapped.
  {
    std::string index = file_bytes(folder + "/index.bin");
    std::string a = index.substr(8, 8), b = index.substr(16, 8);
    index.replace(8, 8, b).replace(16, 8, a);
    std::ofstream(folder + "/index.bin", std::ios::binary | std::ios::trunc) << index;
    expect_error("index.bin: sample ");
  }
  (void)TokenCache::open_or_build(o, *tokenizer_, chatml_);
  // A flipped token: sizes fine, so open() succeeds; verify_checksums() finds it.
  {
    std::string tokens = file_bytes(folder + "/tokens.bin");
    tokens[100] ^= 1;
    std::ofstream(folder + "/tokens.bin", std::ios::binary | std::ios::trunc) << tokens;
    const TokenCache c = TokenCache::open(folder);
    try {
      c.verify_checksums();
      ADD_FAILURE() << "flipped bit not detected";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("tokens.bin: checksum"), std::string::npos) << e.what();
    }
  }
  // meta.json that is not JSON; then missing.
  std::ofstream(folder + "/meta.json", std::ios::trunc) << "{\"format_version\": 1, ";
  expect_error("meta.json: invalid token cache metadata");
  fs::remove(folder + "/meta.json");
  expect_error("meta.json: missing");
  const TokenCache c = TokenCache::open_or_build(o, *tokenizer_, chatml_);
  EXPECT_TRUE(c.built());
  c.verify_checksums();
}

// Three threads (as three ranks would) open the same key at once: one builds, the others wait for it and
// reuse its folder.
TEST_F(TokenCacheTest, ConcurrentOpensBuildOnce) {
  const TokenCacheOptions o = options();
  std::vector<std::thread> threads;
  std::vector<int> built(3, -1);
  std::vector<std::string> folders(3);
  for (size_t t = 0; t < 3; ++t)
    threads.emplace_back([&, t] {
      const TokenCache c = TokenCache::open_or_build(o, *tokenizer_, chatml_);
      built[t] = c.built() ? 1 : 0;
      folders[t] = c.folder();
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(built[0] + built[1] + built[2], 1);
  EXPECT_EQ(folders[0], folders[1]);
  EXPECT_EQ(folders[1], folders[2]);
  for (const auto& e : fs::directory_iterator(o.cache_dir))
    EXPECT_EQ(e.path().string().find(".tmp-"), std::string::npos) << e.path();
}

// A temporary folder of an interrupted build is never mistaken for a cache.
TEST_F(TokenCacheTest, UnfinishedFolderIsNotACache) {
  const TokenCacheOptions o = options();
  const std::string k = TokenCache::key_of(TokenCache::key_inputs(o, *tokenizer_, chatml_));
  fs::create_directories(o.cache_dir + "/" + k + ".tmp-1-deadbeef");
  std::ofstream(o.cache_dir + "/" + k + ".tmp-1-deadbeef/tokens.bin") << "partial";
  const TokenCache c = TokenCache::open_or_build(o, *tokenizer_, chatml_);
  EXPECT_TRUE(c.built());
  EXPECT_EQ(fs::path(c.folder()).filename().string(), k);
}

// The real Qwen3 vocabulary with its own template: the cache still equals SampleBuilder sample for sample.
TEST(TokenCacheAssets, Qwen3TokenizerMatchesSampleBuilder) {
  REQUIRE_ASSET("tokenizers/qwen3/tokenizer.json");
  const std::string dir = testing::make_temp_dir("tokcache-qwen3");
  testing::write_conversations(dir + "/d.jsonl", 40, 11);
  const std::string tok_path = testing::asset_path("tokenizers/qwen3/tokenizer.json");
  const auto tok = load_tokenizer(tok_path);
  TokenCacheOptions o;
  o.data = {dir + "/d.jsonl"};
  o.cache_dir = dir + "/cache";
  o.tokenizer_file = tok_path;
  o.sample.max_seq_len = 64;
  o.num_threads = 2;
  const ChatTemplate qwen3 = ChatTemplate::builtin("qwen3");
  const TokenCache c = TokenCache::open_or_build(o, *tok, qwen3);
  SampleStats st;
  const auto expected = SampleBuilder(*tok, qwen3, o.sample).build_all(read_examples(dir + "/d.jsonl"), st);
  ASSERT_EQ(c.size(), static_cast<int64_t>(expected.size()));
  for (int64_t i = 0; i < c.size(); ++i) EXPECT_EQ(c.sample(i).ids, expected[static_cast<size_t>(i)].ids);
  EXPECT_EQ(c.meta()["inputs"]["tokenizer"]["files"].size(), 2u);  // tokenizer.json + tokenizer_config.json
  EXPECT_EQ(c.pad_id(), *tok->pad_id);
}

}  // namespace
}  // namespace mlaforge
