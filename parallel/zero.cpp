#include "parallel/zero.h"

#include <chrono>

#include "core/error.h"

namespace mlaforge::parallel {

void RowShardLayout::add(const torch::Tensor& tensor) {
  const int64_t rows = tensor.size(0);
  const int64_t row_numel = rows == 0 ? 0 : tensor.numel() / rows;
  rows_.push_back(rows);
  row_numel_.push_back(row_numel);
  offset_.push_back(row_size_);
  row_size_ += (rows + dp_ - 1) / dp_ * row_numel;
}

torch::Tensor RowShardLayout::pack_all_ranks(const std::vector<torch::Tensor>& tensors) const {
  std::vector<torch::Tensor> parts;
  for (size_t i = 0; i < rows_.size(); ++i) {
    const torch::Tensor t = tensors[i].view({rows_[i], row_numel_[i]});
    const int64_t padded_rows = (rows_[i] + dp_ - 1) / dp_ * dp_;
    torch::Tensor padded = t;
    if (padded_rows > rows_[i]) padded = torch::cat({t, torch::zeros({padded_rows - rows_[i], row_numel_[i]}, t.options())});
    parts.push_back(padded.reshape({dp_, padded_rows / dp_ * row_numel_[i]}));  // (dp, slot)
  }
  return torch::cat(parts, 1).reshape({-1});  // (dp * S,)
}

torch::Tensor RowShardLayout::pack_own(const std::vector<torch::Tensor>& tensors, int rank) const {
  torch::Tensor out = torch::zeros({row_size_}, tensors.front().options());
  for (size_t i = 0; i < rows_.size(); ++i) {
    const RowRange r = zero_row_range(rows_[i], rank, dp_);
    const torch::Tensor t = tensors[i].view({rows_[i], row_numel_[i]});
    out.narrow(0, offset_[i], r.rows() * row_numel_[i]).copy_(t.narrow(0, r.begin, r.rows()).reshape({-1}));
  }
  return out;
}

void RowShardLayout::unpack_own(const torch::Tensor& mine, const std::vector<torch::Tensor>& tensors, int rank) const {
  for (size_t i = 0; i < rows_.size(); ++i) {
    const RowRange r = zero_row_range(rows_[i], rank, dp_);
    const torch::Tensor t = tensors[i].view({rows_[i], row_numel_[i]});
    t.narrow(0, r.begin, r.rows()).copy_(mine.narrow(0, offset_[i], r.rows() * row_numel_[i]).view({r.rows(), row_numel_[i]}));
  }
}

void RowShardLayout::unpack_all(const torch::Tensor& all, const std::vector<torch::Tensor>& tensors) const {
  const torch::Tensor grid = all.view({dp_, row_size_});
  for (size_t i = 0; i < rows_.size(); ++i) {
    const int64_t slot = (rows_[i] + dp_ - 1) / dp_ * row_numel_[i];
    const torch::Tensor gathered = grid.narrow(1, offset_[i], slot).reshape({-1, row_numel_[i]});
    tensors[i].view({rows_[i], row_numel_[i]}).copy_(gathered.narrow(0, 0, rows_[i]));
  }
}

namespace {

struct Bucket {
  RowShardLayout layout;
  std::vector<torch::Tensor> tensors;
};

// Consecutive tensors of one dtype and device, up to bucket_bytes of per-rank share each.
std::vector<Bucket> make_buckets(const std::vector<torch::Tensor>& tensors, int dp, size_t bucket_bytes,
                                 const char* what) {
  std::vector<Bucket> buckets;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const torch::Tensor& t = tensors[i];
    MLA_CHECK(t.defined(), "ZeRO: ", what, " ", i, " is undefined (materialise missing gradients first)");
    MLA_CHECK(t.dim() >= 1, "ZeRO: ", what, " ", i, " is a scalar; shards are rows of tensors");
    MLA_CHECK(t.is_contiguous(), "ZeRO: ", what, " ", i, " is not contiguous");
    const int64_t rows = t.size(0);
    const size_t slot_bytes =
        static_cast<size_t>((rows + dp - 1) / dp * (rows == 0 ? 0 : t.numel() / rows)) * t.element_size();
    const bool fits = !buckets.empty() && buckets.back().tensors.front().scalar_type() == t.scalar_type() &&
                      buckets.back().tensors.front().device() == t.device() &&
                      static_cast<size_t>(buckets.back().layout.row_size()) * t.element_size() + slot_bytes <= bucket_bytes;
    if (!fits) buckets.push_back({RowShardLayout(dp), {}});
    buckets.back().layout.add(t);
    buckets.back().tensors.push_back(t);
  }
  return buckets;
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
  for (const Bucket& b : make_buckets(grads, dp.size(), bucket_bytes, "gradient")) {
    if (b.layout.row_size() == 0) continue;
    torch::Tensor all = b.layout.pack_all_ranks(b.tensors);  // (dp * S,)
    torch::Tensor mine = torch::empty({b.layout.row_size()}, all.options());
    dp.reduce_scatter(all, mine, ReduceOp::sum);
    b.layout.unpack_own(mine, b.tensors, dp.rank());
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
  for (const Bucket& b : make_buckets(tensors, dp.size(), bucket_bytes, "tensor")) {
    if (b.layout.row_size() == 0) continue;
    torch::Tensor all = torch::empty({dp.size() * b.layout.row_size()}, b.tensors.front().options());
    dp.all_gather(b.layout.pack_own(b.tensors, dp.rank()), all);
    b.layout.unpack_all(all, b.tensors);
    stats.buckets += 1;
    stats.bytes += static_cast<size_t>(all.nbytes());
  }
  stats.seconds = seconds_since(start);
  return stats;
}

}  // namespace mlaforge::parallel
