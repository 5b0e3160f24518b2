#pragma once
// Multi-head Latent Attention (DeepSeek-V2/V3; what TransMLA converts GQA models into), with the two
// equivalent ways of computing it side by side:
//
//   naive     decompress per-head keys and values from the latent (k_nope, v = W_UK c, W_UV c), then
//             ordinary multi-head attention. Cheap when every key is also a query (training, prefill):
//             the decompression is one GEMM over the sequence and SDPA's fused kernels do the rest.
//   absorbed  never decompress: fold W_UK into the query and W_UV into the output, and attend directly
//             over the cached latent. Cheap when few queries meet many keys (decoding): the cache holds
//             only (kv_lora_rank + qk_rope_head_dim) values per token per layer, and each step reads it
//             once for all heads instead of expanding it to H * (nope + v) values per token.
//
// Both paths compute the same function (up to rounding): with c the normalized latent, q_nope . (W_UK^h c)
// = (W_UK^h^T q_nope) . c, and sum_s p_s W_UV^h c_s = W_UV^h (sum_s p_s c_s).
//
// Family features a converted gemma2/mixtral keeps: sliding-window layers (the same layers GQA attention
// slides on, ModelConfig::layer_sliding, masked with AttentionContext::mask_sliding) and Gemma2's logit
// soft-capping tanh(s / cap) * cap on the scaled scores. SDPA cannot soft-cap, so with a cap both paths
// compute explicit scores; the absorbed path stays exact since its scores q_lat . c + q_pe . k_pe are the
// naive path's q . k.
//
// Parameter names follow model/weight_names.cpp: wq (or wq_a, q_a_norm, wq_b), wkv_a, kv_a_norm, wkv_b, wo.
#include <torch/torch.h>

#include "model/attention.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/layers.h"
#include "model/tp_hooks.h"

namespace mlaforge {

enum class MLAPath {
  automatic,  // absorbed when a KV cache is passed (decoding), naive otherwise (training, scoring)
  naive,      // always decompress (with a cache too: the cached latent is decompressed, like transformers)
  absorbed,   // always absorb (without a cache too: for tests and for long-context scoring)
};
std::string mla_path_name(MLAPath path);

class MLAAttentionImpl : public torch::nn::Module {
 public:
  MLAAttentionImpl(const ModelConfig& config, int64_t layer);

  // x (B, T, D) -> (B, T, D). With a cache, this step's latent c_kv (B, 1, T, R) and rope key
  // k_pe (B, 1, T, rope) are appended to it and attention runs over past + T positions.
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx, KVCache* cache);

  // The attention-weighted latent of every head, sum_s p_s c_s (B, H, T, R) without a cache: what the
  // absorbed path multiplies by W_UV^h. The converter's value refit solves W_UV against it.
  torch::Tensor latent_context(const torch::Tensor& x, const AttentionContext& ctx);
  void set_path(MLAPath path) { path_ = path; }
  MLAPath path() const { return path_; }
  // Which path a forward with (or without) a cache takes.
  bool uses_absorbed(bool has_cache) const {
    return path_ == MLAPath::absorbed || (path_ == MLAPath::automatic && has_cache);
  }

  // Query: either one projection (q_lora_rank == 0) or a low-rank pair with an RMSNorm in between.
  torch::nn::Linear wq{nullptr};                   // (H * (nope + rope), D)
  torch::nn::Linear wq_a{nullptr}, wq_b{nullptr};  // (Rq, D), (H * (nope + rope), Rq)
  RMSNorm q_a_norm{nullptr};                       // (Rq,)
  // Keys and values: the joint down-projection to the latent plus the shared rope key, its norm, and
  // the up-projection of the latent to per-head nope keys and values.
  torch::nn::Linear wkv_a{nullptr};  // (R + rope, D): rows [0, R) latent, rows [R, R + rope) rope key
  RMSNorm kv_a_norm{nullptr};        // (R,)
  torch::nn::Linear wkv_b{nullptr};  // (H * (nope + v), R): per head, nope key rows then value rows
  torch::nn::Linear wo{nullptr};     // (D, H * v)
  // Tensor parallelism (model/tp_hooks.h), set by DecoderImpl::set_tp_hooks; null on a single device.
  TensorParallelHooks* tp = nullptr;

 private:
  // The two attention kernels. q_nope (B, H, T, nope) and q_pe (B, H, T, rope, rotated); latent
  // (B, 1, S, R + rope) = [c_kv | k_pe] for every key position; mask as in AttentionContext (the full
  // or, on a sliding layer, the sliding one).
  // Both return (B, H, T, v).
  torch::Tensor attend_naive(const torch::Tensor& q_nope, const torch::Tensor& q_pe, const torch::Tensor& latent,
                             const torch::Tensor& mask);
  torch::Tensor attend_absorbed(const torch::Tensor& q_nope, const torch::Tensor& q_pe,
                                const torch::Tensor& latent, const torch::Tensor& mask);
  // attend_absorbed before W_UV: sum_s p_s c_s, (B, H, T, R).
  torch::Tensor attend_latent(const torch::Tensor& q_nope, const torch::Tensor& q_pe, const torch::Tensor& latent,
                              const torch::Tensor& mask);
  // The query halves and this step's latent row [c_kv | k_pe] (B, 1, T, R + rope), before any cache.
  struct Projected {
    torch::Tensor q_nope, q_pe, latent;
  };
  Projected project(const torch::Tensor& x, const AttentionContext& ctx);
  torch::Tensor rope(const torch::Tensor& x, const AttentionContext& ctx) const;

  int64_t layer_, n_head_, nope_, rope_, v_dim_, kv_rank_;
  bool rope_interleave_;
  bool latent_norm_;  // false: no kv_a_norm (mlaforge_latent_norm, exact conversions)
  bool sliding_;      // this layer attends through ctx.mask_sliding
  double scale_;
  std::optional<double> softcap_;  // Gemma2 attn_logit_softcapping
  MLAPath path_ = MLAPath::automatic;
};
TORCH_MODULE(MLAAttention);

}  // namespace mlaforge
