// GradientSync (parallel/grad_sync.h): gradient buckets reduced from autograd hooks during the backward.
// In one process the DP group is a stand-in for two identical ranks (every sum doubles, exactly), which
// checks the hook logic, calibration, bucket order, missing gradients and the changed-graph error; under
// `mpirun -np 2/4` the sums are checked against all_reduce_gradients / reduce_scatter_gradients.
#include <gtest/gtest.h>

#include <vector>

#include "core/error.h"
#include "parallel/grad_sync.h"
#include "parallel/zero.h"
#include "parallel_test_main.h"

namespace mlaforge::parallel {
namespace {

using testing::world;

// Two ranks holding the same tensors: sums are 2x, everything else the identity.
class TwinCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::string backend() const override { return "twin"; }
  std::string name() const override { return "twin"; }
  void all_reduce(torch::Tensor& t, ReduceOp op) override {
    if (op == ReduceOp::sum) t.mul_(2);
    ++collectives;
  }
  void all_gather(const torch::Tensor& in, torch::Tensor& out) override { out.copy_(torch::cat({in, in})); }
  void reduce_scatter(const torch::Tensor& in, torch::Tensor& out, ReduceOp op) override {
    out.copy_(in.narrow(0, 0, out.numel()) * (op == ReduceOp::sum ? 2 : 1));
    ++collectives;
  }
  void broadcast(torch::Tensor&, int) override {}
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int, const std::string&) override { return nullptr; }
  int collectives = 0;
};

// A small network with an unused parameter, a parameter used twice, and a 1-D bias. Its loss differs by
// rank (the input depends on the seed).
struct Net {
  std::vector<torch::Tensor> params;
  Net() {
    torch::manual_seed(3);
    for (auto shape : std::vector<std::vector<int64_t>>{{16, 8}, {16}, {6, 16}, {3, 3}, {6, 6}})
      params.push_back(torch::randn(shape, torch::kFloat32).requires_grad_(true));
  }
  torch::Tensor loss(int64_t seed) const {
    torch::manual_seed(seed);
    const torch::Tensor x = torch::randn({5, 8});
    torch::Tensor h = torch::tanh(torch::matmul(x, params[0].t()) + params[1]);  // (5, 16)
    torch::Tensor y = torch::matmul(h, params[2].t());                           // (5, 6)
    y = torch::matmul(y, params[4]) + torch::matmul(torch::sin(y), params[4].t());  // params[4] used twice
    return y.pow(2).sum() + torch::matmul(x, params[0].t()).sum();               // params[0] used twice
  }
  GradientSync::FinalGrad final_grad() {
    return [this](size_t i, bool zeros_for_missing) {
      torch::Tensor& p = params[i];
      if (zeros_for_missing && !p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      return p.grad();
    };
  }
  void zero_grad() {
    for (auto& p : params) p.mutable_grad() = torch::Tensor();
  }
  std::vector<torch::Tensor> grads() const {
    std::vector<torch::Tensor> out;
    for (const auto& p : params) out.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
    return out;
  }
};

// Two micro-batches per step; the reference: the same backward, then the local gradients.
std::vector<torch::Tensor> local_gradients(Net& net, int64_t step, int rank) {
  net.zero_grad();
  for (int64_t k = 0; k < 2; ++k) net.loss(1000 * step + 10 * rank + k).backward();
  auto out = net.grads();
  net.zero_grad();
  return out;
}

GradSyncStats synced_step(Net& net, GradientSync& sync, int64_t step, int rank) {
  net.zero_grad();
  net.loss(1000 * step + 10 * rank).backward();
  sync.arm();
  net.loss(1000 * step + 10 * rank + 1).backward();
  return sync.finish();
}

TEST(GradSync, HooksReduceEveryBucketOnceWithTheFinalGradients) {
  for (bool zero : {false, true}) {
    for (bool overlap : {true, false}) {
      Net net;
      TwinCommunicator twin;
      GradientSync sync(net.params, twin, {.bucket_bytes = 300, .zero = zero, .overlap = overlap}, net.final_grad());
      for (int64_t step = 0; step < 3; ++step) {
        const auto expected = local_gradients(net, step, 0);
        twin.collectives = 0;
        const GradSyncStats stats = synced_step(net, sync, step, 0);
        SCOPED_TRACE("zero " + std::to_string(zero) + " overlap " + std::to_string(overlap) + " step " +
                     std::to_string(step));
        EXPECT_EQ(stats.buckets, sync.bucket_count());
        EXPECT_EQ(twin.collectives, static_cast<int>(sync.bucket_count()));
        EXPECT_GE(sync.bucket_count(), 3u);  // 300-byte buckets: several
        // Step 0 calibrates (everything after the backward); later steps start buckets in the backward,
        // all but the one holding the unused parameter (and those after it).
        if (overlap && step > 0) {
          EXPECT_GT(stats.overlapped_buckets, 0u);
          EXPECT_LT(stats.overlapped_buckets, sync.bucket_count());
        } else {
          EXPECT_EQ(stats.overlapped_buckets, 0u);
        }
        for (size_t i = 0; i < net.params.size(); ++i) {
          const torch::Tensor got = net.params[i].grad(), want = expected[i] * 2;
          ASSERT_TRUE(got.defined()) << "parameter " << i;
          if (zero) {  // the twin's own rows are rank 0's
            const RowRange rows = zero_row_range(got.size(0), 0, 2);
            EXPECT_TRUE(torch::equal(got.narrow(0, rows.begin, rows.rows()), want.narrow(0, rows.begin, rows.rows())))
                << "parameter " << i;
          } else {
            EXPECT_TRUE(torch::equal(got, want)) << "parameter " << i;
          }
        }
        EXPECT_TRUE(torch::equal(net.params[3].grad(), torch::zeros({3, 3})));  // unused: zeros
      }
    }
  }
}

// A parameter accumulating more often than in the calibration step, after its bucket left, is refused
// (the reduction would have missed part of its gradient).
TEST(GradSync, MoreAccumulationsThanCalibratedIsAnError) {
  Net net;
  TwinCommunicator twin;
  GradientSync sync(net.params, twin, {.bucket_bytes = 1, .overlap = true}, net.final_grad());
  synced_step(net, sync, 0, 0);  // calibration: one accumulation per parameter
  net.zero_grad();
  sync.arm();
  net.loss(7).backward();
  try {
    net.loss(8).backward();  // a second accumulation into every parameter, buckets already started
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("after its bucket was reduced"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("overlap_grad_reduce=false"), std::string::npos) << e.what();
  }
}

// Real ranks: the sums equal all_reduce_gradients' (bitwise on 2 ranks, where a sum of two values has
// one rounding whichever the message layout), and under ZeRO the own rows equal reduce_scatter_gradients'.
TEST(GradSync, EqualsTheReductionAfterBackwardAcrossRanks) {
  REQUIRE_MPI_WORLD();
  const int rank = world()->rank(), n = world()->size();
  for (bool zero : {false, true}) {
    Net net;
    GradientSync sync(net.params, *world(), {.bucket_bytes = 300, .zero = zero, .overlap = true}, net.final_grad());
    for (int64_t step = 0; step < 3; ++step) {
      std::vector<torch::Tensor> expected = local_gradients(net, step, rank);
      if (zero) {
        reduce_scatter_gradients(expected, *world());
      } else {
        all_reduce_gradients(expected, *world());
      }
      const GradSyncStats stats = synced_step(net, sync, step, rank);
      if (step > 0) EXPECT_GT(stats.overlapped_buckets, 0u);
      for (size_t i = 0; i < net.params.size(); ++i) {
        torch::Tensor got = net.params[i].grad(), want = expected[i];
        if (zero) {
          const RowRange rows = zero_row_range(got.size(0), rank, n);
          got = got.narrow(0, rows.begin, rows.rows());
          want = want.narrow(0, rows.begin, rows.rows());
        }
        if (n == 2) {
          EXPECT_TRUE(torch::equal(got, want)) << "zero " << zero << " step " << step << " parameter " << i;
        } else {
          EXPECT_TRUE(torch::allclose(got, want, 1e-6, 1e-6)) << "zero " << zero << " step " << step << " parameter " << i;
        }
      }
    }
  }
}

}  // namespace
}  // namespace mlaforge::parallel
