#include "convert/transmla.h"

#include "convert/pipeline.h"


#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include "core/error.h"
#include "core/log.h"
#include "model/attention.h"
#include "model/rope.h"
#include "model/tensor_io.h"
#include "model/weight_names.h"
#include "trainer/evaluate.h"

namespace mlaforge {
namespace {

namespace fs = std::filesystem;
using torch::indexing::Slice;

DecoderLayerImpl& layer_at(DecoderImpl& model, int64_t i) {
  return *model.layers[static_cast<size_t>(i)]->as<DecoderLayerImpl>();
}

// Attention probabilities of layer `layer` from explicit scaled scores (B, H, T, T), positions 0..T-1, as
// the engine's attention computes them for the family: Gemma2's soft-cap tanh(s / cap) * cap, the causal
// mask, narrowed to the sliding window on the layers that slide; float32 softmax.
torch::Tensor attention_probs(const torch::Tensor& scores, const ModelConfig& c, int64_t layer) {
  const int64_t T = scores.size(-1);
  auto s = scores.to(torch::kFloat32);
  if (c.attn_logit_softcapping) s = torch::tanh(s / *c.attn_logit_softcapping) * *c.attn_logit_softcapping;
  auto allowed = torch::ones({T, T}, scores.options().dtype(torch::kBool)).tril();
  if (c.sliding_window && c.layer_sliding.at(static_cast<size_t>(layer)))
    allowed = allowed.triu(1 - *c.sliding_window);  // key k visible from query q iff q - window < k <= q
  s = s.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  return torch::softmax(s, -1).to(scores.dtype());
}

// Rotates interleaved pairs (x[2p], x[2p+1]) of the last dim by angles (..., P) broadcastable to x's pairs.
torch::Tensor rotate_pairs(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  auto shape = x.sizes().vec();
  const int64_t P = x.size(-1) / 2;
  auto pairs = x.reshape({-1, P, 2});
  std::vector<int64_t> pshape(shape.begin(), shape.end() - 1);
  pshape.push_back(P);
  auto x0 = pairs.select(-1, 0).reshape(pshape), x1 = pairs.select(-1, 1).reshape(pshape);
  auto r0 = x0 * cos - x1 * sin, r1 = x0 * sin + x1 * cos;
  return torch::stack({r0, r1}, -1).reshape(shape);
}

// Symmetric square root of a positive semi-definite matrix, damped relative to its mean eigenvalue so
// that it is invertible (the PCA metric's inverse maps the latent back).
torch::Tensor sym_sqrt(const torch::Tensor& m, double damping) {
  auto sym = (m + m.t()) / 2;
  const int64_t n = sym.size(0);
  const double eps = std::max(damping, 1e-9) * (sym.trace().item<double>() / static_cast<double>(n) + 1e-300);
  auto [ev, vecs] = torch::linalg_eigh(sym + eps * torch::eye(n, sym.options()));
  return vecs.mm(torch::diag(ev.clamp_min(0).sqrt())).mm(vecs.t());
}

// The MLP half of a decoder layer (shared by the reference forwards).
torch::Tensor finish_layer(DecoderLayerImpl& l, const torch::Tensor& x, torch::Tensor attn_out) {
  if (l.attn_post_norm) attn_out = l.attn_post_norm(attn_out);
  auto y = x + attn_out;
  auto h = l.mlp_norm(y);
  h = l.moe ? l.moe(h) : l.mlp(h);
  if (l.mlp_post_norm) h = l.mlp_post_norm(h);
  return y + h;
}

torch::Tensor embed_tokens(DecoderImpl& model, const torch::Tensor& tokens) {
  auto x = model.embed(tokens);
  if (model.config().family == Family::gemma2)
    x = x * torch::tensor(model.config().embedding_multiplier(), x.options()).to(x.dtype());
  return x;
}

}  // namespace

void check_convertible(const ModelConfig& c) {
  MLA_CHECK(!c.is_mla(), "the model's attention is already MLA (", c.model_type, "); nothing to convert");
  // Gemma2 (query_pre_attn_scalar, soft-capping, sliding layers, sandwich norms) and Mixtral (experts,
  // sliding window) convert too: only the attention changes, and the converted model keeps its family.
  MLA_CHECK(c.rope_scaling.type != RopeScaling::Type::yarn && c.rope_scaling.type != RopeScaling::Type::dynamic,
            "rope_scaling '", rope_scaling_name(c.rope_scaling.type),
            "' is not supported by the converter (its frequencies depend on the rotary dimension)");
}

bool needs_query_moments(const ConvertOptions& o) { return o.pca_metric == "attention" || o.rope_select == "query"; }

bool conversion_keeps_family(const ModelConfig& c) { return c.family == Family::gemma2 || c.family == Family::mixtral; }

void check_deployable(const ModelConfig& c) {
  if (!conversion_keeps_family(c)) return;
  fail("--mode deployable is not available for ", family_name(c.family), ": a converted ", family_name(c.family),
       " keeps its family with MLA attention (mlaforge engine only, --mode exact), and no stock DeepSeek-V3 "
       "export reproduces it exactly: ",
       c.family == Family::gemma2
           ? "DeepSeek engines have no Gemma2 sandwich norms (post-attention / post-feedforward), attention or "
             "final logit soft-capping, alternating sliding-window layers or query_pre_attn_scalar"
           : "DeepSeek-V3's MoE router (sigmoid scores renormalised over the chosen experts, grouped top-k) is "
             "not Mixtral's softmax top-k router, and DeepSeek engines have no sliding window");
}

namespace {
// Runs the model over the calibration documents one layer at a time and hands each layer's normed
// attention input (1, T, D) to `visit` before the layer runs. Returns the number of tokens seen.
int64_t for_each_attention_input(
    DecoderImpl& model, const std::vector<std::vector<int64_t>>& docs,
    const std::function<void(int64_t layer, DecoderLayerImpl& l, const torch::Tensor& xn)>& visit) {
  const ModelConfig& c = model.config();
  RotaryEmbedding rope(c, c.head_dim);
  const auto device = model.embed->weight.device();
  int64_t tokens_seen = 0;
  for (const auto& doc : docs) {
    if (doc.empty()) continue;
    const int64_t T = static_cast<int64_t>(doc.size());
    auto tokens = torch::tensor(doc, torch::kInt64).unsqueeze(0).to(device);
    auto positions = torch::arange(T, tokens.options()).unsqueeze(0);
    AttentionContext ctx = build_attention_context(c, rope, positions, {}, {}, 0);
    auto x = embed_tokens(model, tokens);
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      auto& l = layer_at(model, i);
      visit(i, l, l.attn_norm(x));
      x = l.forward(x, ctx, nullptr);
    }
    tokens_seen += T;
  }
  return tokens_seen;
}

void add_input_moment(KVMoments& m, int64_t i, const torch::Tensor& xn) {
  auto x = xn.reshape({-1, xn.size(-1)}).to(torch::kCPU, torch::kFloat64);
  x = torch::cat({x, torch::ones({x.size(0), 1}, x.options())}, 1);
  if (static_cast<int64_t>(m.input_moment.size()) <= i) m.input_moment.resize(static_cast<size_t>(i) + 1);
  auto& acc = m.input_moment[static_cast<size_t>(i)];
  if (!acc.defined()) acc = torch::zeros({x.size(1), x.size(1)}, torch::kFloat64);
  acc += x.t().mm(x);
}
}  // namespace

void add_query_moment(torch::Tensor& acc, GQAAttentionImpl& attention, const ModelConfig& c, const torch::Tensor& xn) {
  const int64_t n_kv = c.num_key_value_heads, g = c.group_size(), d = c.head_dim;
  if (!acc.defined()) acc = torch::zeros({n_kv, d, d}, torch::kFloat64);
  auto q = attention.wq(xn).reshape({-1, n_kv, g, d}).to(torch::kCPU, torch::kFloat64);  // (T, n_kv, g, d)
  q = q.permute({1, 0, 2, 3}).reshape({n_kv, -1, d});                                    // (n_kv, T g, d)
  acc += q.transpose(1, 2).bmm(q);
}

KVMoments collect_kv_moments(DecoderImpl& model, const std::vector<std::vector<int64_t>>& docs, bool input_moments,
                             bool query_moments) {
  const ModelConfig& c = model.config();
  check_convertible(c);
  torch::NoGradGuard no_grad;
  const int64_t L = c.num_key_value_heads * c.head_dim;
  KVMoments m;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) m.joint.push_back(torch::zeros({2 * L, 2 * L}, torch::kFloat64));
  m.max_input_norm.assign(static_cast<size_t>(c.num_hidden_layers), 0.0);
  m.tokens = for_each_attention_input(model, docs, [&](int64_t i, DecoderLayerImpl& l, const torch::Tensor& xn) {
    auto kv = torch::cat({l.attn->wk(xn), l.attn->wv(xn)}, -1).reshape({-1, 2 * L}).to(torch::kCPU, torch::kFloat64);
    m.joint[static_cast<size_t>(i)] += kv.t().mm(kv);
    auto& mx = m.max_input_norm[static_cast<size_t>(i)];
    mx = std::max(mx, xn.to(torch::kFloat64).norm(2, -1).max().item<double>());
    if (input_moments) add_input_moment(m, i, xn);
    if (query_moments) {
      if (static_cast<int64_t>(m.query.size()) <= i) m.query.resize(static_cast<size_t>(i) + 1);
      add_query_moment(m.query[static_cast<size_t>(i)], *l.attn, c, xn);
    }
  });
  MLA_CHECK(m.tokens > 0, "calibration produced no tokens");
  return m;
}

KeyRotation key_rotation(const torch::Tensor& S, int64_t n_kv, int64_t d, int64_t P, int64_t F, double damping,
                         const torch::Tensor& query_moment) {
  const int64_t half = d / 2, L = n_kv * d;
  MLA_CHECK(F >= 1 && half % F == 0, "freqfold ", F, " must divide head_dim/2 = ", half);
  const int64_t folds = half / F, n = n_kv * F;
  // Two regimes. All-RoPE (P = L/2, stages 1 and 2 checked for exactness): every component keeps RoPE.
  // Decoupled rope key (P = r/2 pairs, c = d/r): pair p runs at the original frequency p*c; the fold holding
  // frequencies [fF, fF + F) supplies as many pairs as it holds multiples of c (F/c when c divides F, one
  // for the fold starting at a multiple of c when F divides c, none for the others).
  const bool all_rope = P == L / 2;
  int64_t c = 0;
  if (!all_rope) {
    MLA_CHECK(P >= 1 && half % P == 0, "rope pairs ", P, " must divide head_dim/2 = ", half);
    c = half / P;
    MLA_CHECK(F % c == 0 || c % F == 0, "freqfold ", F, " must divide or be a multiple of head_dim / rope_dim = ", c);
  }
  const bool query_aware = S.defined() && query_moment.defined();
  if (query_aware)
    MLA_CHECK(query_moment.dim() == 3 && query_moment.size(0) == n_kv && query_moment.size(1) == d &&
                  query_moment.size(2) == d,
              "query moment of shape ", query_moment.sizes(), ", expected (", n_kv, ", ", d, ", ", d, ")");
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  KeyRotation rot;
  rot.rope_pairs = P;
  rot.key_map = torch::zeros({L, L}, f64);
  rot.query_map = torch::zeros({L, L}, f64);
  rot.freq_index = torch::empty({P}, torch::kInt64);
  int64_t nope_row = 2 * P;
  for (int64_t f = 0; f < folds; ++f) {
    std::vector<int64_t> ri, ii;
    for (int64_t h = 0; h < n_kv; ++h)
      for (int64_t j = f * F; j < (f + 1) * F; ++j) {
        ri.push_back(h * d + j);
        ii.push_back(h * d + j + half);
      }
    // Pairs this fold supplies: their indices p (frequency p*c) in order.
    std::vector<int64_t> pairs;
    if (all_rope) {
      for (int64_t m = 0; m < n; ++m) pairs.push_back(f * n + m);
    } else {
      for (int64_t j = f * F; j < (f + 1) * F; ++j)
        if (j % c == 0) pairs.push_back(j / c);
    }
    const int64_t k = static_cast<int64_t>(pairs.size());
    auto rit = torch::tensor(ri, torch::kInt64), iit = torch::tensor(ii, torch::kInt64);
    // Columns m of Uk / Uq: component m's key and query coordinates (k'_m = Uk[:, m] . k, Uq = Uk^-T).
    torch::Tensor Uk, Uq;
    if (S.defined()) {
      // The real and the imaginary halves are two samples of the same rotation-invariant statistics.
      auto C = S.index_select(0, rit).index_select(1, rit) + S.index_select(0, iit).index_select(1, iit);
      C = (C + C.t()) / 2;
      torch::Tensor A, A_inv;  // the query metric's square root and its inverse (identity: key energy)
      if (query_aware) {
        // The fold's query moment: block-diagonal over KV heads (a query head sees its own group's keys only).
        std::vector<torch::Tensor> blocks;
        auto fold = torch::arange(f * F, (f + 1) * F, torch::kInt64);
        for (int64_t h = 0; h < n_kv; ++h) {
          auto Qh = query_moment[h];
          blocks.push_back(Qh.index_select(0, fold).index_select(1, fold) +
                           Qh.index_select(0, fold + half).index_select(1, fold + half));
        }
        auto Cq = torch::block_diag(blocks);
        Cq = (Cq + Cq.t()) / 2;
        Cq = Cq / (Cq.trace().item<double>() / static_cast<double>(n) + 1e-300);  // scale-free: isotropic -> I
        auto [qev, qvecs] = torch::linalg_eigh(Cq + std::max(damping, 1e-9) * torch::eye(n, f64));
        auto root = qev.clamp_min(1e-300).sqrt();
        A = qvecs.mm(torch::diag(root)).mm(qvecs.t());
        A_inv = qvecs.mm(torch::diag(root.reciprocal())).mm(qvecs.t());
        C = A.mm(C).mm(A);
        C = (C + C.t()) / 2;
      }
      const double eps = damping * (C.trace().item<double>() / static_cast<double>(n) + 1e-300);
      auto [ev, vecs] = torch::linalg_eigh(C + eps * torch::eye(n, f64));
      ev = ev.flip(0);
      auto V = vecs.flip(1);
      Uk = query_aware ? A.mm(V) : V;
      Uq = query_aware ? A_inv.mm(V) : V;
      rot.total_energy += ev.sum().item<double>();
      if (k > 0) rot.rope_energy += ev.narrow(0, 0, k).sum().item<double>();
    } else {
      Uk = Uq = torch::eye(n, f64);
    }
    for (int64_t m = 0; m < n; ++m) {
      int64_t row_r, row_i;
      if (m < k) {
        const int64_t p = pairs[static_cast<size_t>(m)];
        row_r = 2 * p;
        row_i = 2 * p + 1;
        // All-RoPE: component m (head m/F at frequency f*F + m%F before rotation) keeps that frequency,
        // exact when F == 1 (the rotation mixes heads only). Otherwise pair p runs at p*c.
        rot.freq_index[p] = all_rope ? f * F + m % F : p * c;
      } else {
        row_r = nope_row++;
        row_i = nope_row++;
      }
      rot.key_map.select(0, row_r).index_copy_(0, rit, Uk.select(1, m));
      rot.key_map.select(0, row_i).index_copy_(0, iit, Uk.select(1, m));
      rot.query_map.select(0, row_r).index_copy_(0, rit, Uq.select(1, m));
      rot.query_map.select(0, row_i).index_copy_(0, iit, Uq.select(1, m));
    }
  }
  MLA_CHECK(nope_row == L, "internal: key rotation filled ", nope_row, " of ", L, " rows");
  return rot;
}

torch::Tensor partial_rope_forward(DecoderImpl& model, const std::vector<KeyRotation>& rotations,
                                   const torch::Tensor& tokens) {
  const ModelConfig& c = model.config();
  check_convertible(c);
  MLA_CHECK(static_cast<int64_t>(rotations.size()) == c.num_hidden_layers, "one rotation per layer needed");
  torch::NoGradGuard no_grad;
  const int64_t B = tokens.size(0), T = tokens.size(1), H = c.num_attention_heads, n_kv = c.num_key_value_heads,
                d = c.head_dim, L = n_kv * d;
  auto freqs = rope_frequencies(c, d, T);
  auto positions = torch::arange(T, torch::kFloat32).to(tokens.device());
  auto group = torch::arange(H, torch::kInt64).div(c.group_size(), "floor").to(tokens.device());
  auto x = embed_tokens(model, tokens);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    auto& l = layer_at(model, i);
    const KeyRotation& rot = rotations[static_cast<size_t>(i)];
    const int64_t P = rot.rope_pairs;
    auto xn = l.attn_norm(x);
    auto Km = rot.key_map.to(xn.device(), xn.scalar_type());                              // (L, L)
    auto Qm = rot.query_map.to(xn.device(), xn.scalar_type());                            // (L, L)
    auto q = l.attn->wq(xn).view({B, T, H, d});
    auto k = l.attn->wk(xn);                                                              // (B, T, L)
    auto v = l.attn->wv(xn).view({B, T, n_kv, d}).index_select(2, group).transpose(1, 2);  // (B, H, T, d)
    auto Qh = Qm.view({L, n_kv, d}).index_select(1, group);                               // (L, H, d)
    auto qf = torch::einsum("bthi,lhi->bhtl", {q, Qh});                                   // (B, H, T, L)
    auto kf = k.matmul(Km.t()).unsqueeze(1);                                              // (B, 1, T, L)
    auto inv = freqs.inv_freq.to(xn.device()).index_select(0, rot.freq_index.to(xn.device()));  // (P,)
    auto ang = positions.unsqueeze(-1) * inv;                                             // (T, P)
    auto cs = (ang.cos() * freqs.attention_scaling).to(xn.scalar_type());
    auto sn = (ang.sin() * freqs.attention_scaling).to(xn.scalar_type());
    auto rope_part = [&](const torch::Tensor& t) {
      return torch::cat({rotate_pairs(t.narrow(-1, 0, 2 * P), cs, sn), t.narrow(-1, 2 * P, L - 2 * P)}, -1);
    };
    auto scores = rope_part(qf).matmul(rope_part(kf).transpose(-1, -2)) * c.attention_scale();  // (B, H, T, T)
    auto out = attention_probs(scores, c, i).matmul(v);                                    // (B, H, T, d)
    auto a = l.attn->wo(out.transpose(1, 2).reshape({B, T, H * d}));
    x = finish_layer(l, x, a);
  }
  return model.logits_from_hidden(model.norm(x));
}

ResolvedRanks resolve_ranks(const ModelConfig& c, const ConvertOptions& o) {
  const int64_t d = c.head_dim, L = c.num_key_value_heads * d;
  ResolvedRanks r{};
  r.rope_dim = o.rope_dim > 0 ? o.rope_dim : std::min<int64_t>(64, d);
  MLA_CHECK(r.rope_dim % 2 == 0 && r.rope_dim <= d && d % r.rope_dim == 0, "--rope-dim ", r.rope_dim,
            " must be even and divide head_dim ", d);
  const int64_t cfold = d / r.rope_dim;
  r.freqfold = o.freqfold > 0 ? o.freqfold : cfold;
  MLA_CHECK((r.freqfold % cfold == 0 || cfold % r.freqfold == 0) && (d / 2) % r.freqfold == 0, "--freqfold ",
            r.freqfold, " must divide or be a multiple of head_dim / rope_dim = ", cfold,
            ", and divide head_dim / 2 = ", d / 2);
  const int64_t max_rank = 2 * L - r.rope_dim;
  r.kv_lora_rank = o.kv_lora_rank > 0 ? std::min(o.kv_lora_rank, max_rank) : std::min<int64_t>(512, max_rank);
  return r;
}

nlohmann::json mla_config_json(const ModelConfig& c, const ConvertOptions& o, const std::vector<int64_t>& layer_ranks,
                               int64_t calibration_tokens) {
  check_convertible(c);
  const ResolvedRanks rr = resolve_ranks(c, o);
  const int64_t d = c.head_dim, H = c.num_attention_heads, r = rr.rope_dim, n_layers = c.num_hidden_layers;
  int64_t R = rr.kv_lora_rank;
  if (!layer_ranks.empty()) {
    MLA_CHECK(static_cast<int64_t>(layer_ranks.size()) == n_layers, "per-layer ranks: ", layer_ranks.size(),
              " given for ", n_layers, " layers");
    R = *std::max_element(layer_ranks.begin(), layer_ranks.end());
    for (int64_t rank : layer_ranks)
      MLA_CHECK(rank >= 1 && rank <= 2 * c.num_key_value_heads * d - r, "per-layer rank ", rank, " outside [1, ",
                2 * c.num_key_value_heads * d - r, "]");
  }
  nlohmann::json j = c.raw;
  // Gemma2 and Mixtral keep their family (norms, soft-capping, sliding windows, experts) and gain MLA
  // attention fields plus the "mlaforge_attention" marker (mlaforge engine only); the others become
  // deepseek_v3, which stock engines load.
  const bool keep_family = conversion_keeps_family(c);
  if (keep_family) {
    j.erase("head_dim");  // the MLA head is nope + rope wide; head_dim would contradict it
    j["mlaforge_attention"] = "mla";
    // Gemma2's softmax scale stays query_pre_attn_scalar^-1/2; written out because its default (the GQA
    // head_dim) no longer holds.
    if (c.family == Family::gemma2) j["query_pre_attn_scalar"] = c.query_pre_attn_scalar;
  } else {
    for (const char* key : {"head_dim", "mlp_bias", "attention_bias", "num_local_experts", "sliding_window",
                            "use_sliding_window", "max_window_layers", "rope_parameters"})
      j.erase(key);
    j["model_type"] = "deepseek_v3";
    j["architectures"] = {"DeepseekV3ForCausalLM"};
  }
  j["num_key_value_heads"] = H;
  j["kv_lora_rank"] = R;
  const bool uniform = layer_ranks.empty() ||
                       std::all_of(layer_ranks.begin(), layer_ranks.end(), [&](int64_t x) { return x == R; });
  if (!uniform) j["mlaforge_kv_lora_ranks"] = layer_ranks;
  j["q_lora_rank"] = nullptr;
  j["qk_rope_head_dim"] = r;
  j["qk_nope_head_dim"] = d;
  j["v_head_dim"] = d;
  if (!keep_family) {
    j["first_k_dense_replace"] = n_layers;
    // first_k_dense_replace = num_hidden_layers makes every layer a dense MLP; transformers >= 5 rejects null
    // n_routed_experts / n_shared_experts, so they are left out.
    j.erase("n_routed_experts");
    j.erase("n_shared_experts");
  }
  const bool bias = c.attention_bias || c.o_proj_bias;
  const int64_t qr = std::min<int64_t>(o.q_lora_rank, c.hidden_size);
  j["attention_bias"] = bias || qr > 0;
  if (qr > 0) {
    j["q_lora_rank"] = qr + 1;  // PCA rank plus the anchor dimension
  } else if (bias) {
    j["q_lora_rank"] = c.hidden_size + 1;  // the query-bias anchor (see ConvertOptions)
  }
  j["rope_interleave"] = true;
  if (!keep_family) {  // a kept family's rope fields (rope_theta, rope_scaling / rope_parameters) stay as they were
    j["rope_theta"] = c.rope_theta;
    if (!c.rope_scaling.raw.is_null()) j["rope_scaling"] = c.rope_scaling.raw;
  }
  j["torch_dtype"] = "float32";
  j["mlaforge_latent_norm"] = false;
  j["mlaforge_conversion"] = {{"method", "TransMLA: RoRoPE + FreqFold + BKV-PCA"},
                              {"mode", "exact (mlaforge engine only): no kv_a_layernorm on the latent"},
                              {"source_model_type", c.model_type},
                              {"freqfold", rr.freqfold},
                              {"pca_metric", o.pca_metric},
                              {"rope_select", o.rope_select},
                              {"refit_values", o.refit_values},
                              {"refit_output", o.refit_output},
                              {"calibration_tokens", calibration_tokens}};
  return j;
}

LayerMoments layer_moments(const KVMoments& m, int64_t i) {
  const auto k = static_cast<size_t>(i);
  MLA_CHECK(k < m.joint.size(), "calibration moments for ", m.joint.size(), " layers, layer ", i, " asked");
  LayerMoments lm;
  lm.joint = m.joint[k];
  if (k < m.input_moment.size()) lm.input_moment = m.input_moment[k];
  if (k < m.query.size()) lm.query = m.query[k];
  lm.max_input_norm = k < m.max_input_norm.size() ? m.max_input_norm[k] : 1.0;
  return lm;
}

LayerConversion convert_layer(const ModelConfig& c, const ModelConfig& mla, const StateDict& original,
                              const LayerMoments& moments, const ConvertOptions& o, int64_t i) {
  const ResolvedRanks rr = resolve_ranks(c, o);
  const int64_t d = c.head_dim, H = c.num_attention_heads, n_kv = c.num_key_value_heads, g = c.group_size(),
                L = n_kv * d, r = rr.rope_dim, R = mla.kv_lora_rank_at(i), N = L - r, Dm = c.hidden_size;
  MLA_CHECK(mla.qk_rope_head_dim == r, "internal: MLA config rope dim ", mla.qk_rope_head_dim, " != ", r);
  // Query scale: original softmax scale over the MLA one, folded into q_proj, so that the MLA model's
  // scaled scores equal the original's: sqrt((d + r) / d) for 1/sqrt(head_dim) families; 1 for Gemma2,
  // whose scale query_pre_attn_scalar^-1/2 does not depend on the head width (and whose soft-cap therefore
  // sees the same scaled scores).
  const double qscale = static_cast<double>(c.attention_scale()) / static_cast<double>(mla.attention_scale());
  const bool bias = c.attention_bias || c.o_proj_bias;
  const int64_t qr = std::min<int64_t>(o.q_lora_rank, c.hidden_size);
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const std::string A = "model.layers." + std::to_string(i) + ".self_attn.";
  auto get = [&](const std::string& n) {
    auto it = original.find(A + n);
    MLA_CHECK(it != original.end(), "missing tensor '", A + n, "'");
    return it->second.to(torch::kCPU, torch::kFloat64);
  };
  auto get_bias = [&](const std::string& n, int64_t rows) {
    auto it = original.find(A + n);
    return it != original.end() ? it->second.to(torch::kCPU, torch::kFloat64) : torch::zeros({rows}, f64);
  };
  // Biases as an extra input column (constant 1): every linear map below carries them along exactly.
  auto Wq = torch::cat({get("q_proj.weight"), get_bias("q_proj.bias", H * d).unsqueeze(1)}, 1);
  auto Wk = torch::cat({get("k_proj.weight"), get_bias("k_proj.bias", L).unsqueeze(1)}, 1);
  auto Wv = torch::cat({get("v_proj.weight"), get_bias("v_proj.bias", L).unsqueeze(1)}, 1);
  auto Wo = get("o_proj.weight");
  const auto& S = moments.joint;
  MLA_CHECK(S.defined() && S.size(0) == 2 * L, "layer ", i, ": calibration moment missing or mis-shaped");
  MLA_CHECK(o.rope_select == "key" || o.rope_select == "query", "unknown RoPE selection '", o.rope_select,
            "' (expected key or query)");
  torch::Tensor rope_query_moment;
  if (o.rope_select == "query") {
    MLA_CHECK(moments.query.defined() && moments.query.size(0) == n_kv, "layer ", i,
              ": the query-aware RoPE selection needs the calibration query moments");
    rope_query_moment = moments.query;
  }
  KeyRotation rot = key_rotation(S.narrow(0, 0, L).narrow(1, 0, L), n_kv, d, r / 2, rr.freqfold, o.damping,
                                 rope_query_moment);
  // Key side (k' = key_map k) and query side (q' = query_map q) of the rope rows and the nope rows.
  auto Kpe = rot.key_map.narrow(0, 0, r), Kn = rot.key_map.narrow(0, r, N);
  auto Qpe = rot.query_map.narrow(0, 0, r), Qn = rot.query_map.narrow(0, r, N);

  // [k_nope; v] = T [k; v]
  auto T = torch::zeros({N + L, 2 * L}, f64);
  T.narrow(0, 0, N).narrow(1, 0, L).copy_(Kn);
  T.narrow(0, N, L).narrow(1, L, L).copy_(torch::eye(L, f64));
  auto S2 = T.mm(S).mm(T.t());
  // The PCA runs on y_w = G y, y = [k_nope; v]: G is diagonal (one key scale) for the balanced metric,
  // block-diagonal square roots of the attention metrics for "attention" (pca_metric above).
  MLA_CHECK(o.pca_metric == "balanced" || o.pca_metric == "attention", "unknown PCA metric '", o.pca_metric,
            "' (expected balanced or attention)");
  auto G = torch::eye(N + L, f64);
  // At full rank the metric changes nothing but rounding: the plain balanced form is the better conditioned.
  if (o.pca_metric == "attention" && R < N + L) {
    MLA_CHECK(moments.query.defined() && moments.query.size(0) == n_kv, "layer ", i,
              ": the attention PCA metric needs the calibration query moments");
    std::vector<torch::Tensor> mq, gv;
    for (int64_t j = 0; j < n_kv; ++j) {
      mq.push_back(moments.query[j] * qscale * qscale);
      auto Wo_j = Wo.narrow(1, j * g * d, g * d).reshape({Wo.size(0), g, d});  // (D, g, d): the group's heads
      gv.push_back(torch::einsum("ahi,ahj->ij", {Wo_j, Wo_j}));                // sum_h W_o,h^T W_o,h
    }
    G.narrow(0, 0, N).narrow(1, 0, N).copy_(sym_sqrt(Qn.mm(torch::block_diag(mq)).mm(Qn.t()), o.damping));
    G.narrow(0, N, L).narrow(1, N, L).copy_(sym_sqrt(torch::block_diag(gv), o.damping));
  }
  auto Sw = G.mm(S2).mm(G.t());
  auto diag = Sw.diagonal().clamp_min(0).sqrt();
  double alpha = 1.0;
  if (o.balance_kv && N > 0) {
    const double kn = diag.narrow(0, 0, N).mean().item<double>(), vn = diag.narrow(0, N, L).mean().item<double>();
    if (kn > 0 && vn > 0) alpha = vn / kn;
  }
  G.narrow(0, 0, N).mul_(alpha);
  auto S3 = G.mm(S2).mm(G.t());
  S3 = (S3 + S3.t()) / 2;
  const double eps = o.damping * (S3.trace().item<double>() / static_cast<double>(N + L) + 1e-300);
  auto [ev, vecs] = torch::linalg_eigh(S3 + eps * torch::eye(N + L, f64));
  ev = ev.flip(0);
  auto Pm = vecs.flip(1).narrow(1, 0, R);  // (N + L, R)

  auto Wkv = torch::cat({Wk, Wv}, 0);                 // (2L, D + 1)
  auto Wdkv = Pm.t().mm(G.mm(T.mm(Wkv)));             // (R, D + 1): c = P^T G y
  auto up = torch::linalg_solve(G, Pm, true);         // (N + L, R): y ~ G^-1 P c (least squares in the metric)
  auto Ak = up.narrow(0, 0, N), Av = up.narrow(0, N, L);  // (N, R), (L, R)
  auto Wkpe = Kpe.mm(Wk);                                       // (r, D + 1)
  std::vector<torch::Tensor> q_rows, kvb_rows;
  for (int64_t h = 0; h < H; ++h) {
    const int64_t grp = h / g;
    auto Wq_h = Wq.narrow(0, h * d, d);  // (d, D + 1)
    q_rows.push_back(Wq_h * qscale);
    q_rows.push_back(Qpe.narrow(1, grp * d, d).mm(Wq_h) * qscale);
    kvb_rows.push_back(Qn.narrow(1, grp * d, d).t().mm(Ak));  // W_UK^h (d, R)
    kvb_rows.push_back(Av.narrow(0, grp * d, d));            // W_UV^h (d, R)
  }
  auto q_all = torch::cat(q_rows, 0);           // (H * (d + r), D + 1)
  auto kv_a = torch::cat({Wdkv, Wkpe}, 0);      // (R + r, D + 1)
  LayerConversion out;
  StateDict& w = out.weights;
  if (qr > 0) {
    MLA_CHECK(moments.input_moment.defined(),
              "--q-lora-rank needs the calibration input moments (collect_kv_moments(..., true))");
    auto Sq = q_all.mm(moments.input_moment).mm(q_all.t());  // query second moment
    Sq = (Sq + Sq.t()) / 2;
    auto [qev, qvecs] = torch::linalg_eigh(Sq);
    auto U = qvecs.flip(1).narrow(1, 0, qr);        // (H * (d + r), Rq)
    auto qa = U.t().mm(q_all);                      // (Rq, D + 1): weights and bias column
    const double in_norm = moments.max_input_norm;
    const double Bq = o.anchor_factor * std::max(qa.norm().item<double>() * std::sqrt(in_norm * in_norm + 1), 1e-3);
    auto qa_w = torch::cat({qa.narrow(1, 0, Dm), torch::zeros({1, Dm}, f64)}, 0);
    auto qa_b = torch::cat({qa.select(1, Dm), torch::full({1}, Bq, f64)}, 0);
    auto norm_w = torch::full({qr + 1}, Bq / std::sqrt(static_cast<double>(qr + 1)), f64);
    norm_w[qr] = 0;
    w[A + "q_a_proj.weight"] = qa_w.to(torch::kFloat32);
    w[A + "q_a_proj.bias"] = qa_b.to(torch::kFloat32);
    w[A + "q_a_layernorm.weight"] = norm_w.to(torch::kFloat32);
    w[A + "q_b_proj.weight"] = torch::cat({U, torch::zeros({U.size(0), 1}, f64)}, 1).to(torch::kFloat32);
    w[A + "kv_a_proj_with_mqa.bias"] = kv_a.select(1, Dm).to(torch::kFloat32);
    w[A + "o_proj.bias"] = get_bias("o_proj.bias", Dm).to(torch::kFloat32);
  } else if (!bias) {
    w[A + "q_proj.weight"] = q_all.narrow(1, 0, Dm).to(torch::kFloat32);
  } else {
    const double Bq = o.anchor_factor * std::max(moments.max_input_norm, 1e-3);
    auto qa = torch::cat({torch::eye(Dm, f64), torch::zeros({1, Dm}, f64)}, 0);  // [x; B]
    auto qa_bias = torch::zeros({Dm + 1}, f64);
    qa_bias[Dm] = Bq;
    w[A + "q_a_proj.weight"] = qa.to(torch::kFloat32);
    w[A + "q_a_proj.bias"] = qa_bias.to(torch::kFloat32);
    w[A + "q_a_layernorm.weight"] = torch::full({Dm + 1}, Bq / std::sqrt(static_cast<double>(Dm + 1)), torch::kFloat32);
    auto qb = q_all.clone();
    qb.select(1, Dm).div_(Bq);
    w[A + "q_b_proj.weight"] = qb.to(torch::kFloat32);
    w[A + "kv_a_proj_with_mqa.bias"] = kv_a.select(1, Dm).to(torch::kFloat32);
    w[A + "o_proj.bias"] = get_bias("o_proj.bias", Dm).to(torch::kFloat32);
  }
  w[A + "kv_a_proj_with_mqa.weight"] = kv_a.narrow(1, 0, Dm).to(torch::kFloat32);
  w[A + "kv_a_layernorm.weight"] = torch::ones({R}, torch::kFloat32);
  w[A + "kv_b_proj.weight"] = torch::cat(kvb_rows, 0).to(torch::kFloat32);
  w[A + "o_proj.weight"] = Wo.to(torch::kFloat32);

  out.report.kv_values_before = 2 * L;
  out.report.kv_values_after = R + r;
  out.report.rope_energy = rot.total_energy > 0 ? rot.rope_energy / rot.total_energy : 0;
  const double tot = ev.sum().item<double>();
  out.report.pca_energy = tot > 0 ? ev.narrow(0, 0, R).sum().item<double>() / tot : 1;
  out.report.kv_balance = alpha;
  out.rotation = std::move(rot);
  out.spectrum = ev;
  return out;
}

ConvertResult convert_to_mla(const ModelConfig& c, const StateDict& original, const KVMoments& moments,
                             const ConvertOptions& o, int64_t only_layer) {
  check_convertible(c);
  const int64_t n_layers = c.num_hidden_layers;
  MLA_CHECK(static_cast<int64_t>(moments.joint.size()) == n_layers, "calibration moments for ",
            moments.joint.size(), " layers, model has ", n_layers);
  ConvertResult res;
  res.config_json = mla_config_json(c, o, {}, moments.tokens);
  res.config = ModelConfig::from_json(res.config_json, "converted config");
  for (const auto& [name, t] : original) {
    if (name.find(".self_attn.") != std::string::npos) continue;
    res.weights[name] = t.to(torch::kFloat32).contiguous();
  }
  for (int64_t i = 0; i < n_layers; ++i) {
    if (only_layer >= 0 && i != only_layer) continue;
    LayerConversion lc = convert_layer(c, res.config, original, layer_moments(moments, i), o, i);
    for (auto& [name, t] : lc.weights) res.weights[name] = std::move(t);
    res.layers.push_back(lc.report);
    res.rotations.push_back(std::move(lc.rotation));
  }
  return res;
}

ConvertResult convert_sequential(DecoderImpl& model, const StateDict& original,
                                 const std::vector<std::vector<int64_t>>& docs, const ConvertOptions& o,
                                 KVMoments* moments_out) {
  PipelineOptions po;
  po.convert = o;
  po.sequential = true;
  po.keep_weights = true;
  po.keep_moments = moments_out != nullptr;
  po.progress = false;
  po.device = model.embed->weight.device();
  PipelineResult r = convert_streaming(model.config(), WeightReader(original, "original model"), docs, {}, po);
  if (moments_out) *moments_out = std::move(r.moments);
  return std::move(r.conversion);
}

int64_t search_freqfold(const ModelConfig& c, const WeightReader& weights, const std::vector<std::vector<int64_t>>& docs,
                        const ConvertOptions& options, torch::Device device, nlohmann::json* trials) {
  MLA_CHECK(docs.size() >= 2, "--freqfold auto needs at least 2 calibration documents (3/4 fit, 1/4 held out)");
  const size_t held = std::max<size_t>(1, docs.size() / 4);
  std::vector<std::vector<int64_t>> fit(docs.begin(), docs.end() - static_cast<std::ptrdiff_t>(held)),
      heldout(docs.end() - static_cast<std::ptrdiff_t>(held), docs.end());
  PipelineOptions po;
  po.convert = options;
  po.convert.freqfold = 0;
  po.convert.q_lora_rank = 0;  // the fold only shapes the keys
  po.sequential = false;       // one pass: a cheap, comparable score per fold
  po.progress = false;
  po.device = device;
  const int64_t cfold = c.head_dim / resolve_ranks(c, po.convert).rope_dim, half = c.head_dim / 2;
  int64_t best = 0;
  double best_nll = std::numeric_limits<double>::infinity();
  if (trials) *trials = nlohmann::json::array();
  for (int64_t F = 1; F <= half; ++F) {
    if (half % F != 0 || (F % cfold != 0 && cfold % F != 0)) continue;
    po.convert.freqfold = F;
    const double nll = convert_streaming(c, weights, fit, heldout, po).after.mean_nll;
    log::info("freqfold ", F, ": held-out calibration NLL ", nll);
    if (trials) trials->push_back({{"freqfold", F}, {"heldout_nll", nll}});
    if (nll < best_nll) {
      best_nll = nll;
      best = F;
    }
  }
  MLA_CHECK(best > 0, "no valid freqfold for head_dim ", c.head_dim);
  return best;
}

torch::Tensor latent_projection(const StateDict& w, int64_t layer, int64_t R) {
  const std::string A = "model.layers." + std::to_string(layer) + ".self_attn.";
  auto weight = w.at(A + "kv_a_proj_with_mqa.weight").narrow(0, 0, R).to(torch::kFloat64);
  auto it = w.find(A + "kv_a_proj_with_mqa.bias");
  auto b = it != w.end() ? it->second.narrow(0, 0, R).to(torch::kFloat64) : torch::zeros({R}, torch::kFloat64);
  return torch::cat({weight, b.unsqueeze(1)}, 1);  // bias as an extra input column
}

double max_latent_norm(const torch::Tensor& projection, const torch::Tensor& normed_input) {
  auto xn = normed_input.reshape({-1, normed_input.size(-1)}).to(torch::kCPU, torch::kFloat64);
  xn = torch::cat({xn, torch::ones({xn.size(0), 1}, xn.options())}, 1);
  return xn.mm(projection.t()).norm(2, -1).max().item<double>();
}

double add_latent_anchor(StateDict& w, int64_t layer, int64_t R, int64_t r, int64_t hidden_size, double max_norm,
                         double anchor_factor) {
  const std::string A = "model.layers." + std::to_string(layer) + ".self_attn.";
  const double B = anchor_factor * std::max(max_norm, 1e-3);
  auto& kva = w.at(A + "kv_a_proj_with_mqa.weight");  // (R + r, D)
  const int64_t D = kva.size(1);
  kva = torch::cat({kva.narrow(0, 0, R), torch::zeros({1, D}, kva.options()), kva.narrow(0, R, r)}, 0);
  auto bias = torch::zeros({R + 1 + r}, torch::kFloat32);
  auto it = w.find(A + "kv_a_proj_with_mqa.bias");
  if (it != w.end()) {
    bias.narrow(0, 0, R).copy_(it->second.narrow(0, 0, R));
    bias.narrow(0, R + 1, r).copy_(it->second.narrow(0, R, r));
  }
  bias[R] = B;
  w[A + "kv_a_proj_with_mqa.bias"] = bias;
  auto norm = torch::full({R + 1}, B / std::sqrt(static_cast<double>(R + 1)), torch::kFloat64);
  norm[R] = 0;
  w[A + "kv_a_layernorm.weight"] = norm.to(torch::kFloat32);
  auto& kvb = w.at(A + "kv_b_proj.weight");  // (H * 2d, R)
  kvb = torch::cat({kvb, torch::zeros({kvb.size(0), 1}, kvb.options())}, 1);
  if (!w.count(A + "o_proj.bias")) w[A + "o_proj.bias"] = torch::zeros({hidden_size}, torch::kFloat32);
  return B;
}

void mark_deployable(nlohmann::json& j, double anchor_max) {
  MLA_CHECK(j.value("model_type", "") == "deepseek_v3",
            "deployable mode writes a stock DeepSeek-V3 model; this conversion keeps its family (model_type '",
            j.value("model_type", ""), "', MLA attention for the mlaforge engine), which stock engines cannot run: "
            "use --mode exact (see convert/README.md)");
  MLA_CHECK(!j.contains("mlaforge_kv_lora_ranks"), "deployable mode needs one kv_lora_rank for every layer (stock "
            "DeepSeek engines have no per-layer ranks); per-layer ranks (--kv-budget) are exact mode only");
  j.erase("mlaforge_latent_norm");
  j["kv_lora_rank"] = j["kv_lora_rank"].get<int64_t>() + 1;
  j["attention_bias"] = true;
  j["mlaforge_conversion"]["mode"] =
      "deployable (stock DeepSeek engines): kv_a_layernorm applied; one anchor latent dimension (kv_a bias up to " +
      std::to_string(anchor_max) + ") makes the per-token RMS constant, so the norm is undone up to rounding";
}

void check_portable(const ModelConfig& c, const ConvertOptions& o) {
  check_deployable(c);
  MLA_CHECK(!c.attention_bias && !c.o_proj_bias, "--mode portable writes no biases (vLLM / SGLang build DeepSeek-V3's "
            "projections without them), but this model has attention biases: use --mode deployable (transformers) "
            "or exact");
  MLA_CHECK(o.q_lora_rank == 0, "--mode portable cannot undo q_a_layernorm without a bias anchor: drop --q-lora-rank");
}

void mark_portable(nlohmann::json& j) {
  mark_deployable(j, 0);
  j["kv_lora_rank"] = j["kv_lora_rank"].get<int64_t>() - 1;  // no anchor dimension
  j["attention_bias"] = false;
  j["mlaforge_conversion"]["mode"] =
      "portable (vLLM / SGLang): kv_a_layernorm applied with its weight fitted to the calibration latents; no "
      "biases; approximate (see the evaluation)";
}

void accumulate_latent_norm_fit(const torch::Tensor& projection, const torch::Tensor& normed_input, double eps,
                                torch::Tensor& s1, torch::Tensor& s2) {
  auto xn = normed_input.reshape({-1, normed_input.size(-1)}).to(torch::kCPU, torch::kFloat64);
  xn = torch::cat({xn, torch::ones({xn.size(0), 1}, xn.options())}, 1);
  auto c = xn.mm(projection.t());                                       // (tokens, R)
  auto rms = (c.pow(2).mean(-1, true) + eps).sqrt();                    // (tokens, 1)
  if (!s1.defined()) s1 = torch::zeros({c.size(1)}, torch::kFloat64), s2 = torch::zeros({c.size(1)}, torch::kFloat64);
  s1 += (c.pow(2) / rms).sum(0);
  s2 += (c.pow(2) / rms.pow(2)).sum(0);
}

void make_deployable(DecoderImpl& model, const std::vector<std::vector<int64_t>>& docs, ConvertResult& res,
                     double anchor_factor) {
  const ModelConfig& c = model.config();
  check_deployable(c);
  torch::NoGradGuard no_grad;
  MLA_CHECK(!res.config.latent_norm, "make_deployable: expects an exact-mode conversion");
  const int64_t r = res.config.qk_rope_head_dim, n_layers = c.num_hidden_layers;
  std::vector<torch::Tensor> projections;
  for (int64_t i = 0; i < n_layers; ++i) projections.push_back(latent_projection(res.weights, i, res.config.kv_lora_rank_at(i)));
  std::vector<double> max_norm(static_cast<size_t>(n_layers), 0.0);
  for_each_attention_input(model, docs, [&](int64_t i, DecoderLayerImpl&, const torch::Tensor& normed) {
    auto& m = max_norm[static_cast<size_t>(i)];
    m = std::max(m, max_latent_norm(projections[static_cast<size_t>(i)], normed));
  });
  double anchor_max = 0;
  for (int64_t i = 0; i < n_layers; ++i)
    anchor_max = std::max(anchor_max, add_latent_anchor(res.weights, i, res.config.kv_lora_rank_at(i), r, c.hidden_size,
                                                        max_norm[static_cast<size_t>(i)], anchor_factor));
  mark_deployable(res.config_json, anchor_max);
  res.config = ModelConfig::from_json(res.config_json, "converted config");
  for (auto& l : res.layers) l.kv_values_after += 1;
}

torch::Tensor mla_reference_attention(MLAAttentionImpl& a, const ModelConfig& c, int64_t layer, const torch::Tensor& xn) {
  torch::NoGradGuard no_grad;
  const int64_t B = xn.size(0), T = xn.size(1), H = c.num_attention_heads, nope = c.qk_nope_head_dim,
                r = c.qk_rope_head_dim, vd = c.v_head_dim, R = c.kv_lora_rank_at(layer);
  auto freqs = rope_frequencies(c, r, T);
  auto ang = torch::arange(T, torch::kFloat32).unsqueeze(-1) * freqs.inv_freq;  // (T, r/2)
  auto cs = (ang.cos() * freqs.attention_scaling).to(xn.device(), xn.scalar_type());
  auto sn = (ang.sin() * freqs.attention_scaling).to(xn.device(), xn.scalar_type());
  auto q = (a.wq ? a.wq(xn) : a.wq_b(a.q_a_norm(a.wq_a(xn)))).view({B, T, H, nope + r}).transpose(1, 2);
  auto kva = a.wkv_a(xn);
  auto ckv = kva.narrow(-1, 0, R);
  if (c.latent_norm) ckv = a.kv_a_norm(ckv);
  auto kpe = rotate_pairs(kva.narrow(-1, R, r).unsqueeze(1), cs, sn);  // (B, 1, T, r), pairs interleaved
  auto kv = a.wkv_b(ckv).view({B, T, H, nope + vd}).transpose(1, 2);
  auto scores = q.narrow(-1, 0, nope).matmul(kv.narrow(-1, 0, nope).transpose(-1, -2)) +
                rotate_pairs(q.narrow(-1, nope, r).contiguous(), cs, sn).matmul(kpe.transpose(-1, -2));
  auto out = attention_probs(scores * c.attention_scale(), c, layer).matmul(kv.narrow(-1, nope, vd));  // (B, H, T, v)
  return a.wo(out.transpose(1, 2).reshape({B, T, H * vd}));
}

torch::Tensor mla_reference_forward(DecoderImpl& model, const torch::Tensor& tokens) {
  const ModelConfig& c = model.config();
  MLA_CHECK(c.is_mla(), "mla_reference_forward: needs an MLA model");
  torch::NoGradGuard no_grad;
  auto x = embed_tokens(model, tokens);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    auto& l = layer_at(model, i);
    x = finish_layer(l, x, mla_reference_attention(*l.mla_attn, c, i, l.attn_norm(x)));
  }
  return model.logits_from_hidden(model.norm(x));
}

double verify_mla_engine(DecoderImpl& model, const torch::Tensor& tokens, double tolerance) {
  torch::NoGradGuard no_grad;
  auto engine = model.forward(tokens).to(torch::kFloat32);
  auto ref = mla_reference_forward(model, tokens).to(torch::kFloat32);
  const double diff = (engine - ref).abs().max().item<double>();
  const double scale = std::max(1.0, ref.abs().max().item<double>());
  MLA_CHECK(diff <= tolerance * scale, "MLA engine disagrees with the converter's reference forward (max |logit "
            "difference| ", diff, " > ", tolerance * scale, "): the rope slice is laid out as interleaved pairs "
            "(rope_interleave = true); applying half-split (rotate_half) RoPE to it, or any other layout "
            "mismatch, breaks the model");
  return diff;
}

void write_model_metadata(const std::string& dir, const nlohmann::json& config_json, const ModelSource& source) {
  fs::create_directories(dir);
  {
    std::ofstream out(dir + "/config.json");
    MLA_CHECK(out.good(), dir, "/config.json: cannot write");
    out << config_json.dump(2) << "\n";
  }
  for (const auto& f : source.tokenizer_files) {
    std::error_code ec;
    fs::copy_file(f, fs::path(dir) / fs::path(f).filename(), fs::copy_options::overwrite_existing, ec);
    if (ec) log::warn("could not copy tokenizer file ", f, ": ", ec.message());
  }
  for (const auto& [name, contents] : source.generated_tokenizer_files) {
    const bool copied = std::any_of(source.tokenizer_files.begin(), source.tokenizer_files.end(),
                                    [&](const std::string& f) { return fs::path(f).filename() == name; });
    if (copied) continue;
    std::ofstream out(fs::path(dir) / name);
    MLA_CHECK(out.good(), dir, "/", name, ": cannot write");
    out << contents;
  }
}

void write_mla_folder(const std::string& dir, const ConvertResult& result, const ModelSource& source) {
  write_model_metadata(dir, result.config_json, source);
  save_state_dict(dir, result.weights);
}

}  // namespace mlaforge
