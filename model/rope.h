#pragma once
// Rotary position embeddings in Hugging Face layout (rotate_half: the two halves of a head are the real
// and imaginary parts), with the scalings the supported families use: linear, dynamic NTK, YaRN, Llama-3.
#include <torch/torch.h>

#include "model/config.h"

namespace mlaforge {

// Inverse frequencies (dim/2,) in float32 for a rotary dimension `dim`, and the factor the cos/sin
// tables are multiplied by (YaRN's attention factor; 1 otherwise). `seq_len` matters only for dynamic
// NTK scaling, which grows the base once positions pass the trained context.
struct RopeFrequencies {
  torch::Tensor inv_freq;  // (dim/2,) float32
  double attention_scaling = 1.0;
};
RopeFrequencies rope_frequencies(const ModelConfig& config, int64_t dim, int64_t seq_len = 0);

class RotaryEmbedding {
 public:
  RotaryEmbedding(const ModelConfig& config, int64_t dim);
  // positions (B, T) int64 -> cos, sin each (B, T, dim) float32, already multiplied by attention_scaling.
  std::pair<torch::Tensor, torch::Tensor> cos_sin(const torch::Tensor& positions) const;
  int64_t dim() const { return dim_; }

 private:
  ModelConfig config_;
  int64_t dim_;
  RopeFrequencies base_;  // for positions inside the trained context
};

// x (B, H, T, dim) rotated by cos/sin (B, T, dim); rotate_half layout. Computed in x's dtype like HF.
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
// The same for DeepSeek's interleaved-pair layout (x[2i], x[2i+1]) used by the MLA rope key.
torch::Tensor apply_rope_interleaved(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

}  // namespace mlaforge
