#include "model/attention.h"

#include "core/error.h"
#include "model/rope.h"

namespace mlaforge {

AttentionContext build_attention_context(const ModelConfig& c, const RotaryEmbedding& rope, const torch::Tensor& positions,
                                         const torch::Tensor& segment_ids, const torch::Tensor& key_valid,
                                         int64_t past) {
  AttentionContext ctx;
  ctx.past = past;
  std::tie(ctx.cos, ctx.sin) = rope.cos_sin(positions);

  const int64_t T = positions.size(1);
  const int64_t S = past + T;
  const bool any_sliding = c.sliding_window.has_value() &&
                           std::any_of(c.layer_sliding.begin(), c.layer_sliding.end(), [](bool b) { return b; });
  // No mask needed when causality is all there is: a fresh sequence (SDPA's fused causal kernel), or a
  // single decode step, which may see every cached key.
  const bool plain_causal = (past == 0 || T == 1) && !segment_ids.defined() && !key_valid.defined();
  if (plain_causal && !any_sliding) return ctx;

  auto opts = torch::TensorOptions().dtype(torch::kInt64).device(positions.device());
  auto q_idx = (torch::arange(T, opts) + past).unsqueeze(1);  // (T, 1) index into the key sequence
  auto k_idx = torch::arange(S, opts).unsqueeze(0);           // (1, S)
  auto causal = (k_idx <= q_idx).unsqueeze(0).unsqueeze(0);   // (1, 1, T, S)
  auto extra = torch::ones({1, 1, T, S}, opts.dtype(torch::kBool));
  if (segment_ids.defined()) {
    MLA_CHECK(past == 0, "packed sequences (segment ids) cannot be combined with a KV cache");
    extra = extra.logical_and(segment_ids.unsqueeze(2).eq(segment_ids.unsqueeze(1)).unsqueeze(1));  // (B,1,T,T)
  }
  if (key_valid.defined()) {
    MLA_CHECK(key_valid.size(1) == S, "key_valid must cover past + new tokens");
    extra = extra.logical_and(key_valid.to(torch::kBool).unsqueeze(1).unsqueeze(1));  // (B,1,1,S)
    // A padding query would otherwise see no key at all: its softmax is NaN, and the next layer's
    // 0 * NaN (its value, masked but still multiplied) poisons the real rows. Every query may see itself
    // (real queries already do), which keeps padding rows finite on every attention backend.
    extra = extra.logical_or(k_idx.eq(q_idx).unsqueeze(0).unsqueeze(0));
  }
  ctx.mask_full = plain_causal ? torch::Tensor() : causal.logical_and(extra);
  if (any_sliding) {
    auto window = (k_idx > q_idx - *c.sliding_window).unsqueeze(0).unsqueeze(0);
    ctx.mask_sliding = causal.logical_and(window).logical_and(extra);
  }
  return ctx;
}

torch::Tensor attention_core(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& mask, double scale, std::optional<double> softcap) {
  const int64_t group = q.size(1) / k.size(1);
  if (!softcap && group > 1 && q.size(2) == 1) {
    // Decoding, one query per sequence: fold each KV head's `group` query heads into the query rows of
    // one attention over that KV head, (B, H, 1, d) -> (B, KV, group, d). Heads are grouped as
    // repeat_interleave groups them (h = kv * group + g), so this is a view, and every cached key and value
    // is read once for its whole group instead of once per query head (SDPA's own GQA support streams the
    // cache per head). A single query may see every key: the mask, if any, is (B|1, 1, 1, S) and
    // broadcasts over the rows. SmolLM2 (3 KV heads x 3), 16K context x 8 rows, CPU: 530 -> 354-358 ms per
    // decode step (bench/README.md, decode).
    const int64_t B = q.size(0), KV = k.size(1);
    auto rows = q.reshape({B, KV, group, q.size(3)});  // (B, KV, group, d)
    std::optional<torch::Tensor> m;
    if (mask.defined()) m = mask;
    auto out = at::scaled_dot_product_attention(rows, k, v, m, 0.0, /*is_causal=*/false, scale);  // (B, KV, group, dv)
    return out.reshape({B, KV * group, 1, v.size(3)});  // (B, H, 1, dv)
  }
  if (!softcap) {
    if (!mask.defined()) {
      return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/q.size(2) > 1, scale,
                                              /*enable_gqa=*/group > 1);
    }
    return at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, scale, group > 1);
  }
  // Gemma2 caps the logits with tanh before the mask: no fused kernel does that, so spell it out.
  auto kk = group > 1 ? k.repeat_interleave(group, 1) : k;
  auto vv = group > 1 ? v.repeat_interleave(group, 1) : v;
  auto scores = torch::matmul(q, kk.transpose(-1, -2)) * scale;  // (B, H, T, S)
  scores = torch::tanh(scores / *softcap) * *softcap;
  auto allowed = mask.defined()
                     ? mask
                     : torch::ones({q.size(2), k.size(2)}, q.options().dtype(torch::kBool)).tril(k.size(2) - q.size(2));
  scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  auto probs = torch::softmax(scores, -1, torch::kFloat32).to(q.dtype());
  return torch::matmul(probs, vv);
}

GQAAttentionImpl::GQAAttentionImpl(const ModelConfig& c, int64_t layer)
    : layer_(layer),
      n_head_(c.num_attention_heads),
      n_kv_(c.num_key_value_heads),
      head_dim_(c.head_dim),
      sliding_(c.layer_sliding.at(static_cast<size_t>(layer))),
      scale_(c.attention_scale()),
      softcap_(c.attn_logit_softcapping) {
  const int64_t D = c.hidden_size;
  auto linear = [](int64_t in, int64_t out, bool bias) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
  };
  wq = register_module("wq", linear(D, n_head_ * head_dim_, c.attention_bias));
  wk = register_module("wk", linear(D, n_kv_ * head_dim_, c.attention_bias));
  wv = register_module("wv", linear(D, n_kv_ * head_dim_, c.attention_bias));
  wo = register_module("wo", linear(n_head_ * head_dim_, D, c.o_proj_bias));
}

torch::Tensor GQAAttentionImpl::forward(const torch::Tensor& x, const AttentionContext& ctx, KVCache* cache) {
  const int64_t B = x.size(0), T = x.size(1);
  auto out = head_outputs(x, ctx, cache);  // (B, H, T, d)
  return wo(out.transpose(1, 2).reshape({B, T, n_head_ * head_dim_}));
}

torch::Tensor GQAAttentionImpl::head_outputs(const torch::Tensor& x, const AttentionContext& ctx, KVCache* cache) {
  const int64_t B = x.size(0), T = x.size(1);
  auto q = wq(x).view({B, T, n_head_, head_dim_}).transpose(1, 2);  // (B, H, T, d)
  auto k = wk(x).view({B, T, n_kv_, head_dim_}).transpose(1, 2);    // (B, KV, T, d)
  auto v = wv(x).view({B, T, n_kv_, head_dim_}).transpose(1, 2);    // (B, KV, T, d)
  q = apply_rope(q, ctx.cos, ctx.sin);
  k = apply_rope(k, ctx.cos, ctx.sin);
  if (cache != nullptr) {
    auto kv = cache->append(layer_, {k, v});
    k = kv[0];  // (B, KV, past + T, d)
    v = kv[1];
  }
  const torch::Tensor& mask = sliding_ ? ctx.mask_sliding : ctx.mask_full;
  return attention_core(q, k, v, mask, scale_, softcap_);  // (B, H, T, d)
}

}  // namespace mlaforge
