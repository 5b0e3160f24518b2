// parallel_tests' main. Three ways to run it:
//   parallel_tests                       one process: environment and single-communicator tests (MPI tests skip)
//   mpirun -np N parallel_tests          every rank runs every test; collectives are checked on each rank,
//                                        the failure counts are summed so all ranks exit alike
//   mpirun -np N parallel_tests --mode=dead-rank|stuck-rank
//                                        the failure drills of tests/parallel/run_mpi.sh: rank 1 kills
//                                        itself (SIGKILL: dead) or sleeps (stuck) before an all_reduce with a 3 s
//                                        timeout; the other ranks must end the job with an error
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include <signal.h>
#include <unistd.h>

#include "core/error.h"
#include "parallel/communicator.h"
#include "parallel_test_main.h"

namespace mlaforge::parallel::testing {
namespace {
Communicator* g_world = nullptr;

// On ranks other than 0 only failures are printed, prefixed with the rank (rank 0 prints the usual report).
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, result.file_name() ? result.file_name() : "?",
                 result.line_number(), result.summary());
  }

 private:
  int rank_;
};

int run_drill(const std::string& mode) {
  auto comm = make_mpi_communicator();
  comm->set_timeout(std::chrono::seconds(3));
  try {
    comm->barrier();  // #1: every rank is up
    if (comm->rank() == 1) {
      if (mode == "dead-rank") ::kill(::getpid(), SIGKILL);  // killed mid-step: no cleanup, no MPI_Finalize
      std::this_thread::sleep_for(std::chrono::hours(1));  // stuck (the others' abort ends it)
    }
    torch::Tensor x = torch::ones({4});
    comm->all_reduce(x);  // #2: cannot complete without rank 1
    std::fprintf(stderr, "rank %d: all_reduce completed without rank 1\n", comm->rank());
    return 0;
  } catch (const Error& error) {
    std::fprintf(stderr, "mlaforge: error: %s\n", error.what());
    abort_job(1);
  }
}

}  // namespace

Communicator* world() { return g_world; }

}  // namespace mlaforge::parallel::testing

int main(int argc, char** argv) {
  using namespace mlaforge::parallel;
  namespace pt = mlaforge::parallel::testing;
  torch::set_num_threads(1);
  try {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.rfind("--mode=", 0) == 0) return pt::run_drill(arg.substr(7));
    }
    ::testing::InitGoogleTest(&argc, argv);
    std::unique_ptr<Communicator> world;
    if (detect_process_env().world_size > 1) {
      world = make_mpi_communicator();
      world->set_timeout(std::chrono::seconds(60));
      pt::g_world = world.get();
      if (world->rank() != 0) {
        auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
        delete listeners.Release(listeners.default_result_printer());
        listeners.Append(new pt::RankFailurePrinter(world->rank()));
      }
    }
    int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
    if (world) {
      torch::Tensor count = torch::tensor({static_cast<int64_t>(failed)});
      world->all_reduce(count);
      failed = static_cast<int>(count.item<int64_t>());
      if (world->rank() == 0 && failed > 0) std::fprintf(stderr, "%d of %d ranks had failures\n", failed, world->size());
      pt::g_world = nullptr;
    }
    return failed > 0 ? 1 : 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "parallel_tests: error: %s\n", error.what());
    abort_job(1);
  }
}
