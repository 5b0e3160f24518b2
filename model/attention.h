#pragma once
// Grouped-query attention (MHA is the group-size-1 case) for llama, qwen2, mistral, mixtral and gemma2,
// and the per-forward context every attention layer shares: rotary tables and masks.
#include <torch/torch.h>

#include "model/config.h"
#include "model/kv_cache.h"
#include "model/rope.h"

namespace mlaforge {

// Built once per forward by the decoder (see build_attention_context) and read by every layer.
struct AttentionContext {
  torch::Tensor cos, sin;  // (B, T, rope_dim) for the query/key positions
  // Boolean "may attend" masks (B|1, 1, T, S). Undefined means plain causal attention: either S == T
  // (SDPA's fused causal kernels) or a single query (T == 1) that may see every key.
  torch::Tensor mask_full;
  torch::Tensor mask_sliding;  // for sliding-window layers; undefined if no layer slides
  int64_t past = 0;            // tokens already in the KV cache
};

// positions (B, T): RoPE positions (restart at 0 per packed document). segment_ids (B, T) or undefined:
// tokens attend only within their own segment (packed sequences). key_valid (B, past + T) bool or
// undefined: false for padding keys.
AttentionContext build_attention_context(const ModelConfig& config, const RotaryEmbedding& rope,
                                         const torch::Tensor& positions, const torch::Tensor& segment_ids,
                                         const torch::Tensor& key_valid, int64_t past);

// softmax(q k^T * scale [softcapped] masked) v with q (B, H, T, d), k/v (B, KV, S, d); GQA by grouping.
torch::Tensor attention_core(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& mask, double scale, std::optional<double> softcap);

class GQAAttentionImpl : public torch::nn::Module {
 public:
  GQAAttentionImpl(const ModelConfig& config, int64_t layer);
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx, KVCache* cache);  // (B, T, D)
  // Every head's attention output before o_proj, (B, H, T, d): forward is wo of these, heads concatenated.
  // The converter's value refit fits the MLA layer's heads to these.
  torch::Tensor head_outputs(const torch::Tensor& x, const AttentionContext& ctx, KVCache* cache);

  torch::nn::Linear wq{nullptr}, wk{nullptr}, wv{nullptr}, wo{nullptr};

 private:
  int64_t layer_, n_head_, n_kv_, head_dim_;
  bool sliding_;
  double scale_;
  std::optional<double> softcap_;
};
TORCH_MODULE(GQAAttention);

}  // namespace mlaforge
