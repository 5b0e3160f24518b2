#include "convert/pipeline.h"

#include <dlfcn.h>
#include <malloc.h>

#include <chrono>
#include <set>

#include "convert/output_refit.h"
#include "core/error.h"
#include "core/log.h"
#include "core/progress.h"
#include "model/attention.h"
#include "model/decoder.h"
#include "model/rope.h"
#include "model/tensor_io.h"
#include "model/weight_names.h"

namespace mlaforge {
namespace {

// One document on its way through the layers.
struct DocState {
  torch::Tensor tokens;                 // (1, T) int64
  AttentionContext original_ctx;        // rotary tables of the original head_dim
  AttentionContext mla_ctx;             // rotary tables of the decoupled rope dim
  torch::Tensor hidden;                 // (1, T, D): calibration path, or the original model (evaluation)
  torch::Tensor hidden_mla;             // (1, T, D): the converted model (evaluation only)
  // (1, T, D): calibration only, with ConvertOptions::refit_drift: the original model's path, so the o_proj
  // refit can aim at the original residual stream rather than at this layer's output alone.
  torch::Tensor hidden_original;
};

std::string layer_prefix(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

// Hands the allocator's free pages back to the OS between layers. Without it the peak RSS is the live
// memory plus what the allocator keeps: each layer frees two fp32 copies of itself and up to a shard of
// writer buffer, tcmalloc (linked into mlaforge) keeps those pages mapped, and a later large block (the
// 1 GB LM head at the end of an 8B conversion) that fits none of the kept spans takes fresh pages on top
// (bench/README.md: 8B shape, 6.4 GiB peak, 4.8 GiB live). Releasing costs page faults for the next
// layer's buffers, small next to a layer's work. tcmalloc is found at run time (no header needed, and a
// build without it falls back to glibc's malloc_trim).
void release_free_memory() {
  using Release = void (*)();
  static const auto tcmalloc_release = reinterpret_cast<Release>(dlsym(RTLD_DEFAULT, "MallocExtension_ReleaseFreeMemory"));
  if (tcmalloc_release != nullptr) {
    tcmalloc_release();
    return;
  }
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// Loads a single layer's parameters from `lookup` (HF name -> tensor), checking shapes.
template <typename Lookup>
DecoderLayer build_layer(const ModelConfig& c, int64_t i, Lookup&& lookup, torch::Device device,
                         const std::string& origin) {
  DecoderLayer layer(c, i);
  torch::NoGradGuard no_grad;
  for (auto& p : layer->named_parameters()) {
    const std::string ours = "layers." + std::to_string(i) + "." + p.key();
    auto hf = ours_to_hf(c, ours);
    MLA_CHECK(hf.has_value(), "internal: no HF name for parameter '", ours, "'");
    torch::Tensor t = lookup(*hf, p.key());
    MLA_CHECK(t.sizes() == p.value().sizes(), origin, ": tensor '", *hf, "' has shape ", t.sizes(),
              " but the config implies ", p.value().sizes());
    p.value().copy_(t);
  }
  layer->to(device);
  layer->eval();
  return layer;
}

// `table` is the stored (V, D) matrix on the CPU, in its stored dtype: only the document's rows are
// widened to float32 and moved to `device` (bf16/fp16 -> fp32 is exact, so this equals gathering from a
// float32 copy of the table, without holding one: 2.1 GB for a 128k x 4096 vocabulary).
torch::Tensor embed(const ModelConfig& c, const torch::Tensor& table, const torch::Tensor& tokens, torch::Device device) {
  auto x = torch::embedding(table, tokens.to(torch::kCPU)).to(device, torch::kFloat32);  // (1, T, D)
  // Gemma multiplies by sqrt(D) rounded to the activation dtype, as the decoder does.
  if (c.family == Family::gemma2) x = x * torch::tensor(c.embedding_multiplier(), x.options()).to(x.dtype());
  return x;
}

// Summed next-token NLL of one document from its final hidden states.
double document_nll(const ModelConfig& c, RMSNorm& norm, const torch::Tensor& head, const torch::Tensor& hidden,
                    const torch::Tensor& tokens) {
  const int64_t T = tokens.size(1);
  if (T < 2) return 0;
  auto logits = torch::nn::functional::linear(norm(hidden), head);  // (1, T, V)
  if (c.final_logit_softcapping) {
    const double cap = *c.final_logit_softcapping;
    logits = torch::tanh(logits / cap) * cap;
  }
  auto logp = torch::log_softmax(logits.to(torch::kFloat32).narrow(1, 0, T - 1), -1);
  auto nll = -logp.gather(-1, tokens.narrow(1, 1, T - 1).unsqueeze(-1)).squeeze(-1);
  return nll.to(torch::kFloat64).sum().item<double>();
}

}  // namespace

PipelineResult convert_streaming(const ModelConfig& c, const WeightReader& reader,
                                 const std::vector<std::vector<int64_t>>& calibration,
                                 const std::vector<std::vector<int64_t>>& evaluation, const PipelineOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  check_convertible(c);
  if (o.deployable) check_deployable(c);
  if (o.portable) check_portable(c, o.convert);
  MLA_CHECK(!(o.deployable && o.portable), "deployable and portable are two different modes");
  torch::NoGradGuard no_grad;
  const int64_t n_layers = c.num_hidden_layers, L = c.num_key_value_heads * c.head_dim, D = c.hidden_size;
  const std::string& origin = reader.origin();
  PipelineResult result;

  int64_t calibration_tokens = 0;
  for (const auto& doc : calibration) calibration_tokens += static_cast<int64_t>(doc.size());
  MLA_CHECK(calibration_tokens > 0, "calibration produced no tokens");

  // The converted config: exact mode for convert_layer; the deployable one (rank R + 1, latent norm on)
  // is what the written layers compute, so the converted activations and the evaluation use it.
  nlohmann::json config_json = mla_config_json(c, o.convert, o.layer_ranks, calibration_tokens);
  const ModelConfig exact = ModelConfig::from_json(config_json, "converted config");
  ModelConfig final_config = exact;
  if (o.deployable || o.portable) {
    nlohmann::json j = config_json;
    if (o.deployable) mark_deployable(j, 0);
    if (o.portable) mark_portable(j);
    final_config = ModelConfig::from_json(j, "converted config");
  }

  std::unique_ptr<StreamingShardWriter> writer;
  if (!o.out_dir.empty())
    writer = std::make_unique<StreamingShardWriter>(o.out_dir, "model", o.max_shard_bytes);
  std::set<std::string> consumed;  // source tensors used (written as they are, or converted)
  auto emit = [&](const std::string& name, const torch::Tensor& t) {
    auto out = t.detach().to(torch::kCPU, o.out_dtype).contiguous();
    if (writer) writer->add(name, from_torch_dtype(out.scalar_type()), out.sizes().vec(), out.data_ptr());
    if (o.keep_weights) result.conversion.weights[name] = out;
    consumed.insert(name);
  };
  // Tensors other than the converted attention are written as read, in the output dtype.
  auto pass_through = [&](const std::string& name) { emit(name, reader.get(name)); };

  // Embedding: the calibration and evaluation documents enter the stream. The table stays in its stored
  // dtype on the CPU and is dropped once written (a tied LM head is read again for the evaluation).
  const torch::Dtype dtype = torch::kFloat32;
  torch::Tensor table = reader.get("model.embed_tokens.weight");
  MLA_CHECK(table.dim() == 2 && table.size(0) == c.vocab_size && table.size(1) == D, origin,
            ": tensor 'model.embed_tokens.weight' has shape ", table.sizes(), ", expected [", c.vocab_size, ", ", D, "]");
  RotaryEmbedding original_rope(c, c.head_dim), mla_rope(final_config, final_config.qk_rope_head_dim);
  auto make_docs = [&](const std::vector<std::vector<int64_t>>& docs, bool two_paths) {
    std::vector<DocState> out;
    for (const auto& doc : docs) {
      if (doc.empty()) continue;
      DocState s;
      s.tokens = torch::tensor(doc, torch::kInt64).unsqueeze(0).to(o.device);
      MLA_CHECK(s.tokens.max().item<int64_t>() < c.vocab_size, "token id outside the vocabulary");
      auto positions = torch::arange(s.tokens.size(1), s.tokens.options()).unsqueeze(0);
      s.original_ctx = build_attention_context(c, original_rope, positions, {}, {}, 0);
      s.mla_ctx = build_attention_context(final_config, mla_rope, positions, {}, {}, 0);
      s.hidden = embed(c, table, s.tokens, o.device);
      if (two_paths) s.hidden_mla = s.hidden;
      if (!two_paths && o.sequential && o.convert.refit_output && o.convert.refit_drift) s.hidden_original = s.hidden;
      out.push_back(std::move(s));
    }
    return out;
  };
  std::vector<DocState> calib = make_docs(calibration, false), eval = make_docs(evaluation, true);
  emit("model.embed_tokens.weight", table);
  table = torch::Tensor();

  KVMoments& moments = result.moments;
  moments.tokens = calibration_tokens;
  double anchor_max = 0;
  Progress progress("convert", n_layers, o.progress);
  for (int64_t i = 0; i < n_layers; ++i) {
    release_free_memory();  // the previous layer's copies and any flushed shard buffer
    const std::string P = layer_prefix(i), A = P + "self_attn.";
    // 1. The original layer, and its attention tensors for the converter.
    StateDict attention;
    DecoderLayer layer = build_layer(c, i, [&](const std::string& hf, const std::string&) {
      auto t = reader.get(hf);
      if (starts_with(hf, A)) attention[hf] = t;
      consumed.insert(hf);
      return t;
    }, o.device, origin);

    // 2. KV moments over the calibration states at this layer's input.
    LayerMoments lm;
    lm.joint = torch::zeros({2 * L, 2 * L}, torch::kFloat64);
    lm.max_input_norm = 0;
    if (o.convert.q_lora_rank > 0) lm.input_moment = torch::zeros({D + 1, D + 1}, torch::kFloat64);
    const bool query_moments = needs_query_moments(o.convert);
    for (const DocState& s : calib) {
      auto xn = layer->attn_norm(s.hidden);
      auto kv = torch::cat({layer->attn->wk(xn), layer->attn->wv(xn)}, -1).reshape({-1, 2 * L}).to(torch::kCPU, torch::kFloat64);
      lm.joint += kv.t().mm(kv);
      lm.max_input_norm = std::max(lm.max_input_norm, xn.to(torch::kFloat64).norm(2, -1).max().item<double>());
      if (lm.input_moment.defined()) {
        auto x = xn.reshape({-1, D}).to(torch::kCPU, torch::kFloat64);
        x = torch::cat({x, torch::ones({x.size(0), 1}, x.options())}, 1);
        lm.input_moment += x.t().mm(x);
      }
      if (query_moments) add_query_moment(lm.query, *layer->attn, c, xn);
    }

    // 3. Convert (and make deployable).
    LayerConversion lc = convert_layer(c, exact, attention, lm, o.convert, i);
    attention.clear();
    if (o.deployable) {
      const int64_t R = exact.kv_lora_rank_at(i);
      auto projection = latent_projection(lc.weights, i, R);
      double max_norm = 0;
      for (const DocState& s : calib) max_norm = std::max(max_norm, max_latent_norm(projection, layer->attn_norm(s.hidden)));
      anchor_max = std::max(anchor_max, add_latent_anchor(lc.weights, i, R, exact.qk_rope_head_dim, D, max_norm,
                                                          o.convert.anchor_factor));
      lc.report.kv_values_after += 1;
    }
    if (o.portable) {
      const int64_t R = exact.kv_lora_rank_at(i);
      auto projection = latent_projection(lc.weights, i, R);
      torch::Tensor s1, s2;
      for (const DocState& s : calib)
        accumulate_latent_norm_fit(projection, layer->attn_norm(s.hidden), final_config.rms_norm_eps, s1, s2);
      auto weight = torch::where(s2 > 0, s1 / s2.clamp_min(1e-300), torch::ones_like(s1));
      lc.weights[A + "kv_a_layernorm.weight"] = weight.to(torch::kFloat32);
    }
    auto original_params = layer->named_parameters();
    DecoderLayer converted = build_layer(final_config, i, [&](const std::string& hf, const std::string& key) {
      if (starts_with(hf, A)) {
        auto it = lc.weights.find(hf);
        MLA_CHECK(it != lc.weights.end(), "internal: the converter produced no '", hf, "'");
        return it->second;
      }
      const torch::Tensor* p = original_params.find(key);
      MLA_CHECK(p != nullptr, "internal: original layer has no parameter '", key, "'");
      return *p;
    }, o.device, "converted model");

    // 3b. Output-aware refits (below full rank; convert/output_refit.h): W_UV^h per head against the
    // original heads' outputs, then o_proj against the original attention output.
    const int64_t rank = exact.kv_lora_rank_at(i), full_rank = 2 * L - exact.qk_rope_head_dim;
    if (rank < full_rank && !calib.empty() && (o.convert.refit_values || o.convert.refit_output)) {
      auto& mla_attn = *converted->mla_attn;
      const int64_t H = final_config.num_attention_heads, nope = final_config.qk_nope_head_dim,
                    vd = final_config.v_head_dim, Rw = mla_attn.wkv_b->weight.size(1);
      auto w_uv_of = [&] {  // (H, v, R') view into kv_b_proj's value rows
        return mla_attn.wkv_b->weight.view({H, nope + vd, Rw}).narrow(1, nope, vd);
      };
      // Each token's row is weighted by 1 / RMS of its residual stream: what the attention adds is read
      // through the next RMSNorm, so an error matters relative to the token's scale, and the few tokens with
      // huge activations (attention sinks) must not dominate the fit.
      auto token_weight = [](const torch::Tensor& h) { return h.square().mean(-1, true).add(1e-12).rsqrt(); };  // (1, T, 1)
      if (o.convert.refit_values) {
        LeastSquaresMoments vm;
        for (const DocState& s : calib) {
          auto xn = layer->attn_norm(s.hidden);
          auto w = token_weight(s.hidden).unsqueeze(1);                            // (1, 1, T, 1)
          auto cbar = mla_attn.latent_context(xn, s.mla_ctx);                     // (1, H, T, R')
          auto target = layer->attn->head_outputs(xn, s.original_ctx, nullptr);  // (1, H, T, d)
          vm.add((cbar * w).squeeze(0), (target * w).squeeze(0));
        }
        Refit fit = ridge_refit(vm, w_uv_of());
        w_uv_of().copy_(fit.w.to(mla_attn.wkv_b->weight.options()));
        lc.weights[A + "kv_b_proj.weight"] = mla_attn.wkv_b->weight.detach().to(torch::kCPU, torch::kFloat32).clone();
        lc.report.value_error_before = fit.error_before;
        lc.report.value_error_after = fit.error_after;
      }
      if (o.convert.refit_output) {
        LeastSquaresMoments om;
        auto& wo = mla_attn.wo;
        for (const DocState& s : calib) {
          auto xn = layer->attn_norm(s.hidden);
          auto heads = torch::einsum("bhtr,hvr->bthv", {mla_attn.latent_context(xn, s.mla_ctx), w_uv_of()});
          auto x = heads.reshape({1, -1, H * vd});                                      // (1, T, H v)
          auto y = layer->attn->forward(xn, s.original_ctx, nullptr);                   // (1, T, D)
          if (s.hidden_original.defined()) {
            // Where the original model's residual stream is after this attention, minus where ours is now.
            y = s.hidden_original + layer->attn->forward(layer->attn_norm(s.hidden_original), s.original_ctx, nullptr) -
                s.hidden;
          }
          if (wo->bias.defined()) y = y - wo->bias;
          auto w = token_weight(s.hidden);                                              // (1, T, 1)
          om.add(x * w, y * w);
        }
        Refit fit = ridge_refit(om, wo->weight.unsqueeze(0));
        wo->weight.copy_(fit.w.squeeze(0).to(wo->weight.options()));
        lc.weights[A + "o_proj.weight"] = wo->weight.detach().to(torch::kCPU, torch::kFloat32).clone();
        lc.report.output_error_before = fit.error_before;
        lc.report.output_error_after = fit.error_after;
      }
    }

    if (o.verify_engine && !calib.empty()) {
      auto xn = converted->attn_norm(calib.front().hidden);
      auto engine = converted->mla_attn->forward(xn, calib.front().mla_ctx, nullptr).to(torch::kFloat32);
      auto reference = mla_reference_attention(*converted->mla_attn, final_config, i, xn).to(torch::kFloat32);
      const double diff = (engine - reference).abs().max().item<double>() /
                          std::max(1e-6, reference.abs().max().item<double>());
      result.engine_max_diff = std::max(result.engine_max_diff, diff);
      MLA_CHECK(diff <= o.verify_tolerance, "layer ", i, ": the MLA engine disagrees with the converter's reference "
                "attention (max relative difference ", diff, " > ", o.verify_tolerance, "): the rope slice is laid "
                "out as interleaved pairs (rope_interleave = true); applying half-split (rotate_half) RoPE to it, or "
                "any other layout mismatch, breaks the model");
    }

    // 4-5. Advance the documents.
    if (i + 1 < n_layers)
      for (DocState& s : calib) {
        s.hidden = o.sequential ? converted->forward(s.hidden, s.mla_ctx, nullptr)
                                : layer->forward(s.hidden, s.original_ctx, nullptr);
        if (s.hidden_original.defined()) s.hidden_original = layer->forward(s.hidden_original, s.original_ctx, nullptr);
      }
    for (DocState& s : eval) {
      s.hidden = layer->forward(s.hidden, s.original_ctx, nullptr);
      s.hidden_mla = converted->forward(s.hidden_mla, s.mla_ctx, nullptr);
    }

    // 6. Write: the converted attention, then the rest of the layer as stored.
    for (auto& [name, t] : lc.weights) emit(name, t);
    for (const WeightName& w : expand_weight_names(c))
      if (starts_with(w.hf, P) && !starts_with(w.hf, A)) pass_through(w.hf);
    if (o.keep_spectra) result.spectra.push_back(lc.spectrum);
    result.conversion.layers.push_back(lc.report);
    result.conversion.rotations.push_back(std::move(lc.rotation));
    if (o.keep_moments) {
      moments.joint.push_back(lm.joint);
      moments.max_input_norm.push_back(lm.max_input_norm);
      if (lm.input_moment.defined()) moments.input_moment.push_back(lm.input_moment);
      if (lm.query.defined()) moments.query.push_back(lm.query);
    }
    progress.update(i + 1);
  }
  progress.finish();

  release_free_memory();  // before the LM head's read and writer copy (2 x 1 GB for Llama-3-8B)
  pass_through("model.norm.weight");
  if (!c.tie_word_embeddings) pass_through("lm_head.weight");
  if (!eval.empty()) {
    RMSNorm norm(D, c.rms_norm_eps, c.family == Family::gemma2);
    norm->weight.copy_(reader.get("model.norm.weight"));
    norm->to(o.device);
    torch::Tensor head =
        reader.get(c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight").to(o.device, dtype);
    double before = 0, after = 0;
    int64_t tokens = 0;
    for (const DocState& s : eval) {
      before += document_nll(c, norm, head, s.hidden, s.tokens);
      after += document_nll(c, norm, head, s.hidden_mla, s.tokens);
      tokens += s.tokens.size(1) - 1;
    }
    MLA_CHECK(tokens > 0, "evaluation scored no tokens (documents too short?)");
    for (EvalResult* r : {&result.before, &result.after}) {
      r->documents = static_cast<int64_t>(eval.size());
      r->tokens = tokens;
    }
    result.before.mean_nll = before / static_cast<double>(tokens);
    result.after.mean_nll = after / static_cast<double>(tokens);
    result.before.perplexity = std::exp(result.before.mean_nll);
    result.after.perplexity = std::exp(result.after.mean_nll);
    result.evaluated = true;
  }

  // Every tensor of the source must have been used (derived rotary caches aside).
  for (const std::string& name : reader.names()) {
    if (consumed.count(name)) continue;
    if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;
    fail(origin, ": unexpected tensor '", name, "' (not part of a ", family_name(c.family), " model with this config)");
  }
  if (o.deployable) mark_deployable(config_json, anchor_max);
  if (o.portable) mark_portable(config_json);
  config_json["torch_dtype"] = torch_dtype_name(o.out_dtype);
  if (!o.sequential) config_json["mlaforge_conversion"]["calibration"] = "one pass (original model's activations)";
  else config_json["mlaforge_conversion"]["calibration"] = "sequential (layer i on the outputs of converted layers)";
  result.conversion.config_json = config_json;
  result.conversion.config = ModelConfig::from_json(config_json, "converted config");
  if (writer) result.files = writer->finish();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace mlaforge
