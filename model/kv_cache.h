#pragma once
// Decode-time cache. Each layer keeps a few buffers laid out (B, heads, capacity, width): K and V for
// GQA attention; the compressed latent and the shared rope key for MLA (heads = 1), which is the whole
// point of MLA: (kv_lora_rank + qk_rope_head_dim) values per token per layer instead of 2 * n_kv * d.
#include <torch/torch.h>

#include <vector>

namespace mlaforge {

class KVCache {
 public:
  KVCache(int64_t num_layers, int64_t capacity);

  // Writes `entries` (each (B, h, T, w)) at positions [length, length + T) of layer `layer` (allocating
  // on first use with the entries' dtype/device) and returns views over [0, length + T).
  std::vector<torch::Tensor> append(int64_t layer, const std::vector<torch::Tensor>& entries);
  // Called once after every layer has appended the same T new positions.
  void advance(int64_t tokens);
  void reset() { length_ = 0; }
  // Forgets positions [length, length()): the keys/values before `length` depend only on the tokens
  // before it (causal attention), so a conversation that shares a prefix with the cached tokens keeps
  // that prefix and re-feeds only the rest (model/generate.h, DecodeSession).
  void truncate(int64_t length);
  // Grows every allocated buffer to hold `capacity` positions, keeping the cached ones (one copy of
  // the cache); no-op when the capacity is already that large.
  void reserve(int64_t capacity);
  // Views over the cached positions [0, length()) of a layer's buffers, (B, h, length, w) each; empty
  // before the layer's first append. For benchmarks that fill a cache by copying entries.
  std::vector<torch::Tensor> entries(int64_t layer) const;

  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  // Bytes held by the allocated buffers (all layers, full capacity).
  int64_t allocated_bytes() const;

 private:
  int64_t capacity_;
  int64_t length_ = 0;
  std::vector<std::vector<torch::Tensor>> layers_;
};

}  // namespace mlaforge
