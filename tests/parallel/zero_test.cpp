// ZeRO-1 collectives and the sharded AdamW, run by every rank under `mpirun -np 2` and `-np 4`
// (tests/CMakeLists.txt). Shapes are chosen so the row split is uneven (5 rows over 4 ranks: 2, 2, 1, 0),
// includes tensors with fewer rows than ranks, 1-D tensors and several buckets.
#include <gtest/gtest.h>

#include <vector>

#include "parallel/data_parallel.h"
#include "parallel/zero.h"
#include "parallel_test_main.h"
#include "trainer/optimizer.h"

namespace mlaforge::parallel {
namespace {

using testing::world;

const std::vector<std::vector<int64_t>> kShapes = {{5, 3}, {1}, {7}, {2, 2, 3}, {3, 1}, {9, 4}};

// Different on every rank and every element (exact small integers in fp32 and bf16).
std::vector<torch::Tensor> rank_tensors(int rank, torch::ScalarType type) {
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < kShapes.size(); ++i) {
    const int64_t n = c10::multiply_integers(kShapes[i]);
    out.push_back((torch::arange(n, torch::kFloat64) + 10 * (rank + 1) + 100 * static_cast<double>(i))
                      .reshape(kShapes[i]).to(type));
  }
  return out;
}

TEST(Zero, RowRangesTileTheTensor) {
  for (int64_t rows : {0, 1, 5, 8, 9}) {
    for (int count : {1, 2, 3, 4}) {
      int64_t next = 0;
      for (int k = 0; k < count; ++k) {
        const RowRange r = zero_row_range(rows, k, count);
        EXPECT_EQ(r.begin, next) << rows << " rows, shard " << k << " of " << count;
        EXPECT_GE(r.rows(), 0);
        EXPECT_LE(r.rows(), (rows + count - 1) / count);
        next = r.end;
      }
      EXPECT_EQ(next, rows);
    }
  }
}

// Own rows after the reduce-scatter == the same rows of an all-reduce, for several bucket sizes (one
// tensor per bucket up to all in one).
TEST(Zero, ReduceScatterGivesTheOwnRowsOfTheSum) {
  REQUIRE_MPI_WORLD();
  const int r = world()->rank(), n = world()->size();
  for (auto type : {torch::kFloat32, torch::kBFloat16}) {
    for (size_t bucket : {size_t{8}, size_t{64}, size_t{1} << 20}) {
      std::vector<torch::Tensor> expected = rank_tensors(r, type);
      all_reduce_gradients(expected, *world());
      std::vector<torch::Tensor> grads = rank_tensors(r, type);
      const BucketStats stats = reduce_scatter_gradients(grads, *world(), bucket);
      EXPECT_GE(stats.buckets, 1u);
      for (size_t i = 0; i < grads.size(); ++i) {
        const RowRange rows = zero_row_range(grads[i].size(0), r, n);
        EXPECT_TRUE(torch::equal(grads[i].narrow(0, rows.begin, rows.rows()),
                                 expected[i].narrow(0, rows.begin, rows.rows())))
            << c10::toString(type) << " tensor " << i << " bucket " << bucket;
      }
    }
  }
}

// Each rank writes its own rows (its rank tensors'), the gather fills in everybody else's.
TEST(Zero, AllGatherRowsAssemblesEveryRanksRows) {
  REQUIRE_MPI_WORLD();
  const int r = world()->rank(), n = world()->size();
  for (auto type : {torch::kFloat32, torch::kBFloat16, torch::kInt64}) {
    std::vector<torch::Tensor> tensors = rank_tensors(r, type);
    all_gather_rows(tensors, *world(), 64);
    for (size_t i = 0; i < tensors.size(); ++i) {
      for (int k = 0; k < n; ++k) {
        const RowRange rows = zero_row_range(tensors[i].size(0), k, n);
        EXPECT_TRUE(torch::equal(tensors[i].narrow(0, rows.begin, rows.rows()),
                                 rank_tensors(k, type)[i].narrow(0, rows.begin, rows.rows())))
            << c10::toString(type) << " tensor " << i << " rows of rank " << k;
      }
    }
  }
}

// The sharded AdamW (every rank its rows, then an all-gather) against one unsharded AdamW over the
// summed gradients, for 4 steps with weight decay, clipping and bf16 masters: the weights agree
// bitwise without clipping, and to float32 rounding of the norm with it.
TEST(Zero, ShardedAdamWMatchesTheWholeOptimizer) {
  REQUIRE_MPI_WORLD();
  const int r = world()->rank(), n = world()->size();
  for (Precision precision : {Precision::fp32, Precision::bf16_master}) {
    for (double clip : {0.0, 0.05}) {
      torch::manual_seed(7);  // the same initial weights on every rank
      std::vector<std::pair<std::string, torch::Tensor>> whole, sharded;
      for (size_t i = 0; i < kShapes.size(); ++i) {
        const torch::Tensor w = torch::randn(kShapes[i]);
        const std::string name = i == 1 ? "layers.0.attn_norm.weight" : "layers.0.p" + std::to_string(i) + ".weight";
        whole.emplace_back(name, w.clone().set_requires_grad(true));
        sharded.emplace_back(name, w.clone().set_requires_grad(true));
      }
      AdamWOptions opts;
      opts.precision = precision;
      opts.weight_decay = 0.1;
      AdamW reference(whole, opts);
      opts.shard_rank = r;
      opts.shard_count = n;
      AdamW zero(sharded, opts);
      zero.set_norm_reducer([](torch::Tensor& sq, const std::vector<torch::Tensor>&) { world()->all_reduce(sq); });
      std::vector<torch::Tensor> sharded_params;
      for (auto& [name, p] : sharded) sharded_params.push_back(p);
      double worst = 0;
      for (int step = 0; step < 4; ++step) {
        torch::manual_seed(100 + step);
        std::vector<torch::Tensor> per_rank(n);
        for (size_t i = 0; i < kShapes.size(); ++i) {
          torch::Tensor sum;
          for (int k = 0; k < n; ++k) {
            // Rank k's gradient, in halves: exact in bf16, and so are sums of a few of them, so bf16 mode
            // sees the same gradients whether accumulated per rank or summed first.
            const torch::Tensor g = (torch::randn(kShapes[i]) * 2).round() / 2;
            sum = sum.defined() ? sum + g : g.clone();
            if (k == r) sharded[i].second.mutable_grad() = g.to(sharded[i].second.scalar_type());
          }
          whole[i].second.mutable_grad() = sum.to(whole[i].second.scalar_type());
        }
        const StepResult expected = reference.step(1e-2, clip);
        reduce_scatter_gradients(zero.gradients(true), *world());
        const StepResult got = zero.step(1e-2, clip);
        all_gather_rows(sharded_params, *world());
        reference.zero_grad();
        zero.zero_grad();
        EXPECT_NEAR(got.grad_norm, expected.grad_norm, 1e-5 * expected.grad_norm);
        for (size_t i = 0; i < kShapes.size(); ++i) {
          const double diff = (sharded[i].second.to(torch::kFloat64) - whole[i].second.to(torch::kFloat64)).abs().max().item<double>();
          worst = std::max(worst, diff);
          if (clip == 0 && n == 2) {
            // A sum of two gradients is the same sum whichever collective forms it: bitwise.
            EXPECT_TRUE(torch::equal(sharded[i].second, whole[i].second)) << "tensor " << i << " step " << step;
          }
        }
      }
      EXPECT_LT(worst, precision == Precision::fp32 ? 1e-6 : 1e-2) << precision_name(precision) << " clip " << clip;
      // The state is 1/n: only the own rows.
      for (size_t i = 0; i < zero.size(); ++i) {
        const auto [begin, end] = zero.shard_rows(i);
        EXPECT_EQ(zero.state_dict().at(zero.name(i) + ".exp_avg").size(0), end - begin);
      }
    }
  }
}

}  // namespace
}  // namespace mlaforge::parallel
