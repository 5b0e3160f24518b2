// MPI collectives against known answers, run by every rank under `mpirun -np 2` and `-np 4`
// (tests/CMakeLists.txt). Rank r contributes values that depend on r, so a wrong order, a missing rank or
// a reduction over the wrong group changes the result. All values are small integers (or halves), exact
// in bfloat16, so every dtype is compared for equality.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "parallel/communicator.h"
#include "parallel_test_main.h"

namespace mlaforge::parallel {
namespace {

using testing::world;

const std::vector<torch::ScalarType> kReduceTypes = {torch::kFloat32, torch::kFloat64, torch::kBFloat16,
                                                     torch::kInt64, torch::kInt32};
const std::vector<torch::ScalarType> kFloatTypes = {torch::kFloat32, torch::kFloat64, torch::kBFloat16};

std::string type_name(torch::ScalarType type) { return c10::toString(type); }

// (rank + 1) * (i + 1) for i < n, in `type`.
torch::Tensor ramp(int rank, int64_t n, torch::ScalarType type) {
  return (torch::arange(1, n + 1, torch::kFloat64) * (rank + 1)).to(type);
}

TEST(Mpi, WorldMatchesTheLauncher) {
  REQUIRE_MPI_WORLD();
  ProcessEnv env = detect_process_env();
  EXPECT_EQ(env.launcher, "openmpi");
  EXPECT_EQ(world()->rank(), env.rank);
  EXPECT_EQ(world()->size(), env.world_size);
  EXPECT_TRUE(mpi_available());
  EXPECT_EQ(world()->backend(), "mpi");
  EXPECT_EQ(world()->name(), "world");
  EXPECT_GE(env.local_rank, 0);
  EXPECT_LT(env.local_rank, env.local_world_size);
}

TEST(Mpi, AllReduceSumEveryDtype) {
  REQUIRE_MPI_WORLD();
  const int r = world()->rank(), n = world()->size();
  const int64_t s = static_cast<int64_t>(n) * (n + 1) / 2;  // sum of (rank + 1)
  for (auto type : kReduceTypes) {
    torch::Tensor x = ramp(r, 5, type);
    world()->all_reduce(x, ReduceOp::sum);
    EXPECT_EQ(x.scalar_type(), type);
    EXPECT_TRUE(torch::equal(x, ramp(0, 5, type) * s)) << type_name(type) << ": " << x;
  }
}

TEST(Mpi, AllReduceAvgAndMax) {
  REQUIRE_MPI_WORLD();
  const int r = world()->rank(), n = world()->size();
  for (auto type : kFloatTypes) {
    torch::Tensor x = ramp(r, 4, type);
    world()->all_reduce(x, ReduceOp::avg);
    // mean of (rank + 1) = (n + 1) / 2: a multiple of 0.5, exact in every float type
    torch::Tensor expected = (torch::arange(1, 5, torch::kFloat64) * ((n + 1) / 2.0)).to(type);
    EXPECT_TRUE(torch::equal(x, expected)) << type_name(type) << ": " << x;
  }
  for (auto type : kReduceTypes) {
    torch::Tensor x = ramp(r, 3, type) * (r % 2 == 0 ? 1 : -1);  // odd ranks negative: max is the largest even rank
    world()->all_reduce(x, ReduceOp::max);
    const int top_even = (n - 1) % 2 == 0 ? n - 1 : n - 2;
    EXPECT_TRUE(torch::equal(x, ramp(top_even, 3, type))) << type_name(type) << ": " << x;
  }
}

TEST(Mpi, AllReduceLargeTensor) {
  REQUIRE_MPI_WORLD();
  const int r = world()->rank(), n = world()->size();
  // Large enough for MPI's segmented/pipelined algorithms.
  torch::Tensor x = torch::full({1 << 20}, static_cast<float>(r + 1));
  world()->all_reduce(x);
  EXPECT_EQ(x.min().item<float>(), n * (n + 1) / 2.0f);
  EXPECT_EQ(x.max().item<float>(), n * (n + 1) / 2.0f);
}

TEST(Mpi, AllGatherEveryDtype) {
  REQUIRE_MPI_WORLD();
  const int r = world()->rank(), n = world()->size();
  for (auto type : kReduceTypes) {
    torch::Tensor input = (torch::arange(3, torch::kFloat64) + 10 * r).to(type);  // rank r: 10r, 10r+1, 10r+2
    torch::Tensor output = torch::full({n, 3}, -1, type);
    world()->all_gather(input, output);
    torch::Tensor expected = (torch::arange(3, torch::kFloat64).unsqueeze(0) +
                              10 * torch::arange(n, torch::kFloat64).unsqueeze(1)).to(type);
    EXPECT_TRUE(torch::equal(output, expected)) << type_name(type) << ": " << output;
  }
}

TEST(Mpi, ReduceScatterEveryDtype) {
  REQUIRE_MPI_WORLD();
  const int r = world()->rank(), n = world()->size();
  const int64_t per_rank = 3;
  const int64_t s = static_cast<int64_t>(n) * (n + 1) / 2;
  for (auto type : kReduceTypes) {
    torch::Tensor input = ramp(r, n * per_rank, type);  // (r + 1) * (j + 1)
    torch::Tensor output = torch::zeros({per_rank}, type);
    world()->reduce_scatter(input, output, ReduceOp::sum);
    // slice r of the sum: s * (j + 1) for j in [r * per_rank, (r + 1) * per_rank)
    torch::Tensor expected = (torch::arange(r * per_rank + 1, (r + 1) * per_rank + 1, torch::kFloat64) * s).to(type);
    EXPECT_TRUE(torch::equal(output, expected)) << type_name(type) << ": " << output;
  }
  for (auto type : kFloatTypes) {
    torch::Tensor input = ramp(r, n * per_rank, type);
    torch::Tensor output = torch::zeros({per_rank}, type);
    world()->reduce_scatter(input, output, ReduceOp::avg);
    torch::Tensor expected =
        (torch::arange(r * per_rank + 1, (r + 1) * per_rank + 1, torch::kFloat64) * ((n + 1) / 2.0)).to(type);
    EXPECT_TRUE(torch::equal(output, expected)) << type_name(type) << ": " << output;
  }
}

TEST(Mpi, InPlaceGatherAndScatter) {
  REQUIRE_MPI_WORLD();
  const int r = world()->rank(), n = world()->size();
  // all_gather whose input is this rank's slot of the output (MPI_IN_PLACE).
  torch::Tensor output = torch::full({n * 2}, -1.0f);
  output.narrow(0, r * 2, 2).copy_(torch::tensor({10.0f * r, 10.0f * r + 1}));
  torch::Tensor slot = output.narrow(0, r * 2, 2);
  world()->all_gather(slot, output);
  for (int w = 0; w < n; ++w) {
    EXPECT_EQ(output[2 * w].item<float>(), 10.0f * w);
    EXPECT_EQ(output[2 * w + 1].item<float>(), 10.0f * w + 1);
  }
  // reduce_scatter whose output is this rank's slice of the input.
  torch::Tensor input = ramp(r, n * 2, torch::kFloat32);
  torch::Tensor mine = input.narrow(0, r * 2, 2);
  world()->reduce_scatter(input, mine);
  const float s = n * (n + 1) / 2.0f;
  EXPECT_EQ(mine[0].item<float>(), s * (r * 2 + 1));
  EXPECT_EQ(mine[1].item<float>(), s * (r * 2 + 2));
}

TEST(Mpi, BroadcastEveryDtypeFromTheLastRank) {
  REQUIRE_MPI_WORLD();
  const int r = world()->rank(), n = world()->size();
  for (auto type : kReduceTypes) {
    torch::Tensor x = r == n - 1 ? (torch::arange(6, torch::kFloat64) + 100).to(type) : torch::zeros({6}, type);
    world()->broadcast(x, n - 1);
    EXPECT_TRUE(torch::equal(x, (torch::arange(6, torch::kFloat64) + 100).to(type))) << type_name(type) << ": " << x;
  }
  torch::Tensor flags = torch::full({3}, r == 0, torch::kBool);
  world()->broadcast(flags, 0);
  EXPECT_TRUE(flags.all().item<bool>());
}

TEST(Mpi, BarrierAndArgumentErrors) {
  REQUIRE_MPI_WORLD();
  world()->barrier();
  // Checked before any communication, identically on every rank, so the world stays in step.
  torch::Tensor x = torch::ones({4});
  torch::Tensor wrong = torch::zeros({3});
  try {
    world()->all_gather(x, wrong);
    FAIL() << "must throw";
  } catch (const Error& error) {
    EXPECT_EQ(std::string(error.what()), "rank " + std::to_string(world()->rank()) + " of " +
                                             std::to_string(world()->size()) +
                                             " (world): all_gather output has 3 elements, expected " +
                                             std::to_string(world()->size()) + " x 4");
  }
  torch::Tensor ints = torch::ones({2}, torch::kInt32);
  EXPECT_THROW(world()->all_reduce(ints, ReduceOp::avg), Error);
  EXPECT_THROW(world()->broadcast(x, world()->size()), Error);
  // Still usable after argument errors.
  world()->all_reduce(x);
  EXPECT_EQ(x[0].item<float>(), static_cast<float>(world()->size()));
}

TEST(Mpi, SplitByColorOrderedByKey) {
  REQUIRE_MPI_WORLD();
  const int r = world()->rank(), n = world()->size();
  // Even and odd ranks, each group in reverse world order.
  auto part = world()->split(r % 2, -r, "parity");
  const int members = (n + 1 - r % 2) / 2;
  EXPECT_EQ(part->size(), members);
  EXPECT_EQ(part->rank(), members - 1 - r / 2);
  EXPECT_EQ(part->name(), "parity");
  torch::Tensor x = torch::tensor({static_cast<int64_t>(r)});
  part->all_reduce(x);
  int64_t expected = 0;
  for (int w = r % 2; w < n; w += 2) expected += w;
  EXPECT_EQ(x.item<int64_t>(), expected);
  // Gather order follows the key: reverse world order.
  torch::Tensor gathered = torch::zeros({members}, torch::kInt64);
  part->all_gather(torch::tensor({static_cast<int64_t>(r)}), gathered);
  for (int i = 0; i < members; ++i) EXPECT_EQ(gathered[i].item<int64_t>(), r % 2 + 2 * (members - 1 - i));
}

TEST(Mpi, ParallelGroupsTpTwo) {
  REQUIRE_MPI_WORLD();
  const int r = world()->rank(), n = world()->size();
  if (n % 2 != 0) GTEST_SKIP() << "needs an even world";
  ParallelGroups groups = make_parallel_groups(make_mpi_communicator(), 2);
  EXPECT_EQ(groups.world->rank(), r);
  EXPECT_EQ(groups.tp->size(), 2);
  EXPECT_EQ(groups.dp->size(), n / 2);
  EXPECT_EQ(groups.tp_rank(), r % 2);
  EXPECT_EQ(groups.dp_rank(), r / 2);
  EXPECT_EQ(groups.tp->name(), "tp group");
  EXPECT_EQ(groups.dp->name(), "dp group");

  // TP group of rank r: world ranks 2g, 2g + 1 with g = r / 2.
  torch::Tensor x = torch::tensor({static_cast<float>(r + 1)});
  groups.tp->all_reduce(x);
  EXPECT_EQ(x.item<float>(), static_cast<float>((2 * (r / 2) + 1) + (2 * (r / 2) + 2)));
  // DP group: ranks with the same r % 2.
  torch::Tensor y = torch::tensor({static_cast<float>(r + 1)});
  groups.dp->all_reduce(y);
  float expected = 0;
  for (int w = r % 2; w < n; w += 2) expected += static_cast<float>(w + 1);
  EXPECT_EQ(y.item<float>(), expected);
  // TP all-gather is in TP-rank order.
  torch::Tensor gathered = torch::zeros({2}, torch::kInt64);
  groups.tp->all_gather(torch::tensor({static_cast<int64_t>(r)}), gathered);
  EXPECT_EQ(gathered[0].item<int64_t>(), 2 * (r / 2));
  EXPECT_EQ(gathered[1].item<int64_t>(), 2 * (r / 2) + 1);

  EXPECT_THROW(make_parallel_groups(make_mpi_communicator(), 3), Error);  // 3 divides neither 2 nor 4
}

TEST(Mpi, WorldFactoryPicksMpiOnCpu) {
  REQUIRE_MPI_WORLD();
  auto comm = make_world_communicator("auto", /*cuda=*/false);
  EXPECT_EQ(comm->backend(), "mpi");
  EXPECT_EQ(comm->size(), world()->size());
  EXPECT_EQ(comm->rank(), world()->rank());
  torch::Tensor x = torch::ones({2}, torch::kFloat64);
  comm->all_reduce(x, ReduceOp::avg);
  EXPECT_EQ(x[1].item<double>(), 1.0);
}

TEST(Mpi, NcclWithoutGpuFailsAlikeOnEveryRank) {
  REQUIRE_MPI_WORLD();
  if (torch::cuda::is_available()) GTEST_SKIP() << "a GPU is present";
  // The MPI bootstrap world is created (collectively), then every rank refuses in the same way.
  EXPECT_THROW(make_world_communicator("nccl", /*cuda=*/true), Error);
  world()->barrier();  // still in step
}

}  // namespace
}  // namespace mlaforge::parallel
