#include "parallel/zero.h"

#include <chrono>

#include "core/error.h"

namespace mlaforge::parallel {
namespace {

// A bucket laid out rank-major: the buffer is (dp, S), row k holding, tensor after tensor, the rows that
// rank k owns (each tensor padded to dp * chunk rows, so every rank's slot for tensor i has the same
// size chunk_i * row_numel_i). Rank k's share of a reduce-scatter / all-gather is row k.
struct Bucket {
  std::vector<torch::Tensor> tensors;  // as (rows, row_numel) views
  std::vector<int64_t> offset, slot;   // per tensor: offset in a row of the buffer, and slot size
  int64_t row_size = 0;                // S
};

using TensorGroups = std::vector<Bucket>;

TensorGroups make_buckets(const std::vector<torch::Tensor>& tensors, int dp, size_t bucket_bytes, const char* what) {
  TensorGroups buckets;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const torch::Tensor& t = tensors[i];
    MLA_CHECK(t.defined(), "ZeRO: ", what, " ", i, " is undefined (materialise missing gradients first)");
    MLA_CHECK(t.dim() >= 1, "ZeRO: ", what, " ", i, " is a scalar; shards are rows of tensors");
    MLA_CHECK(t.is_contiguous(), "ZeRO: ", what, " ", i, " is not contiguous");
    const int64_t rows = t.size(0);
    const int64_t row_numel = rows == 0 ? 0 : t.numel() / rows;
    const int64_t slot = (rows + dp - 1) / dp * row_numel;
    const size_t slot_bytes = static_cast<size_t>(slot) * t.element_size();
    const bool fits = !buckets.empty() && buckets.back().tensors.front().scalar_type() == t.scalar_type() &&
                      buckets.back().tensors.front().device() == t.device() &&
                      static_cast<size_t>(buckets.back().row_size) * t.element_size() + slot_bytes <= bucket_bytes;
    if (!fits) buckets.emplace_back();
    Bucket& b = buckets.back();
    b.tensors.push_back(t.view({rows, row_numel}));
    b.offset.push_back(b.row_size);
    b.slot.push_back(slot);
    b.row_size += slot;
  }
  return buckets;
}

// (dp, S): every rank's rows of every tensor of the bucket, zero padded.
torch::Tensor pack_all_ranks(const Bucket& b, int dp) {
  std::vector<torch::Tensor> parts;
  for (size_t i = 0; i < b.tensors.size(); ++i) {
    const torch::Tensor& t = b.tensors[i];  // (rows, row_numel)
    const int64_t padded_rows = b.slot[i] == 0 ? 0 : b.slot[i] / t.size(1) * dp;
    torch::Tensor padded = t;
    if (padded_rows > t.size(0))
      padded = torch::cat({t, torch::zeros({padded_rows - t.size(0), t.size(1)}, t.options())});
    parts.push_back(padded.reshape({dp, b.slot[i]}));
  }
  return torch::cat(parts, 1);  // (dp, S)
}

// (S,): this rank's rows of every tensor of the bucket, zero padded.
torch::Tensor pack_own(const Bucket& b, int rank, int dp) {
  torch::Tensor out = torch::zeros({b.row_size}, b.tensors.front().options());
  for (size_t i = 0; i < b.tensors.size(); ++i) {
    const torch::Tensor& t = b.tensors[i];
    const RowRange r = zero_row_range(t.size(0), rank, dp);
    out.narrow(0, b.offset[i], r.rows() * t.size(1)).copy_(t.narrow(0, r.begin, r.rows()).reshape({-1}));
  }
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

BucketStats reduce_scatter_gradients(const std::vector<torch::Tensor>& grads, Communicator& dp, size_t bucket_bytes) {
  BucketStats stats;
  if (dp.size() == 1) return stats;
  const auto start = std::chrono::steady_clock::now();
  torch::NoGradGuard no_grad;
  const int n = dp.size(), rank = dp.rank();
  for (const Bucket& b : make_buckets(grads, n, bucket_bytes, "gradient")) {
    if (b.row_size == 0) continue;
    torch::Tensor all = pack_all_ranks(b, n).reshape({-1});  // (dp * S,)
    torch::Tensor mine = torch::empty({b.row_size}, all.options());
    dp.reduce_scatter(all, mine, ReduceOp::sum);
    for (size_t i = 0; i < b.tensors.size(); ++i) {
      const torch::Tensor& t = b.tensors[i];
      const RowRange r = zero_row_range(t.size(0), rank, n);
      t.narrow(0, r.begin, r.rows()).copy_(mine.narrow(0, b.offset[i], r.rows() * t.size(1)).view({r.rows(), t.size(1)}));
    }
    stats.buckets += 1;
    stats.bytes += static_cast<size_t>(all.nbytes());
  }
  stats.seconds = seconds_since(start);
  return stats;
}

BucketStats all_gather_rows(const std::vector<torch::Tensor>& tensors, Communicator& dp, size_t bucket_bytes) {
  BucketStats stats;
  if (dp.size() == 1) return stats;
  const auto start = std::chrono::steady_clock::now();
  torch::NoGradGuard no_grad;
  const int n = dp.size(), rank = dp.rank();
  for (const Bucket& b : make_buckets(tensors, n, bucket_bytes, "tensor")) {
    if (b.row_size == 0) continue;
    torch::Tensor all = torch::empty({n * b.row_size}, b.tensors.front().options());
    dp.all_gather(pack_own(b, rank, n), all);
    const torch::Tensor grid = all.view({n, b.row_size});
    for (size_t i = 0; i < b.tensors.size(); ++i) {
      const torch::Tensor& t = b.tensors[i];  // (rows, row_numel)
      const torch::Tensor gathered = grid.narrow(1, b.offset[i], b.slot[i]).reshape({-1, t.size(1)});
      t.copy_(gathered.narrow(0, 0, t.size(0)));
    }
    stats.buckets += 1;
    stats.bytes += static_cast<size_t>(all.nbytes());
  }
  stats.seconds = seconds_since(start);
  return stats;
}

}  // namespace mlaforge::parallel
