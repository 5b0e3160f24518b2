#include "convert/value_refit.h"

#include "core/error.h"

namespace mlaforge {

void ValueRefitMoments::add(const torch::Tensor& latent_context, const torch::Tensor& head_outputs) {
  MLA_CHECK(latent_context.dim() == 4 && head_outputs.dim() == 4 && latent_context.size(1) == head_outputs.size(1) &&
                latent_context.size(2) == head_outputs.size(2),
            "value refit: latent context ", latent_context.sizes(), " and head outputs ", head_outputs.sizes(),
            " do not match");
  const int64_t H = latent_context.size(1), R = latent_context.size(3), d = head_outputs.size(3);
  auto c = latent_context.transpose(0, 1).reshape({H, -1, R}).to(torch::kCPU, torch::kFloat64);  // (H, B T, R)
  auto o = head_outputs.transpose(0, 1).reshape({H, -1, d}).to(torch::kCPU, torch::kFloat64);    // (H, B T, d)
  if (!cc.defined()) {
    cc = torch::zeros({H, R, R}, torch::kFloat64);
    oc = torch::zeros({H, d, R}, torch::kFloat64);
    oo = torch::zeros({H}, torch::kFloat64);
  }
  cc += c.transpose(1, 2).bmm(c);
  oc += o.transpose(1, 2).bmm(c);
  oo += o.square().sum({1, 2});
}

namespace {
// sum_h |O_h - W_h C_h|^2 from the moments: sum |o|^2 - 2 tr(W M_oc^T) + tr(W M_cc W^T).
double output_error(const ValueRefitMoments& m, const torch::Tensor& w) {
  auto cross = (w * m.oc).sum();
  auto quad = (w.bmm(m.cc) * w).sum();
  return (m.oo.sum() - 2 * cross + quad).item<double>();
}
}  // namespace

ValueRefit refit_values(const ValueRefitMoments& m, const torch::Tensor& old_w_uv, double damping) {
  MLA_CHECK(m.cc.defined(), "value refit: no calibration moments");
  MLA_CHECK(old_w_uv.sizes() == m.oc.sizes(), "value refit: W_UV of shape ", old_w_uv.sizes(), ", moments of ",
            m.oc.sizes());
  const int64_t H = m.cc.size(0), R = m.cc.size(1);
  auto eye = torch::eye(R, torch::kFloat64);
  // Per head, ridge towards the old W: (M_cc + eps I) W^T = (M_oc + eps W_old)^T. Its objective
  // err(W) + eps |W - W_old|^2 is at most err(W_old) at the optimum, so err(W) <= err(W_old) exactly.
  auto old = old_w_uv.to(torch::kCPU, torch::kFloat64);
  auto eps = (damping * m.cc.diagonal(0, 1, 2).mean(1).clamp_min(1e-300)).view({H, 1, 1});  // (H, 1, 1)
  auto A = m.cc + eps * eye;                                                               // (H, R, R)
  auto w_t = torch::linalg_solve(A, (m.oc + eps * old).transpose(1, 2), true);            // (H, R, d)
  ValueRefit out;
  out.w_uv = w_t.transpose(1, 2).contiguous();
  const double total = std::max(m.oo.sum().item<double>(), 1e-300);
  out.error_before = output_error(m, old) / total;
  out.error_after = output_error(m, out.w_uv) / total;
  return out;
}

}  // namespace mlaforge
