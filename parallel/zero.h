#pragma once
// ZeRO stage 1 (Rajbhandari et al., 2020): the optimizer state (AdamW's exp_avg and exp_avg_sq, and the
// fp32 master weights in bf16 mode) is split across the data-parallel ranks instead of replicated, so it
// costs 1/dp of the memory per rank. The weights themselves and their gradients stay whole on every rank.
//
// How a tensor is split: along its first dimension, in dp chunks of ceil(rows / dp) rows (the last ones
// shorter or empty), DP rank k owning rows [k * chunk, min((k + 1) * chunk, rows)). Row slabs keep every
// shard a rectangular piece of the tensor (and of the global tensor under tensor parallelism), which
// is what sharded checkpoints store, and each shard's AdamW update is the same element-wise arithmetic
// as the whole tensor's.
//
// One optimizer step under ZeRO-1:
//   1. reduce_scatter_gradients: every rank receives the DP SUM of its own rows of every gradient (written
//      into those rows of its gradient tensors; the other rows are left stale and must not be used).
//   2. the optimizer updates its rows (trainer/optimizer.h, AdamWOptions::shard_*).
//   3. all_gather_rows: every rank receives every other rank's updated rows of the weights.
// Per rank that is the traffic of one all-reduce (a reduce-scatter plus an all-gather), and the sum of two
// values is the same whichever collective computes it: with dp = 2 the gradients, and so (without
// clipping, whose norm is summed in another order) the weights, are bitwise those of a plain all-reduce.
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "parallel/data_parallel.h"

namespace mlaforge::parallel {

struct RowRange {
  int64_t begin = 0, end = 0;
  int64_t rows() const { return end - begin; }
};

// The rows of a tensor with `rows` rows that shard `rank` of `count` owns (see above).
inline RowRange zero_row_range(int64_t rows, int rank, int count) {
  const int64_t chunk = (rows + count - 1) / count;
  const int64_t begin = std::min<int64_t>(static_cast<int64_t>(rank) * chunk, rows);
  return {begin, std::min<int64_t>(begin + chunk, rows)};
}

// The rank-major flat layout of a list of tensors for one reduce-scatter or all-gather: a (dp, S) buffer
// whose row k holds, tensor after tensor, the rows rank k owns, each tensor's slot padded to
// ceil(rows / dp) rows, so every rank's slot for tensor i has the same size. Rank k's share of a
// reduce-scatter / all-gather of the flat (dp * S) buffer is its row k. A layout depends on the shapes
// only; the tensors are passed to each call (gradients are new tensors every step).
class RowShardLayout {
 public:
  explicit RowShardLayout(int dp) : dp_(dp) {}
  void add(const torch::Tensor& tensor);  // contiguous, at least 1-D; only its shape is kept
  size_t count() const { return rows_.size(); }
  int64_t row_size() const { return row_size_; }  // S

  torch::Tensor pack_all_ranks(const std::vector<torch::Tensor>& tensors) const;            // (dp * S,)
  torch::Tensor pack_own(const std::vector<torch::Tensor>& tensors, int rank) const;        // (S,)
  // mine (S,): this rank's rows of every tensor (a reduce-scatter's output), written into them.
  void unpack_own(const torch::Tensor& mine, const std::vector<torch::Tensor>& tensors, int rank) const;
  // all (dp * S,): every rank's rows (an all-gather's output), written into the whole tensors.
  void unpack_all(const torch::Tensor& all, const std::vector<torch::Tensor>& tensors) const;

 private:
  int dp_;
  std::vector<int64_t> rows_, row_numel_, offset_;  // per tensor; offset in a row of the buffer
  int64_t row_size_ = 0;
};

// Step 1 above: on return, rows zero_row_range(t.size(0), dp.rank(), dp.size()) of each tensor hold the
// sum of those rows over the DP group. All tensors defined, at least 1-D, same shapes and order on every
// rank. Flat buckets of up to bucket_bytes (per rank share) per collective.
BucketStats reduce_scatter_gradients(const std::vector<torch::Tensor>& grads, Communicator& dp,
                                     size_t bucket_bytes = 25u << 20);

// Step 3 above: each rank contributes its own rows of every tensor and receives the others'. Tensors of
// any dtype (the bf16 weights in bf16 mode), bucketed per dtype.
BucketStats all_gather_rows(const std::vector<torch::Tensor>& tensors, Communicator& dp,
                            size_t bucket_bytes = 25u << 20);

}  // namespace mlaforge::parallel
