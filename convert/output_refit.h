#pragma once
// Output-aware refits of a converted layer's linear maps (ConvertOptions::refit_values / refit_output).
//
// After truncation the converted layer attends with slightly different probabilities (partial RoPE,
// compressed keys) over a compressed value, while the original layer's outputs on the same calibration
// activations are known. Maps that enter the output linearly can be re-solved in closed form:
//   values: head h outputs W_UV^h cbar_h(t), cbar_h(t) = sum_s p_ts c_s the attention-weighted latent
//           (MLAAttentionImpl::latent_context); target o_h(t), the original head output
//           (GQAAttentionImpl::head_outputs). One least-squares problem per head.
//   o_proj: the layer output W_o [head outputs](t) against the original attention output minus its o_proj
//           bias: one problem over all heads jointly, so heads can make up for each other's errors.
// Every token's row is weighted by 1 / RMS of its residual stream (the pipeline does it): the next RMSNorm
// reads an error relative to the token's scale, and attention-sink tokens with huge activations must not
// dominate the fit.
// Each is a ridge towards the current map W_old, from three moments over the calibration tokens:
//   W = (M_yx + eps W_old) (M_xx + eps I)^-1,  M_xx = sum x x^T,  M_yx = sum y x^T,
// eps relative to M_xx's mean diagonal: directions the calibration tokens barely excite stay where the
// conversion put them, and since W_old is a candidate of the ridge objective err(W) + eps |W - W_old|^2,
// the calibration error err(W) can only go down (ConvertStream.ValueRefit* and OutputRefit* check it).
#include <torch/torch.h>

namespace mlaforge {

// G independent problems (value refit: G = heads; o_proj: G = 1).
struct LeastSquaresMoments {
  torch::Tensor xx;  // (G, n, n) float64: sum over rows of x x^T
  torch::Tensor yx;  // (G, m, n) float64: sum of y x^T
  torch::Tensor yy;  // (G,) float64: sum of |y|^2
  void add(const torch::Tensor& x, const torch::Tensor& y);  // x (G, rows, n), y (G, rows, m)
};

struct Refit {
  torch::Tensor w;           // (G, m, n) float64: the refitted maps
  double error_before = 0;   // calibration error of W_old, relative to sum |y|^2
  double error_after = 0;    // ... and of the refitted W
};

// old_w (G, m, n). damping: the ridge weight relative to each problem's mean diagonal of M_xx.
Refit ridge_refit(const LeastSquaresMoments& moments, const torch::Tensor& old_w, double damping = 1e-3);

}  // namespace mlaforge
