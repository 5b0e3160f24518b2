// Launcher-environment detection and the single-process communicator: no MPI involved (the variables
// are set in-process; under mpirun the real OpenMPI variables are saved and restored around each test).
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <string>

#include "core/error.h"
#include "parallel/communicator.h"

namespace mlaforge::parallel {
namespace {

// Every variable detect_process_env reads. Each test starts with all of them unset.
const char* const kLauncherVariables[] = {
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
    "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS",
    "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_NODEID",
    "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE",
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"};

class EnvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : kLauncherVariables) {
      const char* value = std::getenv(name);
      saved_[name] = value ? std::optional<std::string>(value) : std::nullopt;
      unsetenv(name);
    }
  }
  void TearDown() override {
    for (const auto& [name, value] : saved_) {
      if (value) {
        setenv(name.c_str(), value->c_str(), 1);
      } else {
        unsetenv(name.c_str());
      }
    }
  }
  static void set(const std::map<std::string, std::string>& values) {
    for (const auto& [name, value] : values) setenv(name.c_str(), value.c_str(), 1);
  }
  // The message of the Error detect_process_env throws ("" when it does not throw).
  static std::string error_of_detect() {
    try {
      detect_process_env();
    } catch (const Error& error) {
      return error.what();
    }
    return "";
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

void expect_env(const ProcessEnv& env, int rank, int size, int local_rank, int local_size, const std::string& launcher) {
  EXPECT_EQ(env.rank, rank);
  EXPECT_EQ(env.world_size, size);
  EXPECT_EQ(env.local_rank, local_rank);
  EXPECT_EQ(env.local_world_size, local_size);
  EXPECT_EQ(env.launcher, launcher);
}

TEST_F(EnvTest, NoLauncherIsOneProcess) { expect_env(detect_process_env(), 0, 1, 0, 1, "none"); }

TEST_F(EnvTest, OpenMpi) {
  set({{"OMPI_COMM_WORLD_RANK", "5"}, {"OMPI_COMM_WORLD_SIZE", "8"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
       {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}});
  expect_env(detect_process_env(), 5, 8, 1, 4, "openmpi");
}

TEST_F(EnvTest, MpichPmi) {
  set({{"PMI_RANK", "2"}, {"PMI_SIZE", "3"}, {"MPI_LOCALRANKID", "0"}, {"MPI_LOCALNRANKS", "1"}});
  expect_env(detect_process_env(), 2, 3, 0, 1, "pmi");
}

TEST_F(EnvTest, SlurmStepWithCompressedTasksPerNode) {
  // 7 tasks: nodes 0-2 run 2 each, node 3 runs 1; this is task 6 on node 3.
  set({{"SLURM_PROCID", "6"}, {"SLURM_STEP_NUM_TASKS", "7"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "0"},
       {"SLURM_NODEID", "3"}, {"SLURM_STEP_TASKS_PER_NODE", "2(x3),1"}, {"SLURM_TASKS_PER_NODE", "4(x4)"}});
  expect_env(detect_process_env(), 6, 7, 0, 1, "slurm");
  set({{"SLURM_PROCID", "3"}, {"SLURM_LOCALID", "1"}, {"SLURM_NODEID", "1"}});
  expect_env(detect_process_env(), 3, 7, 1, 2, "slurm");
}

TEST_F(EnvTest, SlurmUniformTasksPerNode) {
  set({{"SLURM_PROCID", "5"}, {"SLURM_STEP_NUM_TASKS", "8"}, {"SLURM_LOCALID", "1"}, {"SLURM_NTASKS_PER_NODE", "4"}});
  expect_env(detect_process_env(), 5, 8, 1, 4, "slurm");
}

TEST_F(EnvTest, SlurmBatchScriptWithoutSrunIsOneProcess) {
  set({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "0"}});
  expect_env(detect_process_env(), 0, 1, 0, 1, "none");
}

TEST_F(EnvTest, Torchrun) {
  set({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"}});
  expect_env(detect_process_env(), 3, 4, 1, 2, "torchrun");
}

TEST_F(EnvTest, RankAloneIsNotTorchrun) {
  set({{"RANK", "3"}});
  expect_env(detect_process_env(), 0, 1, 0, 1, "none");
}

TEST_F(EnvTest, OpenMpiWinsOverSlurmAndTorchrun) {
  set({{"SLURM_PROCID", "0"}, {"SLURM_STEP_NUM_TASKS", "1"}, {"RANK", "0"}, {"WORLD_SIZE", "1"},
       {"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
       {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  expect_env(detect_process_env(), 1, 2, 1, 2, "openmpi");
}

TEST_F(EnvTest, MissingLocalVariablesAssumeOneNode) {
  set({{"PMI_RANK", "2"}, {"PMI_SIZE", "3"}});
  expect_env(detect_process_env(), 2, 3, 2, 3, "pmi");
}

TEST_F(EnvTest, RankNotBelowWorldSizeNamesTheVariable) {
  set({{"OMPI_COMM_WORLD_RANK", "4"}, {"OMPI_COMM_WORLD_SIZE", "4"}});
  EXPECT_EQ(error_of_detect(), "environment variable OMPI_COMM_WORLD_RANK=4 is outside [0, OMPI_COMM_WORLD_SIZE=4)");
}

TEST_F(EnvTest, NegativeRankIsAnError) {
  set({{"RANK", "-1"}, {"WORLD_SIZE", "4"}});
  EXPECT_EQ(error_of_detect(), "environment variable RANK=-1 is outside [0, WORLD_SIZE=4)");
}

TEST_F(EnvTest, NotAnIntegerNamesTheVariable) {
  set({{"PMI_RANK", "1"}, {"PMI_SIZE", "4x"}});
  EXPECT_EQ(error_of_detect(), "environment variable PMI_SIZE='4x' is not an integer");
  set({{"PMI_SIZE", ""}});
  EXPECT_EQ(error_of_detect(), "environment variable PMI_SIZE='' is not an integer");
}

TEST_F(EnvTest, ZeroWorldSize) {
  set({{"RANK", "0"}, {"WORLD_SIZE", "0"}});
  EXPECT_EQ(error_of_detect(), "environment variable WORLD_SIZE=0 must be at least 1");
}

TEST_F(EnvTest, MissingSizeNamesTheVariable) {
  set({{"OMPI_COMM_WORLD_RANK", "0"}});
  EXPECT_EQ(error_of_detect(),
            "environment variable OMPI_COMM_WORLD_SIZE is not set, but OMPI_COMM_WORLD_RANK is (incomplete launcher "
            "environment)");
}

TEST_F(EnvTest, LocalRankOutsideLocalSize) {
  set({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}});
  EXPECT_EQ(error_of_detect(), "environment variable LOCAL_RANK=2 is outside [0, LOCAL_WORLD_SIZE=2)");
}

TEST_F(EnvTest, LocalSizeAboveWorldSize) {
  set({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}, {"LOCAL_WORLD_SIZE", "4"}});
  EXPECT_EQ(error_of_detect(), "environment variable LOCAL_WORLD_SIZE=4 exceeds WORLD_SIZE=2");
}

TEST_F(EnvTest, HalfOfTheLocalPairIsAnError) {
  set({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}});
  EXPECT_EQ(error_of_detect(),
            "environment variable LOCAL_WORLD_SIZE is not set, but LOCAL_RANK is (incomplete launcher environment)");
}

TEST_F(EnvTest, SlurmTasksPerNodeWithoutThisNode) {
  set({{"SLURM_PROCID", "0"}, {"SLURM_STEP_NUM_TASKS", "4"}, {"SLURM_LOCALID", "0"}, {"SLURM_NODEID", "2"},
       {"SLURM_STEP_TASKS_PER_NODE", "2(x2)"}});
  EXPECT_EQ(error_of_detect(),
            "environment variable SLURM_STEP_TASKS_PER_NODE='2(x2)' has no entry for SLURM_NODEID=2 (expected a list "
            "like 2(x3),1)");
}

// --- the single-process communicator and the world factory -------------------------------------------

TEST_F(EnvTest, SingleCommunicatorIsTheIdentity) {
  auto comm = make_single_communicator();
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  EXPECT_EQ(comm->backend(), "single");
  EXPECT_EQ(comm->name(), "world");

  torch::Tensor x = torch::tensor({1.5f, -2.0f, 3.25f});
  comm->all_reduce(x, ReduceOp::sum);
  comm->all_reduce(x, ReduceOp::avg);
  comm->all_reduce(x, ReduceOp::max);
  EXPECT_TRUE(torch::equal(x, torch::tensor({1.5f, -2.0f, 3.25f})));

  torch::Tensor gathered = torch::zeros({3});
  comm->all_gather(x, gathered);
  EXPECT_TRUE(torch::equal(gathered, x));
  torch::Tensor scattered = torch::zeros({3});
  comm->reduce_scatter(x, scattered);
  EXPECT_TRUE(torch::equal(scattered, x));
  comm->broadcast(x, 0);
  comm->barrier();
  EXPECT_TRUE(torch::equal(x, torch::tensor({1.5f, -2.0f, 3.25f})));

  auto child = comm->split(0, 0, "tp group");
  EXPECT_EQ(child->name(), "tp group");
  EXPECT_EQ(child->size(), 1);
}

TEST_F(EnvTest, SingleCommunicatorChecksArguments) {
  auto comm = make_single_communicator();
  torch::Tensor x = torch::ones({4});
  torch::Tensor wrong = torch::zeros({3});
  EXPECT_THROW(comm->all_gather(x, wrong), Error);
  EXPECT_THROW(comm->reduce_scatter(x, wrong), Error);
  EXPECT_THROW(comm->broadcast(x, 1), Error);
  torch::Tensor ints = torch::ones({2}, torch::kInt64);
  try {
    comm->all_reduce(ints, ReduceOp::avg);
    FAIL() << "avg of int64 must throw";
  } catch (const Error& error) {
    EXPECT_EQ(std::string(error.what()), "rank 0 of 1 (world): all_reduce with avg needs a floating dtype, got int64");
  }
  torch::Tensor strided = torch::ones({4, 4}).t();
  EXPECT_THROW(comm->all_reduce(strided), Error);
}

TEST_F(EnvTest, WorldFactoryWithoutLauncher) {
  EXPECT_EQ(make_world_communicator("auto", false)->backend(), "single");
  EXPECT_EQ(make_world_communicator("single", false)->backend(), "single");
  try {
    make_world_communicator("gloo", false);
    FAIL() << "unknown backend must throw";
  } catch (const Error& error) {
    EXPECT_EQ(std::string(error.what()), "parallel.backend: unknown value 'gloo' (expected auto, single, mpi or nccl)");
  }
}

TEST_F(EnvTest, WorldFactoryRejectsSingleInAMultiProcessJob) {
  set({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "4"}});
  try {
    make_world_communicator("single", false);
    FAIL() << "must throw";
  } catch (const Error& error) {
    EXPECT_EQ(std::string(error.what()),
              "parallel.backend=single, but the launcher (openmpi) started 4 processes: use mpi or nccl (or auto)");
  }
}

TEST_F(EnvTest, WorldFactoryRejectsTorchrunJobs) {
  set({{"RANK", "0"}, {"WORLD_SIZE", "2"}});
  try {
    make_world_communicator("auto", false);
    FAIL() << "must throw";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("started by torchrun"), std::string::npos) << error.what();
  }
}

TEST_F(EnvTest, NcclWithoutGpuIsAClearError) {
  // No GPU on the CI machines: with or without NCCL compiled in, asking for it must throw, not crash.
  if (torch::cuda::is_available()) GTEST_SKIP() << "a GPU is present";
  try {
    make_world_communicator("nccl", true);
    FAIL() << "must throw";
  } catch (const Error& error) {
    // Built with NCCL (this machine: the torch wheel's): no GPU; without: the build says so.
    EXPECT_EQ(std::string(error.what()),
              nccl_available() ? "parallel.backend=nccl needs CUDA, but no CUDA device is available"
                               : "this mlaforge was built without NCCL (CMake found no nccl.h/libnccl or no CUDA "
                                 "runtime headers, see the 'NCCL backend' line of the configure output): use "
                                 "parallel.backend=mpi");
  }
}

TEST_F(EnvTest, ParallelGroupsOfOne) {
  ParallelGroups groups = make_parallel_groups(make_single_communicator(), 1);
  EXPECT_EQ(groups.tp_rank(), 0);
  EXPECT_EQ(groups.dp_rank(), 0);
  EXPECT_EQ(groups.tp->name(), "tp group");
  EXPECT_EQ(groups.dp->name(), "dp group");
  EXPECT_EQ(groups.world->size(), 1);
  try {
    make_parallel_groups(make_single_communicator(), 2);
    FAIL() << "must throw";
  } catch (const Error& error) {
    EXPECT_EQ(std::string(error.what()), "parallel.tp=2 does not divide the world size 1");
  }
}

}  // namespace
}  // namespace mlaforge::parallel
