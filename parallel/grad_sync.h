#pragma once
// The data-parallel gradient reduction of one optimizer step, overlapped with the backward pass.
//
// Without overlap every rank finishes its backward, then sums the gradients over the DP group
// (all_reduce_gradients, or reduce_scatter_gradients under ZeRO-1): the communication adds to the step.
// GradientSync starts each bucket's collective as soon as the last gradient in it is final, from an
// autograd hook (a post-accumulate-grad hook on each parameter), while the backward pass goes on computing
// the gradients of earlier layers; after the backward only the buckets still in flight are waited for.
// On GPUs the collectives run on the communicator's own stream (NCCL), on CPUs they are MPI's
// non-blocking calls, progressed from the hooks.
//
// When is a gradient final? Autograd calls a parameter's hook each time it accumulates into .grad: once
// per backward, or more often when the parameter is used in several recomputed segments. So the first
// step is a calibration run, like DDP's static-graph mode: it reduces after the backward (as without
// overlap) and records, per parameter, how many times the hook fired and in which order the gradients
// became final. Rank 0's order is broadcast, every rank builds the same buckets from it (gradients
// grouped in the order backward produces them, up to bucket_bytes each), and from the second step a
// parameter counts as final after its recorded number of accumulations. Buckets are started strictly in
// order on every rank (the collectives must match across ranks). A parameter that gets no gradient in a
// step (an MoE expert no token was routed to) holds its bucket back until the backward ends, when it
// contributes zeros. One that gets more accumulations than recorded after its bucket left is an error
// (the graph changed shape: turn overlap off).
//
// The numbers are the same as without overlap: each element is summed over the same ranks; with two
// ranks the result is bitwise that of all_reduce_gradients (a sum of two values does not depend on the
// order), checked by tests/parallel/grad_sync_test.cpp.
#include <torch/torch.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include "parallel/data_parallel.h"
#include "parallel/zero.h"

namespace mlaforge::parallel {

struct GradSyncOptions {
  size_t bucket_bytes = 25u << 20;  // per bucket (fp32 gradient bytes)
  bool zero = false;     // ZeRO-1: each rank receives the sum of its own rows only (reduce-scatter)
  bool overlap = true;   // start buckets from autograd hooks; false: everything after the backward
};

struct GradSyncStats : BucketStats {
  // BucketStats::seconds: the time finish() took (the communication the step waited for, plus packing
  // the buckets that could not start during the backward).
  size_t overlapped_buckets = 0;  // buckets started during the backward
  double hook_seconds = 0;        // time spent in the hooks (packing, starting, progressing)
};

class GradientSync {
 public:
  // params: the trained parameters (leaf tensors), in the optimizer's order, the same on every rank.
  // final_grad(i): parameter i's float32 gradient for this step once its accumulation is complete
  // (AdamW::gradient(i, zeros_for_missing)): called from the hook and, for gradients that never came,
  // with zeros_for_missing = true from finish(). The gradients it returns are where the sums land.
  using FinalGrad = std::function<torch::Tensor(size_t i, bool zeros_for_missing)>;
  GradientSync(std::vector<torch::Tensor> params, Communicator& dp, GradSyncOptions options, FinalGrad final_grad);
  ~GradientSync();
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  // Before the backward of the step's LAST micro-batch: from now on hooks start buckets.
  void arm();
  // After that backward: starts the remaining buckets, waits for all and writes the sums into the
  // gradients (under ZeRO: this rank's rows of each). A DP group of one returns at once.
  GradSyncStats finish();

  bool calibrated() const { return calibrated_; }
  size_t bucket_count() const { return buckets_.size(); }

 private:
  struct Bucket {
    std::vector<size_t> params;            // indices into params_, in bucket order
    std::unique_ptr<RowShardLayout> zero;  // ZeRO layout
    std::vector<torch::Tensor> grads;      // captured when the bucket starts
    torch::Tensor flat, mine;              // the collective's buffers
    std::unique_ptr<PendingCollective> pending;
    size_t waiting = 0;                    // parameters with a recorded count not yet final
  };

  void on_accumulated(size_t param);
  void start_ready_buckets();
  void start(Bucket& bucket);
  void build_buckets(const std::vector<size_t>& order);
  void progress();

  std::vector<torch::Tensor> params_;
  Communicator& dp_;
  GradSyncOptions options_;
  FinalGrad final_grad_;

  bool armed_ = false;
  bool calibrated_ = false;
  std::vector<int64_t> calls_, expected_;  // per parameter, this step / recorded
  std::vector<size_t> final_order_;        // calibration: parameters in the order they became final
  std::vector<size_t> bucket_of_;
  std::vector<Bucket> buckets_;
  size_t next_bucket_ = 0;                 // buckets [0, next_bucket_) have started
  GradSyncStats stats_;
};

}  // namespace mlaforge::parallel
