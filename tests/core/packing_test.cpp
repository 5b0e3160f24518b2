// Packing (data/packing.h): first-fit plans, the packed layout (positions restart per document, no target
// crosses a document, padding masked), determinism, padded batches. Synthetic samples: no assets needed.
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "core/error.h"
#include "data/packing.h"

namespace mlaforge {
namespace {

// A sample of `len` tokens with distinct ids (base, base + 1, ...) and the given mask (default: all but
// the first token trained).
TokenizedSample sample(int32_t len, int32_t base, std::vector<uint8_t> mask = {}) {
  TokenizedSample s;
  for (int32_t i = 0; i < len; ++i) s.ids.push_back(base + i);
  if (mask.empty()) {
    mask.assign(len, 1);
    mask[0] = 0;
  }
  s.loss_mask = std::move(mask);
  s.source = "s" + std::to_string(base);
  return s;
}

std::vector<TokenizedSample> with_lengths(const std::vector<int32_t>& lengths) {
  std::vector<TokenizedSample> out;
  for (size_t i = 0; i < lengths.size(); ++i) out.push_back(sample(lengths[i], static_cast<int32_t>(1000 * (i + 1))));
  return out;
}

TEST(Packing, FirstFitDecreasingPlan) {
  const auto samples = with_lengths({5, 3, 8, 2, 6});
  // Longest first: 8 -> row 0 (2 left), 6 -> row 1 (4 left), 5 -> row 2, 3 -> row 1, 2 -> row 0.
  EXPECT_EQ(plan_packing(samples, 10), (std::vector<std::vector<int32_t>>{{2, 3}, {4, 1}, {0}}));
  // In the given order: 5 -> r0, 3 -> r0, 8 -> r1, 2 -> r0 (full), 6 -> r2.
  EXPECT_EQ(plan_packing(samples, 10, false), (std::vector<std::vector<int32_t>>{{0, 1, 3}, {2}, {4}}));
  // Ties keep the input order.
  EXPECT_EQ(plan_packing(with_lengths({4, 4, 4}), 8), (std::vector<std::vector<int32_t>>{{0, 1}, {2}}));
  EXPECT_TRUE(plan_packing({}, 8).empty());
}

TEST(Packing, PlanIsValidAndDeterministic) {
  std::mt19937 rng(7);
  std::vector<int32_t> lengths;
  for (int i = 0; i < 500; ++i) lengths.push_back(1 + static_cast<int32_t>(rng() % 64));
  const auto samples = with_lengths(lengths);
  const auto plan = plan_packing(samples, 64);
  EXPECT_EQ(plan, plan_packing(samples, 64));
  std::vector<int> seen(samples.size(), 0);
  int64_t total = 0;
  for (const auto& row : plan) {
    int64_t used = 0;
    for (int32_t i : row) {
      ++seen[i];
      used += lengths[i];
    }
    EXPECT_LE(used, 64);
    total += used;
  }
  for (int s : seen) EXPECT_EQ(s, 1);  // every sample exactly once
  // First-fit decreasing is within 11/9 OPT + 1 rows; the lower bound is total / 64.
  const int64_t lower = (total + 63) / 64;
  EXPECT_LE(static_cast<int64_t>(plan.size()), lower * 11 / 9 + 1);
}

TEST(Packing, PackedLayout) {
  // Sample 1 has an untrained prompt (first 3 tokens) and trained answer; sample 2 trains everything.
  std::vector<TokenizedSample> samples = {sample(6, 100, {0, 0, 0, 1, 1, 1}), sample(4, 200), sample(3, 300)};
  const PackedBatch b = make_packed_batch(samples, {{0, 1}, {2}}, 12, /*pad_id=*/7);
  ASSERT_EQ(b.rows, 2);
  ASSERT_EQ(b.seq_len, 12);
  ASSERT_EQ(b.input_ids.size(), 24u);
  const int64_t X = kIgnoreIndex;
  EXPECT_EQ(b.input_ids, (std::vector<int64_t>{100, 101, 102, 103, 104, 105, 200, 201, 202, 203, 7, 7,  //
                                               300, 301, 302, 7, 7, 7, 7, 7, 7, 7, 7, 7}));
  // Row 0: token 102 predicts 103 (trained), ..., 105 is its document's last token: ignored, so it does
  // not predict 200. 200 predicts 201 ... 203 is last.
  EXPECT_EQ(b.target_ids, (std::vector<int64_t>{X, X, 103, 104, 105, X, 201, 202, 203, X, X, X,  //
                                                301, 302, X, X, X, X, X, X, X, X, X, X}));
  EXPECT_EQ(b.position_ids, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 1,  //
                                                  0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(b.segment_ids, (std::vector<int32_t>{1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0,  //
                                                 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(b.documents, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(b.trained_tokens, 3 + 3 + 2);
  EXPECT_EQ(b.trained_tokens, samples[0].trained_tokens() + samples[1].trained_tokens() + samples[2].trained_tokens());
  EXPECT_EQ(b.pad_tokens, 2 + 9);
  EXPECT_EQ(b.cu_seqlens(), (std::vector<int32_t>{0, 6, 10, 12, 15, 24}));
}

// The invariants on a large random packing: what the packed-vs-unpacked loss equality rests on.
TEST(Packing, NoTargetCrossesADocument) {
  std::mt19937 rng(11);
  std::vector<TokenizedSample> samples;
  for (int i = 0; i < 300; ++i) {
    const int32_t len = 1 + static_cast<int32_t>(rng() % 40);
    std::vector<uint8_t> mask(len);
    for (auto& m : mask) m = rng() % 3 != 0;
    mask[0] = 0;
    samples.push_back(sample(len, 100000 * (i + 1), mask));
  }
  const int64_t T = 48;
  const auto plan = plan_packing(samples, T);
  const PackedBatch b = make_packed_batch(samples, plan, T, 0);
  int64_t trained = 0, expected_trained = 0;
  for (const auto& s : samples) expected_trained += s.trained_tokens();
  size_t doc_index = 0;
  for (int64_t r = 0; r < b.rows; ++r) {
    int64_t col = 0;
    for (size_t d = 0; d < plan[r].size(); ++d, ++doc_index) {
      const TokenizedSample& s = samples[b.documents[doc_index]];
      const std::vector<int64_t> expect = shifted_targets(s);
      for (size_t i = 0; i < s.size(); ++i) {
        const size_t at = static_cast<size_t>(r * T + col) + i;
        ASSERT_EQ(b.input_ids[at], s.ids[i]);
        ASSERT_EQ(b.position_ids[at], static_cast<int64_t>(i));               // restarts per document
        ASSERT_EQ(b.segment_ids[at], static_cast<int32_t>(d + 1));
        ASSERT_EQ(b.target_ids[at], expect[i]);                             // identical to the unpacked targets
        if (b.target_ids[at] != kIgnoreIndex) {
          ++trained;
          ASSERT_EQ(b.segment_ids[at + 1], b.segment_ids[at]);              // target inside the same document
          ASSERT_EQ(b.target_ids[at], b.input_ids[at + 1]);
        }
      }
      ASSERT_EQ(b.target_ids[static_cast<size_t>(r * T + col) + s.size() - 1], kIgnoreIndex);  // last token
      col += static_cast<int64_t>(s.size());
    }
    for (int64_t c = col; c < T; ++c) {  // padding: masked, own segment
      ASSERT_EQ(b.segment_ids[r * T + c], 0);
      ASSERT_EQ(b.target_ids[r * T + c], kIgnoreIndex);
      ASSERT_EQ(b.input_ids[r * T + c], 0);
    }
  }
  EXPECT_EQ(doc_index, samples.size());
  EXPECT_EQ(trained, expected_trained);
  EXPECT_EQ(b.trained_tokens, expected_trained);
  // Deterministic down to the last array.
  const PackedBatch again = make_packed_batch(samples, plan_packing(samples, T), T, 0);
  EXPECT_EQ(again.input_ids, b.input_ids);
  EXPECT_EQ(again.target_ids, b.target_ids);
  EXPECT_EQ(again.position_ids, b.position_ids);
  EXPECT_EQ(again.segment_ids, b.segment_ids);
}

TEST(Packing, PaddedBatchIsOneSamplePerRow) {
  std::vector<TokenizedSample> samples = {sample(3, 10), sample(5, 20), sample(2, 30)};
  const PackedBatch b = make_padded_batch(samples, {2, 0, 1}, /*pad_id=*/0, /*pad_to_multiple_of=*/4);
  ASSERT_EQ(b.rows, 3);
  ASSERT_EQ(b.seq_len, 8);  // longest 5, rounded up to a multiple of 4
  const int64_t X = kIgnoreIndex;
  EXPECT_EQ(b.input_ids, (std::vector<int64_t>{30, 31, 0, 0, 0, 0, 0, 0,  //
                                               10, 11, 12, 0, 0, 0, 0, 0,  //
                                               20, 21, 22, 23, 24, 0, 0, 0}));
  EXPECT_EQ(b.target_ids, (std::vector<int64_t>{31, X, X, X, X, X, X, X,  //
                                                11, 12, X, X, X, X, X, X,  //
                                                21, 22, 23, 24, X, X, X, X}));
  EXPECT_EQ(b.segment_ids, (std::vector<int32_t>{1, 1, 0, 0, 0, 0, 0, 0,  //
                                                 1, 1, 1, 0, 0, 0, 0, 0,  //
                                                 1, 1, 1, 1, 1, 0, 0, 0}));
  EXPECT_EQ(b.documents, (std::vector<int32_t>{2, 0, 1}));
  // Packed and padded layouts carry the same targets per sample, hence the same summed loss.
  const PackedBatch p = make_packed_batch(samples, plan_packing(samples, 10), 10, 0);
  EXPECT_EQ(p.trained_tokens, b.trained_tokens);
  EXPECT_EQ(p.rows, 1);
}

TEST(Packing, RejectsBadSamples) {
  auto samples = with_lengths({4, 9});
  EXPECT_THROW(plan_packing(samples, 8), Error);  // longer than the row
  try {
    make_packed_batch(samples, {{0, 1}}, 10, 0);
    ADD_FAILURE() << "overfull row accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("row 0"), std::string::npos) << e.what();
  }
  samples.push_back(TokenizedSample{});
  EXPECT_THROW(plan_packing(samples, 16), Error);  // empty sample
  samples.pop_back();
  samples[0].loss_mask.pop_back();
  EXPECT_THROW(make_packed_batch(samples, {{0}}, 16, 0), Error);  // mask and ids disagree
}

}  // namespace
}  // namespace mlaforge
