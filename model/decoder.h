#pragma once
// The decoder-only transformer shared by every supported family. Family differences are data in
// ModelConfig (norm placement, activations, biases, soft-capping, sliding windows, MoE), not subclasses.
#include <torch/torch.h>

#include <functional>

#include "model/attention.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/layers.h"
#include "model/mla_attention.h"
#include "model/tp_hooks.h"

namespace mlaforge {

class WeightReader;

struct ForwardOptions {
  torch::Tensor positions;    // (B, T) int64 RoPE positions; default past + arange(T)
  torch::Tensor segment_ids;  // (B, T) packed documents: attention stays inside a segment
  torch::Tensor key_valid;    // (B, past + T) bool: false marks padding keys
  KVCache* cache = nullptr;   // decode: appends this step's keys/values
};

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& config, int64_t layer);
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx, KVCache* cache);

  RMSNorm attn_norm{nullptr}, mlp_norm{nullptr};
  RMSNorm attn_post_norm{nullptr}, mlp_post_norm{nullptr};  // Gemma2 sandwich norms only
  // Exactly one of the two exists; either is registered as "attn" (layers.{i}.attn.* in weight_names).
  GQAAttention attn{nullptr};         // GQA families
  MLAAttention mla_attn{nullptr};     // deepseek_v3 (MLA)
  GatedMLP mlp{nullptr};
  SparseMoE moe{nullptr};
  // Tensor parallelism (model/tp_hooks.h); null on a single device. Set by DecoderImpl::set_tp_hooks.
  TensorParallelHooks* tp = nullptr;
};
TORCH_MODULE(DecoderLayer);

class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const ModelConfig& config);

  // tokens (B, T) int64 -> logits (B, T, vocab), float32 or the model's dtype.
  torch::Tensor forward(const torch::Tensor& tokens, const ForwardOptions& options = {});
  // Final hidden states (B, T, D) after the last norm, before the LM head.
  torch::Tensor hidden(const torch::Tensor& tokens, const ForwardOptions& options = {});
  torch::Tensor logits_from_hidden(const torch::Tensor& hidden);

  // MoE load-balancing loss of the last forward (zero for dense models), as transformers computes it:
  // the Switch-Transformer loss of all layers' routing decisions pooled together (not a per-layer sum).
  torch::Tensor aux_loss() const;

  const ModelConfig& config() const { return config_; }
  KVCache make_cache(int64_t capacity) const { return KVCache(config_.num_hidden_layers, capacity); }
  // MLA models: which attention path every layer takes (default automatic: absorbed with a KV cache,
  // naive without). No effect on GQA models.
  void set_mla_path(MLAPath path);

  // Training hook: when set, hidden() runs every layer as layer_runner(layer, x, ctx, cache) instead of
  // layer.forward(x, ctx, cache). trainer/activation_checkpoint.h installs one that recomputes each
  // layer's activations in backward. Null (the default): plain forward.
  using LayerRunner = std::function<torch::Tensor(DecoderLayerImpl& layer, const torch::Tensor& x,
                                                  const AttentionContext& ctx, KVCache* cache)>;
  LayerRunner layer_runner;

  // Tensor parallelism: installs (or, with null, removes) the hooks in this model and every layer. The
  // model must be built from parallel::tp_rank_config and hold its rank's shard of the weights.
  void set_tp_hooks(std::shared_ptr<TensorParallelHooks> hooks);
  TensorParallelHooks* tp_hooks() const { return tp_hooks_.get(); }

  torch::nn::Embedding embed{nullptr};
  torch::nn::ModuleList layers;
  RMSNorm norm{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tied to the embedding

 private:
  ModelConfig config_;
  RotaryEmbedding rope_;  // frequency table built once, not per forward
  std::shared_ptr<TensorParallelHooks> tp_hooks_;
};
TORCH_MODULE(Decoder);

// Copies HF-named weights into the model, converting dtype; every model parameter must be present and
// shaped right, and every tensor in `weights` must be used. Errors name the tensor.
void load_weights(DecoderImpl& model, const StateDict& weights, const std::string& source);
// The same from a reader, tensor by tensor (a lazily opened checkpoint is never resident as a whole).
// `transform(hf_name, tensor)`, when given, maps each tensor read before it is checked and copied (a
// tensor-parallel rank takes its slice: parallel::tp_weight_slicer), so only one whole tensor is held
// at a time.
using WeightTransform = std::function<torch::Tensor(const std::string& hf_name, const torch::Tensor& tensor)>;
void load_weights(DecoderImpl& model, const WeightReader& weights, const WeightTransform& transform = {});
// The model's parameters under their Hugging Face names (for export).
StateDict export_weights(const DecoderImpl& model);

// Builds the model from a loaded source, in `dtype` on `device`.
Decoder build_model(const ModelSource& source, torch::Dtype dtype = torch::kFloat32,
                    torch::Device device = torch::kCPU);

}  // namespace mlaforge
