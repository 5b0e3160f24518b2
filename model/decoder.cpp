#include "model/decoder.h"

#include "core/error.h"
#include "model/weight_names.h"
#include "model/weight_reader.h"

namespace mlaforge {

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, int64_t layer) {
  const bool gemma = c.family == Family::gemma2;
  attn_norm = register_module("attn_norm", RMSNorm(c.hidden_size, c.rms_norm_eps, gemma));
  mlp_norm = register_module("mlp_norm", RMSNorm(c.hidden_size, c.rms_norm_eps, gemma));
  if (gemma) {
    attn_post_norm = register_module("attn_post_norm", RMSNorm(c.hidden_size, c.rms_norm_eps, true));
    mlp_post_norm = register_module("mlp_post_norm", RMSNorm(c.hidden_size, c.rms_norm_eps, true));
  }
  if (c.is_mla()) {
    mla_attn = register_module("attn", MLAAttention(c, layer));
  } else {
    attn = register_module("attn", GQAAttention(c, layer));
  }
  if (c.is_moe()) {
    moe = register_module("moe", SparseMoE(c));
  } else {
    mlp = register_module("mlp", GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, c.mlp_bias));
  }
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const AttentionContext& ctx, KVCache* cache) {
  auto a = attn_norm(x);
  // Tensor parallelism (Megatron f/g, model/tp_hooks.h): GQA's q/k/v are all column-parallel, so their
  // common input is the copy point; MLA places its own (its kv_a/q_a down-projections are replicated).
  if (tp && !mla_attn) a = tp->copy_to_tp(a, TpPoint::attn_input);
  auto h = mla_attn ? mla_attn(a, ctx, cache) : attn(a, ctx, cache);
  if (tp) h = tp->reduce_from_tp(h, TpPoint::attn_output);  // o_proj is row-parallel: partial sums
  if (attn_post_norm) h = attn_post_norm(h);
  auto y = x + h;
  h = mlp_norm(y);
  // Dense MLP: gate/up column-parallel, down row-parallel. MoE experts are replicated under TP
  // (parallel/README.md), so the MoE block needs no communication.
  if (tp && mlp) h = tp->copy_to_tp(h, TpPoint::mlp_input);
  h = moe ? moe(h) : mlp(h);
  if (tp && mlp) h = tp->reduce_from_tp(h, TpPoint::mlp_output);
  if (mlp_post_norm) h = mlp_post_norm(h);
  return y + h;
}

DecoderImpl::DecoderImpl(const ModelConfig& c)
    : config_(c), rope_(c, c.is_mla() ? c.qk_rope_head_dim : c.head_dim) {
  embed = register_module("embed", torch::nn::Embedding(c.vocab_size, c.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(DecoderLayer(c, i));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps, c.family == Family::gemma2));
  if (!c.tie_word_embeddings)
    lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(c.hidden_size, c.vocab_size).bias(false)));
}

torch::Tensor DecoderImpl::hidden(const torch::Tensor& tokens, const ForwardOptions& options) {
  MLA_CHECK(tokens.dim() == 2, "tokens must be (batch, time), got ", tokens.dim(), " dims");
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const int64_t past = options.cache ? options.cache->length() : 0;
  torch::Tensor positions = options.positions;
  if (!positions.defined())
    positions = (torch::arange(T, tokens.options().dtype(torch::kInt64)) + past).unsqueeze(0).expand({B, T});
  AttentionContext ctx =
      build_attention_context(config_, rope_, positions, options.segment_ids, options.key_valid, past);

  // Tensor parallelism: this rank holds a slice of the vocabulary; the hook looks up its ids and sums.
  auto x = tp_hooks_ ? tp_hooks_->embed(embed->weight, tokens) : embed(tokens);  // (B, T, D)
  if (config_.family == Family::gemma2) {
    // Gemma multiplies by sqrt(D) rounded to the activation dtype, as transformers does.
    x = x * torch::tensor(config_.embedding_multiplier(), x.options()).to(x.dtype());
  }
  for (const auto& layer : *layers) {
    DecoderLayerImpl& l = *layer->as<DecoderLayerImpl>();
    x = layer_runner ? layer_runner(l, x, ctx, options.cache) : l.forward(x, ctx, options.cache);
  }
  if (options.cache) options.cache->advance(T);
  return norm(x);
}

torch::Tensor DecoderImpl::logits_from_hidden(const torch::Tensor& hidden) {
  // Tensor parallelism: the LM head is vocabulary-parallel (this rank's logit columns only).
  const auto h = tp_hooks_ ? tp_hooks_->copy_to_tp(hidden, TpPoint::lm_head_input) : hidden;
  auto logits = lm_head ? lm_head(h) : torch::nn::functional::linear(h, embed->weight);
  if (config_.final_logit_softcapping) {
    const double cap = *config_.final_logit_softcapping;
    logits = torch::tanh(logits / cap) * cap;
  }
  return logits;
}

torch::Tensor DecoderImpl::forward(const torch::Tensor& tokens, const ForwardOptions& options) {
  return logits_from_hidden(hidden(tokens, options));
}

void DecoderImpl::set_tp_hooks(std::shared_ptr<TensorParallelHooks> hooks) {
  tp_hooks_ = std::move(hooks);
  for (const auto& layer : *layers) {
    auto l = layer->as<DecoderLayerImpl>();
    l->tp = tp_hooks_.get();
    if (l->mla_attn) l->mla_attn->tp = tp_hooks_.get();
  }
}

void DecoderImpl::set_mla_path(MLAPath path) {
  for (const auto& layer : *layers) {
    auto l = layer->as<DecoderLayerImpl>();
    if (l->mla_attn) l->mla_attn->set_path(path);
  }
}

torch::Tensor DecoderImpl::aux_loss() const {
  // transformers concatenates every layer's router logits before computing the loss, so the two factors
  // are averaged over layers first (every layer routes the same tokens) and multiplied afterwards.
  std::vector<torch::Tensor> fractions, probs;
  for (const auto& layer : *layers) {
    auto l = layer->as<DecoderLayerImpl>();
    if (l->moe && l->moe->last_router_prob.defined()) {
      fractions.push_back(l->moe->last_expert_fraction);
      probs.push_back(l->moe->last_router_prob);
    }
  }
  if (probs.empty()) return torch::zeros({});
  const auto num_experts = static_cast<double>(probs.front().size(0));
  return (torch::stack(fractions).mean(0) * torch::stack(probs).mean(0)).sum() * num_experts;
}

void load_weights(DecoderImpl& model, const WeightReader& weights, const WeightTransform& transform) {
  const ModelConfig& c = model.config();
  auto params = model.named_parameters(/*recurse=*/true);
  std::set<std::string> used;
  torch::NoGradGuard no_grad;
  // One tensor at a time: from a mapped checkpoint only the tensor being copied is resident.
  for (const WeightName& w : expand_weight_names(c)) {
    MLA_CHECK(weights.contains(w.hf), weights.origin(), ": missing tensor '", w.hf, "'");
    torch::Tensor* param = params.find(w.ours);
    MLA_CHECK(param != nullptr, "internal: model has no parameter '", w.ours, "' for '", w.hf, "'");
    const torch::Tensor tensor = transform ? transform(w.hf, weights.get(w.hf)) : weights.get(w.hf);
    MLA_CHECK(tensor.sizes() == param->sizes(), weights.origin(), ": tensor '", w.hf, "' has shape ", tensor.sizes(),
              " but the config implies ", param->sizes());
    param->copy_(tensor);
    used.insert(w.hf);
  }
  for (const auto& name : weights.names()) {
    // Rotary caches some exporters add are derived data, not weights.
    if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;
    MLA_CHECK(used.count(name), weights.origin(), ": unexpected tensor '", name, "' (not part of a ",
              family_name(c.family), " model with this config)");
  }
}

void load_weights(DecoderImpl& model, const StateDict& weights, const std::string& source) {
  load_weights(model, WeightReader(weights, source));
}

StateDict export_weights(const DecoderImpl& model) {
  StateDict out;
  auto params = model.named_parameters(true);
  for (const WeightName& w : expand_weight_names(model.config())) {
    const torch::Tensor* p = params.find(w.ours);
    MLA_CHECK(p != nullptr, "internal: model has no parameter '", w.ours, "'");
    out[w.hf] = p->detach();
  }
  return out;
}

Decoder build_model(const ModelSource& source, torch::Dtype dtype, torch::Device device) {
  Decoder model(source.config);
  load_weights(*model, WeightReader(source));
  model->to(device, dtype);
  model->eval();
  return model;
}

}  // namespace mlaforge
