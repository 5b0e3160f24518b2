// Data loader (data/data_loader.h): the documented shuffle, determinism, every sample exactly once per
// epoch, DP ranks together equal to one process, resume (mid-epoch, at epoch boundaries, with another DP
// size), loss-token counts, fixed shapes, the evaluation loader; and a realistic run on the Sky-T1 reasoning
// data with the Qwen3 vocabulary and the DeepSeek-R1 template that prints what the cache and packing do.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <set>

#include "core/error.h"
#include "core/mmap_file.h"
#include "data/data_loader.h"
#include "tests/core/data_test_util.h"
#include "tests/support/test_support.h"

namespace mlaforge {
namespace {

namespace fs = std::filesystem;

// One cache for the whole suite: 200 generated conversations, tiny byte-level tokenizer, max_seq_len 256.
class DataLoaderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = testing::make_temp_dir("loader");
    testing::write_conversations(dir + "/train.jsonl", 200, 5);
    const std::string tok_file = testing::write_tiny_tokenizer(dir + "/tok");
    tokenizer_ = load_tokenizer(tok_file).release();
    TokenCacheOptions o;
    o.data = {dir + "/train.jsonl"};
    o.cache_dir = dir + "/cache";
    o.tokenizer_file = tok_file;
    o.sample.max_seq_len = 256;
    o.num_threads = 2;
    cache_ = new TokenCache(TokenCache::open_or_build(o, *tokenizer_, ChatTemplate::builtin("chatml")));
  }
  static void TearDownTestSuite() {
    delete cache_;
    delete tokenizer_;
  }
  static const TokenCache& cache() { return *cache_; }
  static int64_t n() { return cache_->size(); }

  static DataLoaderOptions opts(bool packing, int64_t mb, int64_t ga, int64_t dp = 1, int64_t rank = 0) {
    DataLoaderOptions o;
    o.packing = packing;
    o.micro_batch = mb;
    o.grad_accum = ga;
    o.dp_size = dp;
    o.dp_rank = rank;
    o.seed = 1234;
    return o;
  }

  static std::vector<LoaderStep> run(DataLoader& loader, int64_t max_steps = 1 << 30) {
    std::vector<LoaderStep> out;
    while (static_cast<int64_t>(out.size()) < max_steps) {
      auto s = loader.next_step();
      if (!s) break;
      out.push_back(std::move(*s));
    }
    return out;
  }

  static TokenCache* cache_;
  static Tokenizer* tokenizer_;
};
TokenCache* DataLoaderTest::cache_ = nullptr;
Tokenizer* DataLoaderTest::tokenizer_ = nullptr;

void expect_same_batch(const PackedBatch& a, const PackedBatch& b, const std::string& where) {
  EXPECT_EQ(a.rows, b.rows) << where;
  EXPECT_EQ(a.seq_len, b.seq_len) << where;
  EXPECT_EQ(a.input_ids, b.input_ids) << where;
  EXPECT_EQ(a.target_ids, b.target_ids) << where;
  EXPECT_EQ(a.position_ids, b.position_ids) << where;
  EXPECT_EQ(a.segment_ids, b.segment_ids) << where;
  EXPECT_EQ(a.documents, b.documents) << where;
  EXPECT_EQ(a.trained_tokens, b.trained_tokens) << where;
  EXPECT_EQ(a.pad_tokens, b.pad_tokens) << where;
}

void expect_same_steps(const std::vector<LoaderStep>& a, const std::vector<LoaderStep>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t s = 0; s < a.size(); ++s) {
    ASSERT_EQ(a[s].micro_batches.size(), b[s].micro_batches.size());
    for (size_t m = 0; m < a[s].micro_batches.size(); ++m)
      expect_same_batch(a[s].micro_batches[m], b[s].micro_batches[m],
                        what + " step " + std::to_string(s) + " micro " + std::to_string(m));
    EXPECT_EQ(a[s].global_trained_tokens, b[s].global_trained_tokens) << what << " step " << s;
    EXPECT_EQ(a[s].start, b[s].start) << what << " step " << s;
  }
}

std::vector<int32_t> documents(const LoaderStep& s) {
  std::vector<int32_t> out;
  for (const PackedBatch& b : s.micro_batches) out.insert(out.end(), b.documents.begin(), b.documents.end());
  return out;
}

// The documented splitmix64 + Lemire + Fisher-Yates shuffle, against values computed by an independent
// Python transcription of the header's description.
TEST(Shuffle, MatchesTheDocumentedAlgorithm) {
  EXPECT_EQ(shuffled_order(10, 42, 0), (std::vector<int32_t>{0, 3, 5, 7, 9, 8, 2, 1, 4, 6}));
  EXPECT_EQ(shuffled_order(10, 42, 1), (std::vector<int32_t>{6, 5, 1, 4, 7, 3, 2, 9, 8, 0}));
  EXPECT_EQ(shuffled_order(10, 0, 0), (std::vector<int32_t>{4, 9, 2, 5, 1, 7, 6, 0, 3, 8}));
  const std::vector<int32_t> big = shuffled_order(1000, 7, 3);
  EXPECT_EQ(std::vector<int32_t>(big.begin(), big.begin() + 12),
            (std::vector<int32_t>{260, 4, 5, 391, 687, 520, 642, 38, 446, 713, 989, 878}));
  std::vector<int32_t> sorted = big;
  std::sort(sorted.begin(), sorted.end());
  for (int32_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[static_cast<size_t>(i)], i);
  EXPECT_EQ(shuffled_order(1, 5, 5), (std::vector<int32_t>{0}));
}

TEST_F(DataLoaderTest, SameSeedSameBatchesOtherSeedOtherOrder) {
  for (bool packing : {true, false}) {
    DataLoaderOptions o = opts(packing, 2, 3);
    o.epochs = 2;
    DataLoader a(cache(), o), b(cache(), o);
    const auto sa = run(a), sb = run(b);
    EXPECT_GT(sa.size(), 4u);
    expect_same_steps(sa, sb, packing ? "packed" : "padded");
    DataLoaderOptions other = o;
    other.seed = 99;
    DataLoader c(cache(), other);
    EXPECT_NE(documents(*c.next_step()), documents(sa[0]));
    EXPECT_NE(a.epoch_order(0), a.epoch_order(1));
    EXPECT_NE(a.epoch_order(0), c.epoch_order(0));
  }
}

// Every sample once per epoch; each step consumes a contiguous run of the epoch's order; the step count is
// steps_in_epoch; the order changes between epochs; the stream stops after `epochs`.
TEST_F(DataLoaderTest, EachSampleExactlyOncePerEpoch) {
  for (bool packing : {true, false}) {
    DataLoaderOptions o = opts(packing, 2, 3);
    o.epochs = 3;
    DataLoader loader(cache(), o);
    std::vector<std::vector<int32_t>> seen(3);
    std::vector<int64_t> steps(3, 0);
    const auto all = run(loader);
    for (const LoaderStep& s : all) {
      const int64_t e = s.start.epoch;
      const std::vector<int32_t> order = loader.epoch_order(e);
      std::vector<int32_t> docs = documents(s);
      ASSERT_EQ(static_cast<int64_t>(docs.size()), s.global_samples);
      std::vector<int32_t> run_of_order(order.begin() + s.start.epoch_sample,
                                        order.begin() + s.start.epoch_sample + s.global_samples);
      if (!packing) EXPECT_EQ(docs, run_of_order);  // one sample per row, rows in stream order
      std::sort(docs.begin(), docs.end());
      std::sort(run_of_order.begin(), run_of_order.end());
      EXPECT_EQ(docs, run_of_order) << "a step is not a contiguous run of the epoch order";
      seen[static_cast<size_t>(e)].insert(seen[static_cast<size_t>(e)].end(), docs.begin(), docs.end());
      ++steps[static_cast<size_t>(e)];
      EXPECT_EQ(s.epoch_end, s.start.epoch_sample + s.global_samples == n());
    }
    for (int64_t e = 0; e < 3; ++e) {
      std::vector<int32_t> v = seen[static_cast<size_t>(e)];
      std::sort(v.begin(), v.end());
      std::vector<int32_t> expected(static_cast<size_t>(n()));
      std::iota(expected.begin(), expected.end(), 0);
      EXPECT_EQ(v, expected) << "epoch " << e << (packing ? " packed" : " padded");
      EXPECT_EQ(steps[static_cast<size_t>(e)], loader.steps_in_epoch(e));
    }
    if (!packing) EXPECT_EQ(steps[0], (n() + 5) / 6);
    EXPECT_TRUE(loader.done());
    EXPECT_FALSE(loader.next_step().has_value());
    EXPECT_EQ(loader.position().epoch, 3);
    EXPECT_EQ(loader.position().global_sample, 3 * n());
  }
}

// DP=2 (and 4) ranks' micro-batches are exactly DP=1's micro-batches of the same global batch: rank r's
// accumulation step a is global micro-batch a * dp + r. Checked over 1.5 epochs (an epoch boundary included).
TEST_F(DataLoaderTest, DpRanksTogetherEqualOneProcess) {
  for (bool packing : {true, false}) {
    DataLoader single(cache(), opts(packing, 2, 4));
    const int64_t steps = single.steps_in_epoch(0) * 3 / 2;
    const auto ref = run(single, steps);
    ASSERT_TRUE(std::any_of(ref.begin(), ref.end(), [](const LoaderStep& s) { return s.epoch_end; }));
    for (int64_t dp : {2, 4}) {
      std::vector<std::vector<LoaderStep>> ranks;
      for (int64_t r = 0; r < dp; ++r) {
        DataLoader l(cache(), opts(packing, 2, 4 / dp, dp, r));
        ranks.push_back(run(l, steps));
        EXPECT_EQ(l.position(), single.position());
      }
      for (int64_t s = 0; s < steps; ++s)
        for (int64_t r = 0; r < dp; ++r) {
          const LoaderStep& mine = ranks[static_cast<size_t>(r)][static_cast<size_t>(s)];
          EXPECT_EQ(mine.global_trained_tokens, ref[static_cast<size_t>(s)].global_trained_tokens);
          EXPECT_EQ(mine.global_samples, ref[static_cast<size_t>(s)].global_samples);
          for (int64_t a = 0; a < 4 / dp; ++a)
            expect_same_batch(mine.micro_batches[static_cast<size_t>(a)],
                              ref[static_cast<size_t>(s)].micro_batches[static_cast<size_t>(a * dp + r)],
                              "dp " + std::to_string(dp) + " rank " + std::to_string(r) + " step " +
                                  std::to_string(s));
        }
    }
  }
}

// Saving the position after k steps (through JSON text) and resuming gives exactly the uninterrupted stream:
// mid-epoch, on the last step of an epoch, right after the boundary.
TEST_F(DataLoaderTest, ResumeContinuesTheUninterruptedStream) {
  for (bool packing : {true, false}) {
    DataLoaderOptions o = opts(packing, 3, 2);
    o.epochs = 3;
    DataLoader full(cache(), o);
    const auto ref = run(full);
    int64_t boundary = 0;
    while (!ref[static_cast<size_t>(boundary)].epoch_end) ++boundary;  // last step of epoch 0
    for (int64_t cut : {int64_t{1}, boundary / 2, boundary, boundary + 1, boundary + 2}) {
      DataLoader first(cache(), o);
      (void)run(first, cut);
      const std::string saved = first.position().to_json().dump();
      const DataPosition p = DataPosition::from_json(nlohmann::json::parse(saved));
      EXPECT_EQ(p, first.position());
      EXPECT_EQ(p.global_sample, ref[static_cast<size_t>(cut)].start.global_sample);
      DataLoader resumed(cache(), o, p);
      const auto rest = run(resumed);
      expect_same_steps(rest, std::vector<LoaderStep>(ref.begin() + cut, ref.end()),
                        std::string(packing ? "packed" : "padded") + " cut " + std::to_string(cut));
    }
  }
}

// A position saved by DP=2 ranks resumes on one process: with the same global batch the steps are exactly
// the uninterrupted DP=1 steps; with another global batch size nothing is skipped or repeated.
TEST_F(DataLoaderTest, ResumeOnOtherDpSize) {
  for (bool packing : {true, false}) {
    DataLoaderOptions one = opts(packing, 2, 4);
    one.epochs = 2;
    DataLoader ref_loader(cache(), one);
    const auto ref = run(ref_loader);
    const int64_t k = ref_loader.steps_in_epoch(0) - 2;  // mid-epoch, two steps before its end
    DataPosition saved;
    for (int64_t r = 0; r < 2; ++r) {
      DataLoaderOptions two = opts(packing, 2, 2, 2, r);
      two.epochs = 2;
      DataLoader rank(cache(), two);
      (void)run(rank, k);
      if (r == 0) saved = rank.position();
      EXPECT_EQ(rank.position(), saved) << "ranks disagree on the position";
    }
    EXPECT_EQ(saved.step, k);
    DataLoader same(cache(), one, DataPosition::from_json(saved.to_json()));
    expect_same_steps(run(same), std::vector<LoaderStep>(ref.begin() + k, ref.end()), "dp2 -> dp1");

    // Another shape (micro_batch 3, grad_accum 1): every sample of epoch 0 still exactly once in total.
    DataLoaderOptions other = opts(packing, 3, 1);
    other.epochs = 1;
    DataLoader resumed(cache(), other, saved);
    std::vector<int32_t> docs;
    for (int64_t s = 0; s < k; ++s) {
      const auto d = documents(ref[static_cast<size_t>(s)]);
      docs.insert(docs.end(), d.begin(), d.end());
    }
    int64_t expect_start = saved.global_sample;
    for (const LoaderStep& s : run(resumed)) {
      EXPECT_EQ(s.start.global_sample, expect_start);
      expect_start += s.global_samples;
      const auto d = documents(s);
      docs.insert(docs.end(), d.begin(), d.end());
    }
    std::sort(docs.begin(), docs.end());
    std::vector<int32_t> expected(static_cast<size_t>(n()));
    std::iota(expected.begin(), expected.end(), 0);
    EXPECT_EQ(docs, expected) << (packing ? "packed" : "padded");
  }
}

// Loss-term counts: per micro-batch the non-ignored targets; per step the sum over every rank's
// micro-batches and over the step's samples' masks; per epoch the cache total = the sum of mask.bin.
TEST_F(DataLoaderTest, TrainedTokensEqualMaskSums) {
  const MappedFile mask(cache().folder() + "/mask.bin");
  int64_t mask_sum = 0;
  for (size_t i = 0; i < mask.size(); ++i) mask_sum += mask.data()[i];
  EXPECT_EQ(cache().total_trained_tokens(), mask_sum);  // loss_mask[0] is 0 in every sample
  for (bool packing : {true, false}) {
    const int64_t dp = 2;
    std::vector<DataLoader> ranks;
    for (int64_t r = 0; r < dp; ++r) {
      DataLoaderOptions o = opts(packing, 2, 2, dp, r);
      o.epochs = 1;
      ranks.emplace_back(cache(), o);
    }
    int64_t epoch_trained = 0, epoch_tokens = 0;
    while (true) {
      std::vector<LoaderStep> steps;
      for (auto& l : ranks) {
        auto s = l.next_step();
        if (s) steps.push_back(std::move(*s));
      }
      if (steps.empty()) break;
      ASSERT_EQ(steps.size(), 2u);
      int64_t sum_batches = 0, sum_docs = 0;
      for (const LoaderStep& s : steps)
        for (const PackedBatch& b : s.micro_batches) {
          sum_batches += b.trained_tokens;
          EXPECT_EQ(b.trained_tokens,
                    std::count_if(b.target_ids.begin(), b.target_ids.end(), [](int64_t t) { return t != kIgnoreIndex; }));
          for (int32_t d : b.documents) sum_docs += cache().trained_tokens(d);
        }
      EXPECT_EQ(steps[0].global_trained_tokens, sum_batches);
      EXPECT_EQ(steps[0].global_trained_tokens, sum_docs);
      EXPECT_EQ(steps[1].global_trained_tokens, sum_batches);
      epoch_trained += steps[0].global_trained_tokens;
      epoch_tokens += steps[0].global_tokens;
    }
    EXPECT_EQ(epoch_trained, mask_sum);
    EXPECT_EQ(epoch_tokens, cache().num_tokens());
  }
}

// Every micro-batch has micro_batch rows (packing: of seq_len columns); rows beyond the step's samples are
// inert padding; real rows across ranks add up to global_rows.
TEST_F(DataLoaderTest, FixedShapesAndInertEmptyRows) {
  for (bool packing : {true, false}) {
    int64_t empty_rows_seen = 0;
    const int64_t dp = 2, mb = 4, ga = 2;
    std::vector<std::vector<LoaderStep>> ranks;
    for (int64_t r = 0; r < dp; ++r) {
      DataLoaderOptions o = opts(packing, mb, ga, dp, r);
      o.epochs = 1;
      DataLoader l(cache(), o);
      ranks.push_back(run(l));
    }
    ASSERT_EQ(ranks[0].size(), ranks[1].size());
    for (size_t s = 0; s < ranks[0].size(); ++s) {
      int64_t real_rows = 0;
      for (int64_t r = 0; r < dp; ++r)
        for (const PackedBatch& b : ranks[static_cast<size_t>(r)][s].micro_batches) {
          EXPECT_EQ(b.rows, mb);
          if (packing) EXPECT_EQ(b.seq_len, 256);
          for (int64_t row = 0; row < b.rows; ++row) {
            const auto seg = b.segment_ids.begin() + row * b.seq_len;
            const bool empty = std::all_of(seg, seg + b.seq_len, [](int32_t v) { return v == 0; });
            if (!empty) {
              ++real_rows;
              continue;
            }
            ++empty_rows_seen;
            for (int64_t c = 0; c < b.seq_len; ++c) {
              const size_t i = static_cast<size_t>(row * b.seq_len + c);
              EXPECT_EQ(b.target_ids[i], kIgnoreIndex);
              EXPECT_EQ(b.input_ids[i], cache().pad_id());
            }
          }
        }
      EXPECT_EQ(real_rows, ranks[0][s].global_rows) << "step " << s;
    }
    EXPECT_GT(empty_rows_seen, 0) << "the epoch's last step should be short";
  }
}

// Evaluation: cache order, once, split over ranks, then done.
TEST_F(DataLoaderTest, EvalLoaderIsSequentialAndFinite) {
  for (bool packing : {false, true}) {
    const DataLoaderOptions train = opts(packing, 3, 4, 2, 0);
    std::vector<DataLoader> ranks;
    for (int64_t r = 0; r < 2; ++r) {
      DataLoaderOptions o = eval_loader_options(train);
      o.dp_rank = r;
      EXPECT_FALSE(o.shuffle);
      EXPECT_EQ(o.grad_accum, 1);
      ranks.emplace_back(cache(), o);
    }
    std::vector<int32_t> docs;
    int64_t steps = 0, trained = 0;
    while (true) {
      auto a = ranks[0].next_step();
      auto b = ranks[1].next_step();
      ASSERT_EQ(a.has_value(), b.has_value());
      if (!a) break;
      ++steps;
      trained += a->global_trained_tokens;
      ASSERT_EQ(a->micro_batches.size(), 1u);
      std::vector<int32_t> step_docs = documents(*a);
      const auto more = documents(*b);
      step_docs.insert(step_docs.end(), more.begin(), more.end());
      if (packing) std::sort(step_docs.begin(), step_docs.end());
      docs.insert(docs.end(), step_docs.begin(), step_docs.end());
    }
    std::vector<int32_t> expected(static_cast<size_t>(n()));
    std::iota(expected.begin(), expected.end(), 0);
    EXPECT_EQ(docs, expected) << (packing ? "packed" : "padded");  // sequential: sorted runs concatenate in order
    EXPECT_EQ(trained, cache().total_trained_tokens());
    if (!packing) EXPECT_EQ(steps, (n() + 5) / 6);
    EXPECT_TRUE(ranks[0].done());
  }
}

TEST_F(DataLoaderTest, SeekRejectsForeignPositions) {
  const DataLoaderOptions o = opts(true, 2, 2);
  DataLoader l(cache(), o);
  (void)l.next_step();
  const DataPosition p = l.position();
  const auto expect_error = [&](const DataPosition& bad, const std::string& needle) {
    try {
      DataLoader loader(cache(), o, bad);
      ADD_FAILURE() << "accepted: " << bad.to_json().dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  DataPosition bad = p;
  bad.seed = 7;
  expect_error(bad, "seed 7");
  bad = p;
  bad.cache_key = "0123";
  expect_error(bad, "saved for token cache 0123");
  bad = p;
  bad.global_sample += 1;
  expect_error(bad, "global_sample");
  bad = p;
  bad.epoch_sample = n();
  expect_error(bad, "epoch_sample");
  nlohmann::json j = p.to_json();
  j.erase("epoch_sample");
  try {
    (void)DataPosition::from_json(j);
    ADD_FAILURE() << "missing field accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'epoch_sample'"), std::string::npos) << e.what();
  }
  // Unshuffled (evaluation) streams do not depend on the seed.
  DataLoaderOptions eval = eval_loader_options(o);
  bad = p;
  bad.seed = 7;
  DataLoader ok(cache(), eval, bad);
  EXPECT_EQ(ok.position().global_sample, p.global_sample);
}

// ------------------------------------------------------------------------------------ realistic run --
// Sky-T1 long reasoning traces (question -> user, code[0] -> assistant) with the Qwen3 vocabulary plus the
// four DeepSeek-R1 markers (how the R1-Distill-Qwen tokenizers are built; the stock Qwen3 file lacks them,
// and the deepseek_r1 template needs each to be one token), max_seq_len 4096.
TEST(DataLoaderAssets, SkyThoughtRealisticRun) {
  REQUIRE_ASSET("tokenizers/qwen3/tokenizer.json");
  REQUIRE_ASSET("reasoning/skythought/Sky-T1-math-correct-5K-27B_aime24.jsonl");
  REQUIRE_ASSET("reasoning/skythought/Sky-T1-math-correct-5K-27B_amc23.jsonl");
  const std::string dir = testing::make_temp_dir("skythought");
  nlohmann::json spec = nlohmann::json::parse(read_text_file(testing::asset_path("tokenizers/qwen3/tokenizer.json")));
  int32_t next_id = 0;
  for (const auto& a : spec["added_tokens"]) next_id = std::max(next_id, a["id"].get<int32_t>() + 1);
  for (const char* t : {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"})
    spec["added_tokens"].push_back({{"id", next_id++}, {"content", t}, {"single_word", false}, {"lstrip", false},
                                    {"rstrip", false}, {"normalized", false}, {"special", true}});
  fs::create_directories(dir + "/tok");
  std::ofstream(dir + "/tok/tokenizer.json") << spec.dump();
  std::ofstream(dir + "/tok/tokenizer_config.json")
      << R"({"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>", "pad_token": "<|endoftext|>"})";
  const auto tok = load_tokenizer(dir + "/tok/tokenizer.json");

  TokenCacheOptions o;
  o.data = {testing::asset_path("reasoning/skythought") + "/*.jsonl"};
  o.schema.format = "prompt_response";
  o.schema.prompt_column = "question";
  o.schema.response_column = "code[0]";
  o.cache_dir = dir + "/cache";
  o.tokenizer_file = dir + "/tok/tokenizer.json";
  o.sample.max_seq_len = 4096;
  const ChatTemplate r1 = ChatTemplate::builtin("deepseek_r1");
  const TokenCache cache = TokenCache::open_or_build(o, *tok, r1);
  const SampleStats& st = cache.stats();
  std::printf("[skythought] %zu files, %zu rows -> %s\n", cache.dataset_stats().files, cache.dataset_stats().rows,
              st.summary().c_str());
  std::printf("[skythought] samples %lld, tokens %lld (trained %lld), longest %lld, dropped too long %lld\n",
              static_cast<long long>(cache.size()), static_cast<long long>(cache.num_tokens()),
              static_cast<long long>(cache.total_trained_tokens()), static_cast<long long>(cache.max_sample_tokens()),
              static_cast<long long>(st.dropped_too_long));
  std::string shown = show_loss_mask(*tok, cache.sample(0));
  if (shown.size() > 600) {
    // Cut at UTF-8 character starts.
    size_t head = 400, tail = shown.size() - 150;
    while ((static_cast<unsigned char>(shown[head]) & 0xC0) == 0x80) --head;
    while ((static_cast<unsigned char>(shown[tail]) & 0xC0) == 0x80) ++tail;
    shown = shown.substr(0, head) + " [...] " + shown.substr(tail);
  }
  std::printf("[skythought] sample 0 (%lld tokens, «trained»): %s\n", static_cast<long long>(cache.length(0)),
              shown.c_str());

  // Exact figures: HF `tokenizers` with the same four added tokens on the same rendering
  // ("<｜begin▁of▁sentence｜><｜User｜>" + question + "<｜Assistant｜>" + code[0] + "<｜end▁of▁sentence｜>") gives
  // 70 sequences, 224,823 ids, the longest 3,903, and 218,018 ids after the "<｜Assistant｜>" header.
  EXPECT_EQ(cache.dataset_stats().files, 2u);
  EXPECT_EQ(st.examples, 70);  // 30 AIME 2024 + 40 AMC 2023 records
  EXPECT_EQ(st.samples, 70);
  EXPECT_EQ(cache.size(), 70);
  EXPECT_EQ(st.dropped_too_long, 0);  // every trace fits in 4096 tokens
  EXPECT_EQ(cache.num_tokens(), 224823);
  EXPECT_EQ(cache.max_sample_tokens(), 3903);
  EXPECT_EQ(cache.total_trained_tokens(), 218018);
  int64_t tokens = 0, trained = 0;
  for (int64_t i = 0; i < cache.size(); ++i) {
    tokens += cache.length(i);
    trained += cache.trained_tokens(i);
    EXPECT_EQ(cache.ids(i)[0], *tok->token_to_id("<｜begin▁of▁sentence｜>"));
    EXPECT_EQ(cache.ids(i).back(), *tok->token_to_id("<｜end▁of▁sentence｜>"));
  }
  EXPECT_EQ(tokens, cache.num_tokens());
  EXPECT_EQ(tokens, st.tokens);
  EXPECT_EQ(trained, st.trained_tokens);

  // At 2048 tokens the single-turn traces that do not fit are dropped whole (60 of them; the 10 kept
  // hold 13,393 tokens, again as HF counts them), under another key.
  {
    TokenCacheOptions shorter = o;
    shorter.sample.max_seq_len = 2048;
    const TokenCache c2 = TokenCache::open_or_build(shorter, *tok, r1);
    std::printf("[skythought] max_seq_len 2048: %s\n", c2.stats().summary().c_str());
    EXPECT_NE(c2.key(), cache.key());
    EXPECT_EQ(c2.stats().dropped_too_long, 60);
    EXPECT_EQ(c2.size(), 10);
    EXPECT_EQ(c2.num_tokens(), 13393);
    EXPECT_EQ(c2.stats().samples + c2.stats().dropped_too_long + c2.stats().dropped_no_trained, 70);
  }

  // Packing efficiency: real tokens / (rows * width) over one epoch, global batch 8 rows (2 x 2 x dp 2).
  for (bool packing : {true, false}) {
    DataLoaderOptions lo;
    lo.packing = packing;
    lo.micro_batch = 2;
    lo.grad_accum = 2;
    lo.dp_size = 2;
    lo.epochs = 1;
    lo.seed = 3;
    int64_t steps = 0, real = 0, slots = 0, used_slots = 0, trained_seen = 0;
    DataLoader l0(cache, lo);
    lo.dp_rank = 1;
    DataLoader l1(cache, lo);
    while (auto s0 = l0.next_step()) {
      auto s1 = l1.next_step();
      ASSERT_TRUE(s1.has_value());
      ++steps;
      real += s0->global_tokens;
      trained_seen += s0->global_trained_tokens;
      for (const LoaderStep* s : {&*s0, &*s1})
        for (const PackedBatch& b : s->micro_batches) {
          slots += b.rows * b.seq_len;
          used_slots += b.rows * b.seq_len - b.pad_tokens;
        }
    }
    EXPECT_EQ(real, cache.num_tokens());
    EXPECT_EQ(used_slots, real);
    EXPECT_EQ(trained_seen, cache.total_trained_tokens());
    std::printf("[skythought] packing %s: %lld steps of 8 rows, %lld real tokens in %lld slots: efficiency %.1f%%\n",
                packing ? "on (rows of 4096)" : "off (padded per micro-batch)", static_cast<long long>(steps),
                static_cast<long long>(real), static_cast<long long>(slots), 100.0 * real / slots);
    if (packing) {
      EXPECT_EQ(steps, l0.steps_in_epoch(0));
      // A lower bound on rows for the whole epoch: one first-fit-decreasing plan over every sample.
      std::vector<TokenizedSample> all;
      for (int64_t i = 0; i < cache.size(); ++i) all.push_back(cache.sample(i));
      const auto rows = plan_packing(all, 4096);
      std::printf("[skythought] whole-epoch first-fit-decreasing would need %zu rows (efficiency %.1f%%)\n",
                  rows.size(), 100.0 * real / (static_cast<double>(rows.size()) * 4096));
      EXPECT_GE(steps * 8, static_cast<int64_t>(rows.size()));
    }
  }
}

}  // namespace
}  // namespace mlaforge
