#include "model/kv_cache.h"

#include "core/error.h"

namespace mlaforge {

KVCache::KVCache(int64_t num_layers, int64_t capacity) : capacity_(capacity), layers_(num_layers) {
  MLA_CHECK(capacity > 0, "KV cache capacity must be positive");
}

std::vector<torch::Tensor> KVCache::append(int64_t layer, const std::vector<torch::Tensor>& entries) {
  MLA_CHECK(layer >= 0 && layer < num_layers(), "KV cache has no layer ", layer);
  auto& buffers = layers_[static_cast<size_t>(layer)];
  if (buffers.empty()) {
    for (const auto& e : entries) {
      TORCH_CHECK(e.dim() == 4, "cache entries must be (B, h, T, w)");
      buffers.push_back(torch::empty({e.size(0), e.size(1), capacity_, e.size(3)}, e.options()));
    }
  }
  MLA_CHECK(buffers.size() == entries.size(), "KV cache layer ", layer, ": entry count changed");
  std::vector<torch::Tensor> views;
  for (size_t i = 0; i < entries.size(); ++i) {
    const int64_t t = entries[i].size(2);
    MLA_CHECK(length_ + t <= capacity_, "KV cache full: ", length_, " + ", t, " tokens exceeds capacity ",
              capacity_, " (raise --max-seq-len)");
    buffers[i].narrow(2, length_, t).copy_(entries[i]);
    views.push_back(buffers[i].narrow(2, 0, length_ + t));
  }
  return views;
}

void KVCache::advance(int64_t tokens) { length_ += tokens; }

void KVCache::truncate(int64_t length) {
  MLA_CHECK(length >= 0 && length <= length_, "KV cache truncate to ", length, ": only ", length_,
            " positions are cached");
  length_ = length;
}

void KVCache::reserve(int64_t capacity) {
  if (capacity <= capacity_) return;
  for (auto& layer : layers_) {
    for (auto& b : layer) {
      auto grown = torch::empty({b.size(0), b.size(1), capacity, b.size(3)}, b.options());  // (B, h, cap, w)
      grown.narrow(2, 0, length_).copy_(b.narrow(2, 0, length_));
      b = grown;
    }
  }
  capacity_ = capacity;
}

std::vector<torch::Tensor> KVCache::entries(int64_t layer) const {
  MLA_CHECK(layer >= 0 && layer < num_layers(), "KV cache has no layer ", layer);
  std::vector<torch::Tensor> views;
  for (const auto& b : layers_[static_cast<size_t>(layer)]) views.push_back(b.narrow(2, 0, length_));
  return views;
}

int64_t KVCache::allocated_bytes() const {
  int64_t bytes = 0;
  for (const auto& layer : layers_)
    for (const auto& b : layer) bytes += b.numel() * static_cast<int64_t>(b.element_size());
  return bytes;
}

}  // namespace mlaforge
