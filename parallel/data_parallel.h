#pragma once
// Data parallelism: every DP rank runs the same model on its own slice of the global batch (the data
// loader hands each rank its micro-batches, data/data_loader.h), then the gradients are SUMMED over the
// DP group. The losses are already normalised by the whole global step's token count
// (trainer/losses.h), so the sum is the gradient of the global objective, and every rank applies the
// identical update: replicas stay bitwise equal without ever broadcasting weights.
//
// The reduction packs the gradients into flat buckets (consecutive gradients of one dtype and device, up
// to bucket_bytes each), one all-reduce per bucket: a few large messages instead of one per tensor.
#include <torch/torch.h>

#include <cstddef>
#include <vector>

#include "parallel/communicator.h"

namespace mlaforge::parallel {

struct BucketStats {
  size_t buckets = 0;
  size_t bytes = 0;
  double seconds = 0;  // wall time inside the reduction (copies + all-reduces)
};

// Sums `grads` over `dp` in place (all defined, same shapes and order on every rank). A group of one
// returns at once.
BucketStats all_reduce_gradients(const std::vector<torch::Tensor>& grads, Communicator& dp,
                                 size_t bucket_bytes = 25u << 20);

// Sums a few scalars (loss sums, token counts) over a group, as float64 on `device` (NCCL reduces CUDA
// tensors only): one message.
std::vector<double> all_reduce_scalars(const std::vector<double>& values, Communicator& group,
                                       torch::Device device = torch::kCPU);

// Whether every rank of `group` holds bitwise the same tensors: a position-weighted checksum of their bit
// patterns, compared by a max and a min all-reduce. Data-parallel replicas must (see above); the trainer
// checks it at the end of a run.
bool replicas_identical(const std::vector<torch::Tensor>& tensors, Communicator& group);

}  // namespace mlaforge::parallel
