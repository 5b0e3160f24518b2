#include "parallel/data_parallel.h"

#include <chrono>

#include "core/error.h"

namespace mlaforge::parallel {

BucketStats all_reduce_gradients(const std::vector<torch::Tensor>& grads, Communicator& dp, size_t bucket_bytes) {
  BucketStats stats;
  if (dp.size() == 1) return stats;
  const auto start = std::chrono::steady_clock::now();
  torch::NoGradGuard no_grad;
  size_t i = 0;
  while (i < grads.size()) {
    // The bucket: grads[i, j) of one dtype and device, at least one tensor, at most bucket_bytes beyond it.
    MLA_CHECK(grads[i].defined(), "data parallel: gradient ", i, " is undefined (materialise missing gradients first)");
    const auto options = grads[i].options();
    size_t j = i, bytes = 0;
    while (j < grads.size() && grads[j].defined() && grads[j].scalar_type() == grads[i].scalar_type() &&
           grads[j].device() == grads[i].device() && (j == i || bytes + grads[j].nbytes() <= bucket_bytes)) {
      bytes += grads[j].nbytes();
      ++j;
    }
    std::vector<torch::Tensor> flat_parts;
    for (size_t k = i; k < j; ++k) flat_parts.push_back(grads[k].reshape({-1}));
    torch::Tensor flat = torch::cat(flat_parts).to(options);  // (sum of numel,)
    dp.all_reduce(flat, ReduceOp::sum);
    int64_t offset = 0;
    for (size_t k = i; k < j; ++k) {
      const int64_t n = grads[k].numel();
      grads[k].copy_(flat.narrow(0, offset, n).view(grads[k].sizes()));
      offset += n;
    }
    stats.buckets += 1;
    stats.bytes += bytes;
    i = j;
  }
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

std::vector<double> all_reduce_scalars(const std::vector<double>& values, Communicator& group, torch::Device device) {
  if (group.size() == 1 || values.empty()) return values;
  torch::Tensor t = torch::tensor(values, torch::kFloat64).to(device);
  group.all_reduce(t, ReduceOp::sum);
  t = t.cpu();
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

bool replicas_identical(const std::vector<torch::Tensor>& tensors, Communicator& group) {
  if (group.size() == 1) return true;
  torch::NoGradGuard no_grad;
  int64_t checksum = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const torch::Tensor& t = tensors[i];
    // The bit pattern as integers of the element's width, widened to int64 and weighted by position so
    // that swapped elements differ too; int64 sums wrap identically on every rank.
    torch::Tensor bits;
    switch (t.element_size()) {
      case 8: bits = t.detach().contiguous().view(torch::kInt64); break;
      case 4: bits = t.detach().contiguous().view(torch::kInt32).to(torch::kInt64); break;
      case 2: bits = t.detach().contiguous().view(torch::kInt16).to(torch::kInt64); break;
      default: bits = t.detach().contiguous().view(torch::kUInt8).to(torch::kInt64); break;
    }
    bits = bits.reshape({-1});
    const torch::Tensor weights = torch::arange(bits.numel(), bits.options()).remainder_(1021).add_(1 + static_cast<int64_t>(i));
    checksum += (bits * weights).sum().item<int64_t>();
  }
  torch::Tensor hi = torch::tensor({checksum}, torch::kInt64), lo = torch::tensor({-checksum}, torch::kInt64);
  if (!tensors.empty() && tensors.front().is_cuda()) {
    hi = hi.to(tensors.front().device());
    lo = lo.to(tensors.front().device());
  }
  group.all_reduce(hi, ReduceOp::max);
  group.all_reduce(lo, ReduceOp::max);
  return hi.item<int64_t>() == -lo.item<int64_t>();
}

}  // namespace mlaforge::parallel
