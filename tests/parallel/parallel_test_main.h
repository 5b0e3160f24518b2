#pragma once
// Shared by the parallel_tests sources: the MPI world the test main created (null when the binary runs
// as a single process, outside mpirun).
#include "parallel/communicator.h"

namespace mlaforge::parallel::testing {

Communicator* world();

}  // namespace mlaforge::parallel::testing

// Skips a test that needs several MPI processes.
#define REQUIRE_MPI_WORLD()                                                                      \
  do {                                                                                           \
    if (::mlaforge::parallel::testing::world() == nullptr)                                       \
      GTEST_SKIP() << "not launched under mpirun with several processes (ctest -L mpi runs it so)"; \
  } while (0)
