#pragma once
// Output-aware refit of the value up-projection (ConvertOptions::refit_values).
//
// After truncation the converted layer attends with slightly different probabilities (partial RoPE,
// compressed keys) over a compressed value. Its head h outputs W_UV^h cbar_h(t), cbar_h(t) = sum_s p_ts c_s
// the attention-weighted latent (MLAAttentionImpl::latent_context), while the original head output o_h(t)
// is known on the calibration activations (GQAAttentionImpl::head_outputs). W_UV^h enters linearly, so the
// best one in the least-squares sense over the calibration tokens has a closed form from two moments:
//   W_UV^h = (M_oc,h + eps W_old) (M_cc,h + eps I)^-1,  M_cc,h = sum_t cbar cbar^T (R x R),
//   M_oc,h = sum_t o cbar^T (d x R),
// a ridge towards the current W_UV^h (PCA's reconstruction) with eps relative to M_cc's mean diagonal: it
// keeps directions the calibration tokens barely excite where PCA put them, and since the old W is a
// candidate the calibration output error can only go down (ConvertStream.ValueRefit* checks it). It
// absorbs what the attention-pattern change does to the outputs, which the PCA cannot see. Per head,
// unweighted: o_proj mixes heads afterwards, but its columns are what they were in the original model.
#include <torch/torch.h>

namespace mlaforge {

struct ValueRefitMoments {
  torch::Tensor cc;  // (H, R, R) float64: sum_t cbar cbar^T
  torch::Tensor oc;  // (H, d, R) float64: sum_t o cbar^T
  torch::Tensor oo;  // (H,) float64: sum_t |o|^2
  void add(const torch::Tensor& latent_context, const torch::Tensor& head_outputs);  // (B, H, T, R), (B, H, T, d)
};

struct ValueRefit {
  torch::Tensor w_uv;           // (H, d, R) float64: the refitted W_UV^h
  double error_before = 0;      // calibration output error of the old W_UV, relative to sum |o|^2
  double error_after = 0;       // ... and of the refitted one
};

// old_w_uv (H, d, R). damping: the ridge weight relative to each head's mean diagonal of M_cc.
ValueRefit refit_values(const ValueRefitMoments& moments, const torch::Tensor& old_w_uv, double damping = 1e-3);

}  // namespace mlaforge
