// Multi-head Latent Attention: parity with transformers' DeepseekV3ForCausalLM (logits, every parameter's
// gradient), the absorbed path against the naive one (float32 and float64), decoding through the latent
// KV cache, and the size of that cache. References: tests/python/refs_deepseek.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/checkpoint.h"
#include "model/decoder.h"
#include "model/tensor_io.h"
#include "model/weight_names.h"
#include "tests/support/test_support.h"

namespace mlaforge {
namespace {

// float32, ours (SDPA, fused ops) vs transformers' eager attention: the same maths in another order.
// Measured max logits error ~1e-6 (|logits| up to ~5).
constexpr double kLogitsTol = 1e-4;
// Gradients: max |ours - theirs| / max |theirs| per tensor. Measured <= ~1e-6.
constexpr double kGradRelTol = 1e-4;
// Absorbed vs naive: the same function with the matrix products associated differently
// ((W_UK^T q) . c vs q . (W_UK c)), so they differ by rounding only, relative to the largest output.
// Measured ~5e-7 (float32, whole model) and ~1e-16 (float64, one layer).
constexpr double kPathRelTolF32 = 1e-5;
constexpr double kPathRelTolF64 = 1e-12;
// bfloat16 (8 mantissa bits): the absorbed path rounds W_UK^T q and the latent context, the naive one the
// decompressed keys and values, so they differ by a few bf16 ulps (2^-8 ~ 4e-3) of the output.
constexpr double kPathRelTolBF16 = 3e-2;

// Keep in sync with case_table() in tests/python/refs_deepseek.py.
const std::vector<std::string> kCases = {"mla", "mla_qlora_bias", "mla_rotate_half", "mla_yarn"};

struct Case {
  std::string name, dir;
  ModelSource source;
  StateDict ref;
  const torch::Tensor& at(const std::string& key) const {
    auto it = ref.find(key);
    if (it == ref.end()) throw std::runtime_error(name + ": reference has no tensor '" + key + "'");
    return it->second;
  }
};

Case load_case(const std::string& name) {
  Case c;
  c.name = name;
  c.dir = testing::test_data_dir() + "/deepseek/" + name;
  c.source = load_model_source(c.dir, LoadOptions{.tokenizer_path = "", .load_tokenizer = false});
  c.ref = load_safetensors_state(SafetensorsCheckpoint::open(c.dir + "/reference.safetensors"));
  return c;
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}
double rel_diff(const torch::Tensor& got, const torch::Tensor& expected) {
  return max_abs_diff(got, expected) / std::max(expected.abs().max().item<double>(), 1e-300);
}

class MLAParity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { REQUIRE_TEST_DATA("deepseek/" + GetParam() + "/reference.safetensors"); }
};

// Forward logits and the gradient of every parameter through loss = (logits * P).sum(), naive path.
TEST_P(MLAParity, LogitsAndGradientsMatchTransformers) {
  Case c = load_case(GetParam());
  Decoder model = build_model(c.source);
  const auto& ids = c.at("input_ids");
  auto logits = model->forward(ids);
  ASSERT_EQ(logits.sizes(), c.at("logits").sizes());
  const double err = max_abs_diff(logits, c.at("logits"));
  std::printf("[mla] %-16s logits max abs err %.3g (|logits| <= %.2f)\n", c.name.c_str(), err,
              c.at("logits").abs().max().item<double>());
  EXPECT_LE(err, kLogitsTol);

  (logits * c.at("probe")).sum().backward();
  auto params = model->named_parameters(true);
  double worst = -1;
  std::string worst_name;
  size_t compared = 0;
  for (const WeightName& w : expand_weight_names(c.source.config)) {
    const torch::Tensor* p = params.find(w.ours);
    ASSERT_NE(p, nullptr) << w.ours;
    ASSERT_TRUE(p->grad().defined()) << c.name << ": no gradient for " << w.ours;
    const double rel = rel_diff(p->grad(), c.at("grad." + w.hf));
    EXPECT_LE(rel, kGradRelTol) << c.name << ": gradient of " << w.hf;
    if (rel > worst) worst = rel, worst_name = w.hf;
    ++compared;
  }
  size_t ref_grads = 0;
  for (const auto& [k, v] : c.ref) ref_grads += k.rfind("grad.", 0) == 0;
  EXPECT_EQ(compared, ref_grads) << "every reference gradient must be compared";
  EXPECT_EQ(compared, params.size()) << "every model parameter must have a reference gradient";
  std::printf("[mla] %-16s %zu gradients, worst relative err %.3g (%s)\n", c.name.c_str(), compared, worst,
              worst_name.c_str());
}

// The absorbed path (W_UK folded into the query, W_UV into the output, attention over the latent) computes
// the same function as the naive one: whole-model logits and gradients in float32.
TEST_P(MLAParity, AbsorbedPathMatchesNaive) {
  Case c = load_case(GetParam());
  Decoder model = build_model(c.source);
  const auto& ids = c.at("input_ids");

  auto run = [&](MLAPath path) {
    model->zero_grad();
    model->set_mla_path(path);
    auto logits = model->forward(ids);
    (logits * c.at("probe")).sum().backward();
    std::vector<torch::Tensor> grads;
    for (const auto& p : model->parameters()) grads.push_back(p.grad().clone());
    return std::make_pair(logits.detach(), grads);
  };
  auto [naive, naive_grads] = run(MLAPath::naive);
  auto [absorbed, absorbed_grads] = run(MLAPath::absorbed);
  const double err = rel_diff(absorbed, naive);
  EXPECT_LE(err, kPathRelTolF32);
  double grad_err = 0;
  for (size_t i = 0; i < naive_grads.size(); ++i)
    grad_err = std::max(grad_err, rel_diff(absorbed_grads[i], naive_grads[i]));
  EXPECT_LE(grad_err, kGradRelTol);
  // And the absorbed path against transformers directly.
  const double hf_err = max_abs_diff(absorbed, c.at("logits"));
  EXPECT_LE(hf_err, kLogitsTol);
  std::printf("[mla] %-16s absorbed vs naive (float32, whole model): logits %.3g relative, gradients %.3g "
              "relative; absorbed vs transformers %.3g abs\n",
              c.name.c_str(), err, grad_err, hf_err);
}

// The same at the level of one attention layer in float32 and float64, where nothing else rounds: the
// whole-model float64 comparison would be blind, because RMSNorm computes in float32 (as transformers
// does) and rounds the tiny float64 differences away.
TEST_P(MLAParity, AbsorbedPathMatchesNaivePerLayer) {
  Case c = load_case(GetParam());
  const ModelConfig& cfg = c.source.config;
  Decoder model = build_model(c.source);
  torch::NoGradGuard no_grad;
  const int64_t B = 2, T = 24;
  auto positions = torch::arange(T).unsqueeze(0).expand({B, T});
  RotaryEmbedding rope(cfg, cfg.qk_rope_head_dim);
  AttentionContext ctx = build_attention_context(cfg, rope, positions, {}, {}, 0);
  torch::manual_seed(7);
  auto x = torch::randn({B, T, cfg.hidden_size});
  // float32, float64, bfloat16
  const torch::Dtype dtypes[3] = {torch::kFloat32, torch::kFloat64, torch::kBFloat16};
  double err[3] = {0, 0, 0};
  for (int pass = 0; pass < 3; ++pass) {
    model->to(dtypes[pass]);
    x = x.to(dtypes[pass]);
    for (const auto& layer : *model->layers) {
      MLAAttentionImpl& attn = *layer->as<DecoderLayerImpl>()->mla_attn;
      attn.set_path(MLAPath::naive);
      auto naive = attn.forward(x, ctx, nullptr);  // (B, T, D)
      attn.set_path(MLAPath::absorbed);
      auto absorbed = attn.forward(x, ctx, nullptr);
      ASSERT_EQ(absorbed.scalar_type(), x.scalar_type());
      err[pass] = std::max(err[pass], rel_diff(absorbed, naive));
    }
  }
  EXPECT_LE(err[0], kPathRelTolF32);
  EXPECT_LE(err[1], kPathRelTolF64);
  EXPECT_GT(err[1], 0.0) << "the two paths should differ by rounding, not be the same code";
  EXPECT_LE(err[2], kPathRelTolBF16);
  std::printf("[mla] %-16s absorbed vs naive per layer, relative to max |output|: float32 %.3g, float64 %.3g, "
              "bfloat16 %.3g\n",
              c.name.c_str(), err[0], err[1], err[2]);
}

// Packed documents (segment ids) and left padding (key_valid) give explicit masks: both paths must agree
// on them too, including the padding rows, which see only themselves.
TEST_P(MLAParity, AbsorbedPathMatchesNaiveWithMasks) {
  Case c = load_case(GetParam());
  Decoder model = build_model(c.source);
  torch::NoGradGuard no_grad;
  const auto& ids = c.at("input_ids");
  const int64_t B = ids.size(0), T = ids.size(1), split = 10;

  ForwardOptions packed;
  packed.segment_ids = (torch::arange(T) >= split).to(torch::kInt64).unsqueeze(0).expand({B, T});
  packed.positions = torch::cat({torch::arange(split), torch::arange(T - split)}).unsqueeze(0).expand({B, T});
  ForwardOptions padded;
  auto valid = torch::ones({B, T}, torch::kBool);
  valid.index_put_({0, torch::indexing::Slice(0, 6)}, false);
  padded.key_valid = valid;
  padded.positions = (valid.to(torch::kInt64).cumsum(1) - 1).clamp_min(0);

  double worst = 0;
  for (const ForwardOptions* o : {&packed, &padded}) {
    model->set_mla_path(MLAPath::naive);
    auto naive = model->forward(ids, *o);
    model->set_mla_path(MLAPath::absorbed);
    auto absorbed = model->forward(ids, *o);
    ASSERT_TRUE(torch::isfinite(absorbed).all().item<bool>());
    worst = std::max(worst, rel_diff(absorbed, naive));
  }
  // Packing must actually separate the documents: the second one equals itself run alone.
  model->set_mla_path(MLAPath::absorbed);
  auto whole = model->forward(ids, packed);
  auto alone = model->forward(ids.narrow(1, split, T - split));
  const double doc_err = max_abs_diff(whole.narrow(1, split, T - split), alone);
  EXPECT_LE(doc_err, kLogitsTol);
  EXPECT_LE(worst, kPathRelTolF32);
  std::printf("[mla] %-16s masks (packed, left-padded): absorbed vs naive %.3g; packed doc vs alone %.3g\n",
              c.name.c_str(), worst, doc_err);
}

// Prefill, then single tokens and short chunks through the latent cache (absorbed path): every step's logits equal
// transformers' full-sequence logits. The naive path reading the same cache agrees as well. The cache
// holds exactly kv_lora_rank + qk_rope_head_dim values per token per layer.
TEST_P(MLAParity, LatentCacheDecodeMatchesFullForward) {
  Case c = load_case(GetParam());
  Decoder model = build_model(c.source);
  torch::NoGradGuard no_grad;
  const ModelConfig& cfg = c.source.config;
  const auto& ids = c.at("input_ids");
  const auto& full = c.at("logits");
  const int64_t B = ids.size(0), T = ids.size(1), prefill = 10;

  auto decode = [&](MLAPath path, KVCache& cache) {
    model->set_mla_path(path);
    ForwardOptions o;
    o.cache = &cache;
    double err = max_abs_diff(model->forward(ids.narrow(1, 0, prefill), o), full.narrow(1, 0, prefill));
    // Single tokens (no mask needed) alternating with 3-token chunks (causal mask over past + chunk).
    for (int64_t t = prefill, step = 0; t < T; t += step) {
      step = std::min<int64_t>(step == 1 ? 3 : 1, T - t);
      err = std::max(err, max_abs_diff(model->forward(ids.narrow(1, t, step), o), full.narrow(1, t, step)));
    }
    EXPECT_EQ(cache.length(), T);
    return err;
  };
  KVCache cache = model->make_cache(T);
  const double absorbed_err = decode(MLAPath::automatic, cache);  // automatic + cache = absorbed
  KVCache naive_cache = model->make_cache(T);
  const double naive_err = decode(MLAPath::naive, naive_cache);
  EXPECT_LE(absorbed_err, kLogitsTol);
  EXPECT_LE(naive_err, kLogitsTol);

  const int64_t per_token_layer = cfg.kv_lora_rank + cfg.qk_rope_head_dim;
  EXPECT_EQ(cfg.kv_cache_values_per_token_per_layer(), per_token_layer);
  const int64_t expected_bytes = cfg.num_hidden_layers * B * T * per_token_layer * static_cast<int64_t>(sizeof(float));
  EXPECT_EQ(cache.allocated_bytes(), expected_bytes);
  const int64_t gqa_equivalent = 2 * cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim);
  std::printf("[mla] %-16s latent-cache decode (prefill %lld, then %lld tokens in steps of 1 and 3) max abs err: absorbed %.3g, naive "
              "%.3g; cache %lld values/token/layer (%lld bytes fp32; uncompressed K+V would be %lld values)\n",
              c.name.c_str(), static_cast<long long>(prefill), static_cast<long long>(T - prefill), absorbed_err,
              naive_err, static_cast<long long>(per_token_layer),
              static_cast<long long>(cache.allocated_bytes() / (cfg.num_hidden_layers * B * T)),
              static_cast<long long>(gqa_equivalent));
}

// Parameter count from the config equals the model's (covers q_lora and the MLA biases).
TEST_P(MLAParity, ParameterCountMatchesConfig) {
  Case c = load_case(GetParam());
  Decoder model(c.source.config);
  int64_t n = 0;
  for (const auto& p : model->parameters()) n += p.numel();
  EXPECT_EQ(c.source.config.num_parameters(), n);
  EXPECT_EQ(expand_weight_names(c.source.config).size(), model->parameters().size());
}

INSTANTIATE_TEST_SUITE_P(DeepSeek, MLAParity, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

nlohmann::json deepseek_json() {
  return nlohmann::json::parse(R"({
    "model_type": "deepseek_v3", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "kv_lora_rank": 16,
    "q_lora_rank": null, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8, "head_dim": 8,
    "n_routed_experts": 256, "first_k_dense_replace": 2, "moe_intermediate_size": 16, "rope_interleave": true,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}})");
}

TEST(MLAConfig, AllDenseOnlyWhenFirstKDenseCoversEveryLayer) {
  auto j = deepseek_json();
  ModelConfig c = ModelConfig::from_json(j, "cfg");
  EXPECT_TRUE(c.is_mla());
  EXPECT_FALSE(c.is_moe());
  EXPECT_EQ(c.head_dim, 16);  // nope + rope, not the "head_dim" transformers writes (= rope)
  EXPECT_EQ(c.q_lora_rank, 0);
  EXPECT_TRUE(c.rope_interleave);
  // transformers builds a MoE block (shared expert only) even with n_routed_experts 0.
  j["first_k_dense_replace"] = 1;
  j["n_routed_experts"] = 0;
  EXPECT_THROW(ModelConfig::from_json(j, "cfg"), Error);
  // transformers' default first_k_dense_replace is 3 (>= 2 layers here: all dense).
  j.erase("first_k_dense_replace");
  EXPECT_NO_THROW(ModelConfig::from_json(j, "cfg"));
  j["num_hidden_layers"] = 4;
  EXPECT_THROW(ModelConfig::from_json(j, "cfg"), Error);
  // DeepSeek's own modeling code: an explicit null means no routed experts anywhere.
  j["n_routed_experts"] = nullptr;
  EXPECT_NO_THROW(ModelConfig::from_json(j, "cfg"));
}

TEST(MLAConfig, RopeInterleaveAndYarnScale) {
  auto j = deepseek_json();
  j["rope_interleave"] = false;
  EXPECT_FALSE(ModelConfig::from_json(j, "cfg").rope_interleave);
  j["rope_parameters"] = nlohmann::json::parse(R"({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
      "original_max_position_embeddings": 4096, "mscale": 1.0, "mscale_all_dim": 1.0})");
  ModelConfig c = ModelConfig::from_json(j, "cfg");
  const double m = 0.1 * std::log(40.0) + 1.0;  // DeepSeek-V3's own numbers
  EXPECT_NEAR(c.attention_scale(), m * m / std::sqrt(16.0), 1e-6);
}

}  // namespace
}  // namespace mlaforge
