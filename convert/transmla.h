#pragma once
// GQA -> MLA conversion after TransMLA (arXiv 2502.07864), in three stages that tests can check one by one:
//
//   1. GQA as one latent head. Each query head's key is the concatenation of all n_kv key heads (width
//      L = n_kv * d), its query being zero outside its own group's block: q_h . k_g(h) = Qfull_h . Kfull.
//      Expressed here as a KeyRotation with an identity (permutation-only) rotation and RoPE on every pair.
//   2. RoRoPE + FreqFold. Per fold of F adjacent RoPE frequencies, the (real, imag) key components of all
//      KV heads at those frequencies are rotated by the eigenvectors of their uncentred second moment; the
//      rotation commutes with RoPE when F == 1 (one frequency), so rotating keys and queries alike leaves
//      q.k unchanged. The top components keep RoPE (the shared rope key, DeepSeek interleaved pairs, pair p
//      at original frequency index p * d / r); the rest lose it. The result is a "partial-RoPE" model,
//      evaluated by partial_rope_forward (our own small reference forward).
//   3. BKV-PCA. The NoPE key part (balanced to the values' norm) and the values are compressed jointly by
//      PCA to kv_lora_rank R; the result is written in DeepSeek-V3 layout (kv_a_proj_with_mqa, kv_b_proj,
//      q_proj with per-head [nope d | rope r] rows scaled by the original softmax scale over the MLA one,
//      sqrt((d + r) / d) for 1/sqrt(head_dim) families). At R = 2L - r it is exact.
//
// Gemma2 and Mixtral keep their family (convert/README.md): only the attention weights change, the
// config gains the MLA fields. Gemma2's softmax scale is query_pre_attn_scalar^-1/2 before and after
// (ModelConfig::attention_scale), so its query scale is 1 and the soft-cap tanh(s / cap) * cap sees
// exactly the original scaled scores s; its sliding layers stay sliding (same window, same layers).
//
// All statistics are fp64; weights are rotated in fp64 and cast once.
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/decoder.h"
#include "model/weight_reader.h"

namespace mlaforge {

// Uncentred second moments of each layer's pre-RoPE keys and values, [k; v] (2L x 2L) fp64, gathered
// from forwards of the original model over calibration documents (each doc one sequence).
struct KVMoments {
  std::vector<torch::Tensor> joint;  // per layer (2L, 2L) float64: sum over tokens of [k;v][k;v]^T
  int64_t tokens = 0;
  std::vector<double> max_input_norm;  // per layer: largest |attn_norm(x)| (anchors for biases)
  // Per layer (D + 1, D + 1) float64 second moment of [attn_norm(x); 1]; only with input_moments (for
  // --q-lora-rank), since it costs D^2 per layer.
  std::vector<torch::Tensor> input_moment;
  std::vector<torch::Tensor> query;  // per layer (n_kv, d, d); only with query_moments (LayerMoments::query)
};
KVMoments collect_kv_moments(DecoderImpl& model, const std::vector<std::vector<int64_t>>& docs,
                             bool input_moments = false, bool query_moments = true);
// Adds the group query moments of one layer's normed input xn (1, T, D) to `acc` (n_kv, d, d).
void add_query_moment(torch::Tensor& acc, GQAAttentionImpl& attention, const ModelConfig& config, const torch::Tensor& xn);

// The change of key coordinates of one layer (stage 1 and 2): k' = key_map k, q' = query_map q with
// query_map = key_map^-T, so q'.k' = q.k. Orthogonal (query_map == key_map) for the key-energy selection;
// for the query-aware one (key_rotation's query_moment) it also whitens the queries.
struct KeyRotation {
  torch::Tensor key_map;        // (L, L) float64; rows [0, 2P): rope pairs (real, imag) interleaved; rest nope
  torch::Tensor query_map;      // (L, L) float64: key_map^-T
  torch::Tensor freq_index;     // (P,) int64: each rope pair's index into the original d/2 frequencies
  int64_t rope_pairs = 0;       // P
  double rope_energy = 0;       // energy on the rope rows: key energy, or score energy (query-aware)
  double total_energy = 0;      // total key (score) energy
};
// key_moment (L, L) float64 or undefined (identity rotation: stage 1). rope_pairs P: L/2 keeps RoPE on every
// component (exact for F == 1); otherwise P = r/2 must divide d/2 and pair p runs at original frequency
// p*c, c = d/r. freqfold F must divide d/2 and divide or be a multiple of c (F < c: only the fold starting
// at frequency p*c feeds pair p; the other frequencies of its group lose RoPE).
// query_moment (n_kv, d, d) float64 (LayerMoments::query) selects the components that keep RoPE by score
// energy instead of key energy (ConvertOptions::rope_select); undefined: by key energy (TransMLA's RoRoPE).
KeyRotation key_rotation(const torch::Tensor& key_moment, int64_t n_kv, int64_t head_dim, int64_t rope_pairs,
                         int64_t freqfold, double damping = 1e-8, const torch::Tensor& query_moment = {});

// Logits of the original model with every layer's attention replaced by its partial-RoPE form under the
// given rotations (scores q.k in rotated coordinates; RoPE only on the rope pairs, at their frequencies).
torch::Tensor partial_rope_forward(DecoderImpl& model, const std::vector<KeyRotation>& rotations,
                                   const torch::Tensor& tokens);

struct ConvertOptions {
  int64_t kv_lora_rank = 512;  // R; capped at 2L - r
  int64_t rope_dim = 64;       // r; d when d < 64
  int64_t freqfold = 0;        // 0: d / r (one frequency fold per rope pair); may divide or be a multiple of d / r
  bool balance_kv = true;      // BKV: scale the NoPE key part to the values' mean column norm
  // Metric of the joint K_nope/V PCA. "balanced": TransMLA's (one scale for the key part). "attention":
  // each error weighted by what it does to the layer: a key error e by the group's query second moment
  // (score error E[(q.e)^2]), a value error by the group's o_proj columns (|W_o e|^2), then balanced the
  // same way. Equal to "balanced" when both metrics are isotropic; at full rank (where a metric changes
  // only the rounding) the balanced form is used, so full rank stays exact. Needs
  // LayerMoments::query. Measured (same KV budget and data): SmolLM2-135M r64+R128 perplexity 26.69 ->
  // 25.66 (original 20.47); stories260K r8+R16 11.64 -> 11.00, r8+R24 8.12 -> 7.78 (original 4.18).
  std::string pca_metric = "attention";
  // Which key components keep RoPE (stage 2). "key": the top eigenvectors of each fold's key second moment
  // (TransMLA's RoRoPE). "query": by score energy. Dropping RoPE from component c changes the scores by
  // about q'_c k'_c, so per fold the key coordinates become k' = V^T A k, q' = V^T A^-1 q, A = C_q^1/2 the
  // square root of the fold's (group-summed) query moment and V the eigenvectors of A C_k A: queries are
  // then isotropic and component c carries score energy E[q'_c^2] E[k'_c^2] = lambda_c, the top ones keep
  // RoPE. Any invertible per-fold map commutes with RoPE (F == 1), so full rank stays exact; isotropic
  // queries give back the key selection (tested). Needs LayerMoments::query. Measured with the refits below
  // (bench/convert_quality): stories260K r 8 + R 16 8.22 -> 7.72, r 8 + R 24 6.37 -> 6.09, r 4 equal or
  // better; on the partial-RoPE model alone (full rank) it is worse (r 8: 5.88 -> 6.09): the product of
  // second moments ignores how q and k correlate, and the refits make up for more of what it keeps.
  std::string rope_select = "query";
  // Output-aware refit of W_UV (convert/output_refit.h) in the streaming pipeline: per head, least squares
  // of the original head outputs on the converted layer's attention-weighted latents over the calibration
  // tokens. Only below full rank (full rank stays the exact partial-RoPE model). In portable mode it also
  // absorbs part of the per-token latent RMS the fitted norm weight cannot undo.
  bool refit_values = true;
  // Then o_proj (all heads jointly) against the original attention output, the same way.
  bool refit_output = true;
  // The o_proj refit's target with sequential calibration: the original model's residual stream after this
  // attention minus the converted model's residual stream before it (so the layer also takes back the drift
  // the converted layers before it left), instead of the original attention's output on the same input.
  // Off by default: it helps stories260K (r 8 + R 16: 7.67 -> 7.50) and hurts SmolLM2-135M (r 64 + R 128:
  // 21.20 -> 22.37), where absorbing the drift through o_proj overshoots what the layers after it expect.
  bool refit_drift = false;
  double damping = 1e-8;       // relative diagonal damping of the eigen-problems
  // Biases (Qwen2 q/k/v, Llama attention_bias) ride along as an extra input column: the k/v biases become
  // the kv_a_proj_with_mqa bias exactly; the query bias needs an input that is constant 1, which DeepSeek's
  // q_proj lacks, so the query goes through q_a_proj (identity plus an anchor row of bias B = anchor_factor *
  // max |input|), q_a_layernorm (undoes the RMS, constant up to |x|^2 / B^2) and q_b_proj.
  double anchor_factor = 1e4;
  // Query compression (0: none): PCA of the converted query activations to rank Rq gives q_a_proj / q_b_proj;
  // q_a_layernorm is undone with the same anchor trick (one extra dimension, so q_lora_rank = Rq + 1).
  // Needs KVMoments::input_moment.
  int64_t q_lora_rank = 0;
};

// Whether the conversion needs the calibration query moments (pca_metric "attention", rope_select "query").
bool needs_query_moments(const ConvertOptions& options);

// One layer's share of KVMoments.
struct LayerMoments {
  torch::Tensor joint;         // (2L, 2L) float64
  torch::Tensor input_moment;  // (D + 1, D + 1) float64, or undefined (no --q-lora-rank)
  torch::Tensor query;         // (n_kv, d, d) float64: per KV group, sum over its query heads of q q^T
                               // (pre-RoPE, bias included); undefined unless pca_metric is "attention" or
                               // rope_select is "query"
  double max_input_norm = 1;
};
LayerMoments layer_moments(const KVMoments& moments, int64_t layer);

struct LayerReport {
  int64_t kv_values_before = 0, kv_values_after = 0;  // per token
  double rope_energy = 0;  // fraction of key energy kept on the RoPE rows
  double pca_energy = 0;   // fraction of (balanced) [K_nope; V] energy kept by the latent
  double kv_balance = 1;   // the NoPE-key scale factor
  // Value refit (ConvertOptions::refit_values): calibration head-output error, relative, before / after;
  // both 0 when not refitted.
  double value_error_before = 0, value_error_after = 0;
  double output_error_before = 0, output_error_after = 0;  // the o_proj refit's, likewise
};

struct ConvertResult {
  ModelConfig config;  // MLA attention (deepseek_v3, or the kept gemma2/mixtral family), exact mode
  nlohmann::json config_json;
  StateDict weights;   // HF names, float32
  std::vector<KeyRotation> rotations;  // the partial-RoPE model the MLA model approximates
  std::vector<LayerReport> layers;
};

// One converted layer: its attention tensors (HF names, float32), rotation and report.
struct LayerConversion {
  StateDict weights;
  KeyRotation rotation;
  LayerReport report;
  torch::Tensor spectrum;  // (L - r + L,) float64: eigenvalues of the balanced [K_nope; V] moment, descending
};

// Resolved (r, R, F) for a config: defaults and caps applied, constraints checked (errors say why).
struct ResolvedRanks {
  int64_t rope_dim, kv_lora_rank, freqfold;
};
ResolvedRanks resolve_ranks(const ModelConfig& config, const ConvertOptions& options);

// Throws mlaforge::Error for what the converter cannot convert: a model that is already MLA, YaRN and
// dynamic rope scaling (their frequencies depend on the rotary dimension).
void check_convertible(const ModelConfig& config);

// Whether the converted model keeps the source's family (gemma2, mixtral: MLA attention inside the family's
// own model, config.json marker "mlaforge_attention": "mla", mlaforge engine only) rather than becoming
// deepseek_v3 (llama, qwen2, mistral).
bool conversion_keeps_family(const ModelConfig& config);
// Throws mlaforge::Error saying why --mode deployable (a stock DeepSeek-V3 export) cannot be exact for this
// source: Gemma2's sandwich norms / soft-capping / sliding layers and Mixtral's softmax top-k router have no
// DeepSeek-V3 counterpart. No-op for the families that become deepseek_v3.
void check_deployable(const ModelConfig& config);

// The converted model's config.json in exact mode: deepseek_v3, or the source's own config with the MLA
// fields for a family-keeping conversion. layer_ranks: a latent rank per layer (--kv-budget; written as
// mlaforge_kv_lora_ranks with kv_lora_rank their maximum), empty for the uniform rank.
nlohmann::json mla_config_json(const ModelConfig& config, const ConvertOptions& options,
                               const std::vector<int64_t>& layer_ranks, int64_t calibration_tokens);

// Converts layer `layer`'s attention (stages 1-3) from its calibration moments. `original` holds at least
// that layer's original attention tensors (HF names); `mla` is the converted config (mla_config_json),
// which gives the layer's latent rank.
LayerConversion convert_layer(const ModelConfig& config, const ModelConfig& mla, const StateDict& original,
                              const LayerMoments& moments, const ConvertOptions& options, int64_t layer);

// The whole conversion from calibration moments. `original` holds HF-named weights of a GQA model.
// only_layer >= 0 converts that layer alone (the others' attention weights are left out).
ConvertResult convert_to_mla(const ModelConfig& config, const StateDict& original, const KVMoments& moments,
                             const ConvertOptions& options, int64_t only_layer = -1);

// Sequential calibration: layer i's moments come from the outputs of layers 0..i-1 already converted to
// MLA (so each layer's PCA sees, and corrects for, the error of the layers before it). `model` is the
// original model; its weights `original`. Returns the conversion; the moments used go to moments_out.
ConvertResult convert_sequential(DecoderImpl& model, const StateDict& original,
                                 const std::vector<std::vector<int64_t>>& docs, const ConvertOptions& options,
                                 KVMoments* moments_out = nullptr);

// --freqfold auto: tries every valid fold (divides d/2, divides or is a multiple of d/r) with a one-pass
// streaming conversion calibrated on the first 3/4 of `docs` and scores the MLA model's NLL on the last
// 1/4 (never on evaluation text). Returns the best fold; `trials` (if set) gets {freqfold, heldout_nll} per candidate.
int64_t search_freqfold(const ModelConfig& config, const WeightReader& weights,
                        const std::vector<std::vector<int64_t>>& docs, const ConvertOptions& options,
                        torch::Device device = torch::kCPU, nlohmann::json* trials = nullptr);

// Deployable mode: stock DeepSeek engines always apply kv_a_layernorm (RMSNorm, eps 1e-6) to the latent,
// which divides each token's latent by its own RMS. This adds one "anchor" latent dimension: a zero row of
// kv_a_proj_with_mqa with a bias B far above any calibration latent norm (B = anchor_factor * max |c|), so
// every token's RMS is B / sqrt(R + 1) to relative order |c|^2 / B^2; the norm weight B / sqrt(R + 1)
// undoes it (0 on the anchor) and kv_b_proj ignores the anchor column. Sets attention_bias (zero o_proj
// bias), kv_lora_rank R + 1, and drops mlaforge_latent_norm. `original` is the unconverted model.
void make_deployable(DecoderImpl& original, const std::vector<std::vector<int64_t>>& docs, ConvertResult& result,
                     double anchor_factor = 1e4);

// The per-layer pieces of make_deployable (the streaming pipeline applies them layer by layer):
// the latent rows of kv_a_proj_with_mqa with its bias as an extra column, (R, D + 1) float64;
torch::Tensor latent_projection(const StateDict& weights, int64_t layer, int64_t rank);
// the largest latent norm over normed attention inputs (..., D);
double max_latent_norm(const torch::Tensor& projection, const torch::Tensor& normed_input);
// the anchor dimension added to one layer's tensors (returns the anchor bias B);
double add_latent_anchor(StateDict& weights, int64_t layer, int64_t rank, int64_t rope_dim, int64_t hidden_size,
                         double max_norm, double anchor_factor);
// and the config changes (kv_lora_rank + 1, attention_bias, latent norm on). Refuses a config that is not
// deepseek_v3 (a family-keeping conversion; see check_deployable).
void mark_deployable(nlohmann::json& config_json, double anchor_max);

// Portable mode (--mode portable): engines that build DeepSeek-V3's projections without biases (vLLM,
// SGLang) drop the anchor of deployable mode silently, so this form has none: kv_a_layernorm is applied
// and its weight is fitted per latent dimension, w_i = sum c_i^2 / rms(c) / sum c_i^2 / rms(c)^2 over the
// calibration latents c (the least-squares w with w_i c_i / rms(c) ~ c_i), so the norm is undone on
// average; what remains is each token's RMS deviation, measured by the evaluation and recovered by
// fine-tuning. Refuses models with attention biases and --q-lora-rank (both need an anchor).
void check_portable(const ModelConfig& config, const ConvertOptions& options);
void mark_portable(nlohmann::json& config_json);
// Accumulates one batch of normed attention inputs (..., D) into the fit's sums (R,) each.
void accumulate_latent_norm_fit(const torch::Tensor& projection, const torch::Tensor& normed_input, double eps,
                                torch::Tensor& sum_c2_over_rms, torch::Tensor& sum_c2_over_rms2);

// Our own reference forward of an MLA model (naive form, interleaved-pair RoPE written out here), used to
// check that the engine applies RoPE to the rope slice in the layout the converter wrote it in.
torch::Tensor mla_reference_forward(DecoderImpl& mla_model, const torch::Tensor& tokens);
// Its attention block alone: normed input xn (B, T, D) -> (B, T, D), positions 0..T-1.
torch::Tensor mla_reference_attention(MLAAttentionImpl& attention, const ModelConfig& mla_config, int64_t layer,
                                      const torch::Tensor& xn);
// Runs both on `tokens` and throws mlaforge::Error naming the layout problem when they disagree by more
// than `tolerance` (max abs logit difference, relative to the logit scale). Returns the difference.
double verify_mla_engine(DecoderImpl& mla_model, const torch::Tensor& tokens, double tolerance = 1e-3);

// Writes config.json and the tokenizer files (copied, or generated from an embedded vocabulary).
void write_model_metadata(const std::string& dir, const nlohmann::json& config_json, const ModelSource& source);
// Writes config.json (+ generation settings from the source), model.safetensors and tokenizer files.
void write_mla_folder(const std::string& dir, const ConvertResult& result, const ModelSource& source);

}  // namespace mlaforge
