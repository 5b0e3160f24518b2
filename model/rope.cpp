#include "model/rope.h"

#include <cmath>

#include "core/error.h"

namespace mlaforge {
namespace {

// 1 / base^(2i/dim), computed in float32 exactly as transformers does, so logits match bit for bit.
torch::Tensor default_inv_freq(double base, int64_t dim) {
  auto exponents = torch::arange(0, dim, 2, torch::kInt64).to(torch::kFloat32) / static_cast<float>(dim);
  return 1.0 / torch::pow(torch::tensor(base, torch::kFloat32), exponents);
}

double yarn_mscale(double scale, double mscale = 1.0) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

RopeFrequencies yarn(const ModelConfig& c, int64_t dim) {
  const RopeScaling& s = c.rope_scaling;
  const double base = c.rope_theta;
  double factor = s.factor;
  const int64_t original_max =
      s.original_max_position_embeddings > 0 ? s.original_max_position_embeddings : c.max_position_embeddings;

  double attention_factor;
  if (s.attention_factor) {
    attention_factor = *s.attention_factor;
  } else if (s.mscale && s.mscale_all_dim) {
    attention_factor = yarn_mscale(factor, *s.mscale) / yarn_mscale(factor, *s.mscale_all_dim);
  } else {
    attention_factor = yarn_mscale(factor);
  }
  auto correction_dim = [&](double rotations) {
    return (dim * std::log(original_max / (rotations * 2 * M_PI))) / (2 * std::log(base));
  };
  double low = std::max(std::floor(correction_dim(s.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(s.beta_slow)), static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  auto ramp = ((torch::arange(dim / 2, torch::kFloat32) - static_cast<float>(low)) /
               static_cast<float>(high - low))
                  .clamp(0, 1);
  auto pos_freqs =
      torch::pow(torch::tensor(base, torch::kFloat32), torch::arange(0, dim, 2, torch::kFloat32) / static_cast<float>(dim));
  auto extrapolation = 1.0 / pos_freqs;
  auto interpolation = 1.0 / (factor * pos_freqs);
  auto extrapolation_factor = 1 - ramp;
  auto inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
  return {inv_freq, attention_factor};
}

torch::Tensor llama3(const ModelConfig& c, const torch::Tensor& inv_freq) {
  const RopeScaling& s = c.rope_scaling;
  const double old_context = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / s.low_freq_factor;
  const double high_freq_wavelen = old_context / s.high_freq_factor;
  auto wavelen = 2 * M_PI / inv_freq;
  auto scaled = torch::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  auto smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  auto smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  auto is_medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
  return torch::where(is_medium, smoothed, scaled);
}

}  // namespace

RopeFrequencies rope_frequencies(const ModelConfig& c, int64_t dim, int64_t seq_len) {
  MLA_CHECK(dim % 2 == 0, "rotary dimension must be even, got ", dim);
  const RopeScaling& s = c.rope_scaling;
  switch (s.type) {
    case RopeScaling::Type::none:
      return {default_inv_freq(c.rope_theta, dim), 1.0};
    case RopeScaling::Type::linear:
      return {default_inv_freq(c.rope_theta, dim) / static_cast<float>(s.factor), 1.0};
    case RopeScaling::Type::dynamic: {
      const int64_t max_pos = c.max_position_embeddings;
      double base = c.rope_theta;
      if (seq_len > max_pos) {
        base = base * std::pow((s.factor * seq_len / max_pos) - (s.factor - 1),
                               static_cast<double>(dim) / (dim - 2));
      }
      return {default_inv_freq(base, dim), 1.0};
    }
    case RopeScaling::Type::yarn:
      return yarn(c, dim);
    case RopeScaling::Type::llama3:
      return {llama3(c, default_inv_freq(c.rope_theta, dim)), 1.0};
  }
  return {default_inv_freq(c.rope_theta, dim), 1.0};
}

RotaryEmbedding::RotaryEmbedding(const ModelConfig& config, int64_t dim)
    : config_(config), dim_(dim), base_(rope_frequencies(config, dim)) {}

std::pair<torch::Tensor, torch::Tensor> RotaryEmbedding::cos_sin(const torch::Tensor& positions) const {
  RopeFrequencies freqs = base_;
  if (config_.rope_scaling.type == RopeScaling::Type::dynamic) {
    const int64_t seq_len = positions.max().item<int64_t>() + 1;
    if (seq_len > config_.max_position_embeddings) freqs = rope_frequencies(config_, dim_, seq_len);
  }
  auto inv_freq = freqs.inv_freq.to(positions.device());
  // (B, T, 1) * (dim/2) -> (B, T, dim/2), matching transformers' float32 matmul formulation.
  auto angles = positions.to(torch::kFloat32).unsqueeze(-1) * inv_freq;
  auto emb = torch::cat({angles, angles}, -1);  // (B, T, dim)
  auto cos = emb.cos(), sin = emb.sin();
  if (freqs.attention_scaling != 1.0) {
    cos = cos * freqs.attention_scaling;
    sin = sin * freqs.attention_scaling;
  }
  return {cos, sin};
}

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  auto c = cos.unsqueeze(1).to(x.dtype());  // (B, 1, T, dim)
  auto s = sin.unsqueeze(1).to(x.dtype());
  auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  auto rotated = torch::cat({-x2, x1}, -1);
  return x * c + rotated * s;
}

torch::Tensor apply_rope_interleaved(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  // DeepSeek-V3 in transformers de-interleaves (x0,x1,x2,x3..) -> (x0,x2,..,x1,x3,..) then applies
  // rotate_half; doing the same keeps our output identical to theirs.
  const auto shape = x.sizes().vec();
  const int64_t d = x.size(-1);
  auto deinterleaved = x.view({-1, d / 2, 2}).transpose(-1, -2).reshape(shape);
  return apply_rope(deinterleaved, cos, sin);
}

}  // namespace mlaforge
