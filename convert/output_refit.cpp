#include "convert/output_refit.h"

#include "core/error.h"

namespace mlaforge {

void LeastSquaresMoments::add(const torch::Tensor& x, const torch::Tensor& y) {
  MLA_CHECK(x.dim() == 3 && y.dim() == 3 && x.size(0) == y.size(0) && x.size(1) == y.size(1),
            "least-squares refit: inputs ", x.sizes(), " and targets ", y.sizes(), " do not match");
  auto xd = x.to(torch::kCPU, torch::kFloat64), yd = y.to(torch::kCPU, torch::kFloat64);
  if (!xx.defined()) {
    xx = torch::zeros({x.size(0), x.size(2), x.size(2)}, torch::kFloat64);
    yx = torch::zeros({x.size(0), y.size(2), x.size(2)}, torch::kFloat64);
    yy = torch::zeros({x.size(0)}, torch::kFloat64);
  }
  xx += xd.transpose(1, 2).bmm(xd);
  yx += yd.transpose(1, 2).bmm(xd);
  yy += yd.square().sum({1, 2});
}

namespace {
// sum |Y - W X|^2 over all problems from the moments: sum |y|^2 - 2 tr(W M_yx^T) + tr(W M_xx W^T).
double total_error(const LeastSquaresMoments& m, const torch::Tensor& w) {
  auto cross = (w * m.yx).sum();
  auto quad = (w.bmm(m.xx) * w).sum();
  return (m.yy.sum() - 2 * cross + quad).item<double>();
}
}  // namespace

Refit ridge_refit(const LeastSquaresMoments& m, const torch::Tensor& old_w, double damping) {
  MLA_CHECK(m.xx.defined(), "least-squares refit: no calibration moments");
  MLA_CHECK(old_w.sizes() == m.yx.sizes(), "least-squares refit: current map of shape ", old_w.sizes(),
            ", moments of ", m.yx.sizes());
  const int64_t G = m.xx.size(0), n = m.xx.size(1);
  auto old = old_w.to(torch::kCPU, torch::kFloat64);
  auto eps = (damping * m.xx.diagonal(0, 1, 2).mean(1).clamp_min(1e-300)).view({G, 1, 1});    // (G, 1, 1)
  auto A = m.xx + eps * torch::eye(n, torch::kFloat64);                                      // (G, n, n)
  auto w_t = torch::linalg_solve(A, (m.yx + eps * old).transpose(1, 2), true);               // (G, n, m)
  Refit out;
  out.w = w_t.transpose(1, 2).contiguous();
  const double total = std::max(m.yy.sum().item<double>(), 1e-300);
  out.error_before = total_error(m, old) / total;
  out.error_after = total_error(m, out.w) / total;
  return out;
}

}  // namespace mlaforge
