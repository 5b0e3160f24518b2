#include "parallel/grad_sync.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <chrono>
#include <numeric>

#include "core/error.h"

namespace mlaforge::parallel {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Autograd calls it after accumulating into the parameter's .grad (on the thread running the backward).
class AccumulatedHook final : public torch::autograd::PostAccumulateGradHook {
 public:
  explicit AccumulatedHook(std::function<void()> callback) : callback_(std::move(callback)) {}
  void operator()(const torch::autograd::Variable& /*param*/) override { callback_(); }

 private:
  std::function<void()> callback_;
};

}  // namespace

GradientSync::GradientSync(std::vector<torch::Tensor> params, Communicator& dp, GradSyncOptions options,
                           FinalGrad final_grad)
    : params_(std::move(params)), dp_(dp), options_(options), final_grad_(std::move(final_grad)) {
  calls_.assign(params_.size(), 0);
  expected_.assign(params_.size(), 0);
  if (dp_.size() == 1 || !options_.overlap) return;
  for (size_t i = 0; i < params_.size(); ++i) {
    const torch::Tensor& p = params_[i];
    MLA_CHECK(p.is_leaf() && p.requires_grad(), "data parallel: trained tensor ", i,
              " is not a leaf parameter that requires grad");
    torch::autograd::impl::set_post_acc_grad_hooks(p, std::make_unique<AccumulatedHook>([this, i] { on_accumulated(i); }));
  }
}

GradientSync::~GradientSync() {
  if (dp_.size() == 1 || !options_.overlap) return;
  for (const torch::Tensor& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

void GradientSync::arm() {
  if (dp_.size() == 1) return;
  armed_ = true;
  std::fill(calls_.begin(), calls_.end(), 0);
  final_order_.clear();
  next_bucket_ = 0;
  stats_ = GradSyncStats();
  for (Bucket& b : buckets_) {
    b.waiting = 0;
    for (size_t i : b.params) b.waiting += expected_[i] > 0 ? 1 : 0;
  }
}

void GradientSync::on_accumulated(size_t i) {
  if (!armed_) return;  // an earlier micro-batch: its gradients are not final yet
  const auto start = Clock::now();
  ++calls_[i];
  if (!calibrated_) {
    // Recorded in the order of each parameter's latest accumulation; the last entry per parameter counts.
    final_order_.push_back(i);
  } else {
    Bucket& b = buckets_[bucket_of_[i]];
    if (calls_[i] == expected_[i]) {
      if (--b.waiting == 0) start_ready_buckets();
    } else if (calls_[i] > expected_[i] && b.pending) {
      fail("data parallel: parameter ", i, " received gradient accumulation ", calls_[i], " of this step after its ",
           "bucket was reduced (the first step saw ", expected_[i],
           "): the backward graph changed shape between steps; set parallel.overlap_grad_reduce=false");
    }
    progress();
  }
  stats_.hook_seconds += seconds_since(start);
}

void GradientSync::start_ready_buckets() {
  while (next_bucket_ < buckets_.size()) {
    Bucket& b = buckets_[next_bucket_];
    // A member without a recorded accumulation (no gradient in the first step) can only be filled in
    // after the backward: its bucket waits, and so do the later ones (collectives start in order).
    const bool complete = b.waiting == 0 && std::all_of(b.params.begin(), b.params.end(),
                                                        [&](size_t i) { return expected_[i] > 0; });
    if (!complete) return;
    start(b);
    ++next_bucket_;
    stats_.overlapped_buckets += 1;
  }
}

void GradientSync::start(Bucket& b) {
  torch::NoGradGuard no_grad;
  b.grads.clear();
  for (size_t i : b.params) b.grads.push_back(final_grad_(i, /*zeros_for_missing=*/true));
  if (options_.zero) {
    b.flat = b.zero->pack_all_ranks(b.grads);  // (dp * S,)
    b.mine = torch::empty({b.zero->row_size()}, b.flat.options());
    b.pending = dp_.reduce_scatter_async(b.flat, b.mine);
  } else {
    std::vector<torch::Tensor> parts;
    for (const torch::Tensor& g : b.grads) parts.push_back(g.reshape({-1}));
    b.flat = torch::cat(parts);  // (sum of numel,)
    b.pending = dp_.all_reduce_async(b.flat);
  }
  stats_.buckets += 1;
  stats_.bytes += static_cast<size_t>(b.flat.nbytes());
}

// MPI moves a non-blocking collective forward only inside MPI calls: test the oldest one in flight.
void GradientSync::progress() {
  for (size_t k = 0; k < next_bucket_; ++k) {
    Bucket& b = buckets_[k];
    if (b.pending && !b.pending->test()) return;
  }
}

void GradientSync::build_buckets(const std::vector<size_t>& order) {
  buckets_.clear();
  bucket_of_.assign(params_.size(), 0);
  size_t bytes = 0;
  for (size_t i : order) {
    const size_t size = static_cast<size_t>(params_[i].numel()) * sizeof(float);  // fp32 gradients
    if (buckets_.empty() || (bytes > 0 && bytes + size > options_.bucket_bytes)) {
      buckets_.emplace_back();
      if (options_.zero) buckets_.back().zero = std::make_unique<RowShardLayout>(dp_.size());
      bytes = 0;
    }
    Bucket& b = buckets_.back();
    b.params.push_back(i);
    if (b.zero) {
      MLA_CHECK(params_[i].dim() >= 1, "ZeRO: trained tensor ", i, " is a scalar; shards are rows of tensors");
      b.zero->add(params_[i]);
    }
    bucket_of_[i] = buckets_.size() - 1;
    bytes += size;
  }
}

GradSyncStats GradientSync::finish() {
  if (dp_.size() == 1) {
    armed_ = false;
    return {};
  }
  const auto start_time = Clock::now();
  if (!armed_) arm();  // a caller that never armed: everything happens here
  if (!calibrated_) {
    // Parameters in the order their gradients became final on rank 0 (the last accumulation of each),
    // then the ones that got none; every rank builds its buckets from rank 0's order.
    std::vector<size_t> order;
    std::vector<bool> seen(params_.size(), false);
    for (auto it = final_order_.rbegin(); it != final_order_.rend(); ++it) {
      if (!seen[*it]) order.push_back(*it);
      seen[*it] = true;
    }
    std::reverse(order.begin(), order.end());
    for (size_t i = 0; i < params_.size(); ++i)
      if (!seen[i]) order.push_back(i);
    const auto device = params_.empty() ? torch::Device(torch::kCPU) : params_.front().device();
    torch::Tensor shared = torch::tensor(std::vector<int64_t>(order.begin(), order.end()), torch::kInt64).to(device);
    dp_.broadcast(shared, 0);
    shared = shared.cpu();
    const int64_t* ids = shared.data_ptr<int64_t>();
    order.assign(ids, ids + shared.numel());
    build_buckets(order);
    expected_ = calls_;
    calibrated_ = true;
    final_order_.clear();
  }
  for (; next_bucket_ < buckets_.size(); ++next_bucket_) start(buckets_[next_bucket_]);
  torch::NoGradGuard no_grad;
  for (Bucket& b : buckets_) {
    b.pending->wait();
    if (options_.zero) {
      b.zero->unpack_own(b.mine, b.grads, dp_.rank());
    } else {
      int64_t offset = 0;
      for (torch::Tensor& g : b.grads) {
        g.copy_(b.flat.narrow(0, offset, g.numel()).view(g.sizes()));
        offset += g.numel();
      }
    }
    b.pending.reset();
    b.grads.clear();
    b.flat = torch::Tensor();
    b.mine = torch::Tensor();
  }
  armed_ = false;
  GradSyncStats stats = stats_;
  stats.seconds = seconds_since(start_time);
  return stats;
}

}  // namespace mlaforge::parallel
