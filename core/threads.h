#pragma once
#include <cstddef>
#include <functional>

namespace mlaforge {

// Number of threads to use for CPU work: MLAFORGE_NUM_THREADS, else the CPUs this process may run on
// (sched_getaffinity, so taskset/cgroups/mpirun binding are respected).
int default_num_threads();

// Runs fn(begin, end) over [0, n) split into contiguous chunks on up to num_threads std::threads.
void parallel_for(size_t n, int num_threads, const std::function<void(size_t, size_t)>& fn);

}  // namespace mlaforge
