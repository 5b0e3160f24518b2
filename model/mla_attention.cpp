#include "model/mla_attention.h"

#include <limits>

#include "core/error.h"
#include "model/rope.h"

namespace mlaforge {
namespace {
constexpr double kLatentNormEps = 1e-6;
}  // namespace

std::string mla_path_name(MLAPath path) {
  switch (path) {
    case MLAPath::automatic: return "automatic";
    case MLAPath::naive: return "naive";
    case MLAPath::absorbed: return "absorbed";
  }
  return "?";
}

MLAAttentionImpl::MLAAttentionImpl(const ModelConfig& c, int64_t layer)
    : layer_(layer),
      n_head_(c.num_attention_heads),
      nope_(c.qk_nope_head_dim),
      rope_(c.qk_rope_head_dim),
      v_dim_(c.v_head_dim),
      kv_rank_(c.kv_lora_rank_at(layer)),
      rope_interleave_(c.rope_interleave),
      latent_norm_(c.latent_norm),
      sliding_(c.layer_sliding.at(static_cast<size_t>(layer))),
      // 1/sqrt(nope + rope), times DeepSeek's YaRN mscale_all_dim correction squared; Gemma2's
      // query_pre_attn_scalar^-1/2 (see ModelConfig::attention_scale).
      scale_(c.attention_scale()),
      softcap_(c.attn_logit_softcapping) {
  MLA_CHECK(c.is_mla(), "MLAAttention built for a non-MLA config (", family_name(c.family), ")");
  const int64_t D = c.hidden_size, H = n_head_, qk = nope_ + rope_;
  auto linear = [](int64_t in, int64_t out, bool bias) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
  };
  // Biases exactly where transformers' DeepseekV3Attention puts them with attention_bias: the two
  // down-projections and o_proj; the up-projections (q_b, kv_b) and the plain q_proj never have one.
  const bool bias = c.attention_bias;
  if (c.q_lora_rank > 0) {
    wq_a = register_module("wq_a", linear(D, c.q_lora_rank, bias));
    // transformers builds q_a_layernorm and kv_a_layernorm with DeepseekV3RMSNorm's default eps (1e-6),
    // not rms_norm_eps; DeepSeek's own modeling code does the same.
    q_a_norm = register_module("q_a_norm", RMSNorm(c.q_lora_rank, kLatentNormEps));
    wq_b = register_module("wq_b", linear(c.q_lora_rank, H * qk, false));
  } else {
    wq = register_module("wq", linear(D, H * qk, false));
  }
  wkv_a = register_module("wkv_a", linear(D, kv_rank_ + rope_, bias));
  kv_a_norm = register_module("kv_a_norm", RMSNorm(kv_rank_, kLatentNormEps));
  wkv_b = register_module("wkv_b", linear(kv_rank_, H * (nope_ + v_dim_), false));
  wo = register_module("wo", linear(H * v_dim_, D, bias));
}

torch::Tensor MLAAttentionImpl::rope(const torch::Tensor& x, const AttentionContext& ctx) const {
  // x (B, h, T, rope). DeepSeek checkpoints store the rope rows of q/kv_a in interleaved pairs; the
  // rotated result comes out in rotate_half layout either way (as in transformers), which is fine because
  // queries and keys share it and only their dot product matters.
  if (!rope_interleave_) return apply_rope(x, ctx.cos, ctx.sin);
  return apply_rope_interleaved(x.contiguous(), ctx.cos, ctx.sin);  // contiguous: it views pairs
}

MLAAttentionImpl::Projected MLAAttentionImpl::project(const torch::Tensor& x, const AttentionContext& ctx) {
  const int64_t B = x.size(0), T = x.size(1), H = n_head_, R = kv_rank_;

  // Query, per head: [nope part | rope part].
  // Tensor parallelism: wq / wq_b are column-parallel by head, wq_a and q_a_norm replicated; the copy
  // point sits between them so the replicated part (and x) gets the gradient summed over all heads.
  auto q_in = wq ? x : q_a_norm(wq_a(x));                    // (B, T, D) or (B, T, Rq)
  if (tp) q_in = tp->copy_to_tp(q_in, TpPoint::mla_query);
  auto q = wq ? wq(q_in) : wq_b(q_in);                       // (B, T, H * (nope + rope))
  q = q.view({B, T, H, nope_ + rope_}).transpose(1, 2);      // (B, H, T, nope + rope)
  Projected p;
  p.q_nope = q.narrow(-1, 0, nope_);                         // (B, H, T, nope)
  p.q_pe = rope(q.narrow(-1, nope_, rope_), ctx);            // (B, H, T, rope)

  // Keys/values enter as one latent per token plus one rope key shared by all heads (MQA-style).
  auto kv_a = wkv_a(x);                                          // (B, T, R + rope)
  auto c_kv = kv_a.narrow(-1, 0, R);
  if (latent_norm_) c_kv = kv_a_norm(c_kv);
  c_kv = c_kv.unsqueeze(1);  // (B, 1, T, R)
  auto k_pe = rope(kv_a.narrow(-1, R, rope_).unsqueeze(1), ctx);  // (B, 1, T, rope)

  // The cache holds exactly this, both paths: [c_kv | k_pe] in one buffer (B, 1, S, R + rope), so a
  // decode step reads one contiguous row per token and the absorbed kernel needs no concatenation.
  p.latent = torch::cat({c_kv, k_pe}, -1);  // (B, 1, T, R + rope)
  // Tensor parallelism: wkv_a and kv_a_norm are replicated but each rank's heads see only part of the
  // loss, so the latent's gradient -- and above all the shared rope key's, which every head reads -- is
  // partial per rank: sum it here, once, for both (cheaper than reducing their weight gradients).
  if (tp) p.latent = tp->copy_to_tp(p.latent, TpPoint::mla_latent);
  return p;
}

torch::Tensor MLAAttentionImpl::forward(const torch::Tensor& x, const AttentionContext& ctx, KVCache* cache) {
  const int64_t B = x.size(0), T = x.size(1), H = n_head_;
  Projected p = project(x, ctx);
  auto latent = p.latent;
  if (cache != nullptr) latent = cache->append(layer_, {latent})[0];  // (B, 1, S, R + rope), S = past + T

  const torch::Tensor& mask = sliding_ ? ctx.mask_sliding : ctx.mask_full;
  auto out = uses_absorbed(cache != nullptr) ? attend_absorbed(p.q_nope, p.q_pe, latent, mask)
                                             : attend_naive(p.q_nope, p.q_pe, latent, mask);  // (B, H, T, v)
  return wo(out.transpose(1, 2).reshape({B, T, H * v_dim_}));  // (B, T, D)
}

torch::Tensor MLAAttentionImpl::latent_context(const torch::Tensor& x, const AttentionContext& ctx) {
  Projected p = project(x, ctx);
  return attend_latent(p.q_nope, p.q_pe, p.latent, sliding_ ? ctx.mask_sliding : ctx.mask_full);
}

torch::Tensor MLAAttentionImpl::attend_naive(const torch::Tensor& q_nope, const torch::Tensor& q_pe,
                                             const torch::Tensor& latent, const torch::Tensor& mask) {
  const int64_t B = latent.size(0), S = latent.size(2), H = n_head_;
  auto c_kv = latent.narrow(-1, 0, kv_rank_);  // (B, 1, S, R)
  auto k_pe = latent.narrow(-1, kv_rank_, rope_);  // (B, 1, S, rope)
  // Decompress every head's nope key and value from the latent: one GEMM over all S positions.
  auto kv = wkv_b(c_kv.squeeze(1));                                       // (B, S, H * (nope + v))
  kv = kv.view({B, S, H, nope_ + v_dim_}).transpose(1, 2);                // (B, H, S, nope + v)
  auto k_nope = kv.narrow(-1, 0, nope_);                                  // (B, H, S, nope)
  auto v = kv.narrow(-1, nope_, v_dim_);                                  // (B, H, S, v)
  // Every head sees the same rope key; broadcast it next to its own nope key, like the query.
  auto k = torch::cat({k_nope, k_pe.expand({B, H, S, rope_})}, -1);       // (B, H, S, nope + rope)
  auto qq = torch::cat({q_nope, q_pe}, -1);                               // (B, H, T, nope + rope)
  // Plain MHA from here on (value dim may differ from the qk dim; SDPA allows that), soft-capped like
  // GQA attention when the family caps.
  return attention_core(qq, k, v, mask, scale_, softcap_);  // (B, H, T, v)
}

torch::Tensor MLAAttentionImpl::attend_absorbed(const torch::Tensor& q_nope, const torch::Tensor& q_pe,
                                                const torch::Tensor& latent, const torch::Tensor& mask) {
  const int64_t H = n_head_, R = kv_rank_;
  auto w_uv = wkv_b->weight.view({H, nope_ + v_dim_, R}).narrow(1, nope_, v_dim_);  // (H, v, R): W_UV^h
  auto ctx_lat = attend_latent(q_nope, q_pe, latent, mask);                         // (B, H, T, R)
  // sum_s p_s (W_UV c_s) == W_UV (sum_s p_s c_s): one small per-head GEMM after attention.
  return torch::einsum("bhtr,hvr->bhtv", {ctx_lat, w_uv});  // (B, H, T, v)
}

torch::Tensor MLAAttentionImpl::attend_latent(const torch::Tensor& q_nope, const torch::Tensor& q_pe,
                                              const torch::Tensor& latent, const torch::Tensor& mask) {
  const int64_t B = q_nope.size(0), T = q_nope.size(2), S = latent.size(2), H = n_head_, R = kv_rank_;
  // wkv_b's weight per head: nope key rows W_UK^h (nope, R) then value rows W_UV^h (v, R).
  auto w_uk = wkv_b->weight.view({H, nope_ + v_dim_, R}).narrow(1, 0, nope_);  // (H, nope, R)
  // q_nope . (W_UK c) == (W_UK^T q_nope) . c: move the query into latent space once per step instead of
  // decompressing S keys.
  auto q_lat = torch::einsum("bhtn,hnr->bhtr", {q_nope, w_uk});  // (B, H, T, R)

  // What remains is single-"head" attention over the latent: key [c_kv | k_pe] (R + rope wide, shared by
  // every head), value c_kv. The query's [q_lat | q_pe] lines up with the cached row's columns, so
  // q_lat . c_kv + q_pe . k_pe is one dot product with the cache as it is. Folding the H heads into the
  // query rows ((h, t) -> one row) lets every head read the same S x (R + rope) cache once, with no
  // per-head copy of it (a broadcast over heads would materialize H copies in the matmul).
  auto q_all = torch::cat({q_lat, q_pe}, -1).reshape({B, 1, H * T, R + rope_});  // (B, 1, H*T, R + rope)
  auto c_kv = latent.narrow(-1, 0, R);                                          // (B, 1, S, R): the value

  // The mask (B|1, 1, T, S) repeated over heads to match the folded rows. An undefined mask means plain
  // causality (query t sees keys up to past + t): spelled out here for T > 1 because the folded rows are
  // not in causal order; a single query sees every key and needs none for SDPA, but the soft-capped path
  // (attention_core would take the H folded rows for causal ones) gets one row of tril(S - 1): all keys.
  torch::Tensor allowed = mask;
  if (!allowed.defined() && (T > 1 || softcap_))
    allowed = torch::ones({T, S}, q_nope.options().dtype(torch::kBool)).tril(S - T).view({1, 1, T, S});
  std::optional<torch::Tensor> folded_mask;
  if (allowed.defined())
    folded_mask = allowed.expand({allowed.size(0), H, T, S}).reshape({allowed.size(0), 1, H * T, S});  // (B|1, 1, H*T, S)

  // Soft-capping: explicit scores (B, 1, H*T, S), capped, masked, softmax; the same scores as SDPA's.
  // Otherwise SDPA with the whole cached row as the value and the rope columns of the result dropped:
  // equal query/key/value widths let the fused (flash) kernels run, which read the cache once without
  // materialising scores. With the value narrowed to c_kv the widths differ and SDPA falls back to its
  // math path, which first writes a scaled copy of every key -- the whole latent cache, each step
  // (SmolLM2 converted, 16K context x 8 rows, CPU: 1,151 -> 375-398 ms per decode step; bench/README.md).
  auto ctx_lat = softcap_ ? attention_core(q_all, latent, c_kv, *folded_mask, scale_, softcap_)
                          : at::scaled_dot_product_attention(q_all, latent, latent, folded_mask, 0.0,
                                                             /*is_causal=*/false, scale_)
                                .narrow(-1, 0, R);        // (B, 1, H*T, R)
  ctx_lat = ctx_lat.reshape({B, H, T, R});                  // (B, H, T, R); rows were (h, t)
  return ctx_lat;
}

}  // namespace mlaforge
