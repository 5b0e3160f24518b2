// TransMLA conversion of the families that keep their own model around MLA attention (convert/README.md):
// Gemma2 (query_pre_attn_scalar, attention and final logit soft-capping, alternating sliding-window layers,
// sandwich norms, tied embeddings) and Mixtral (sparse MoE, sliding window). Tiny random models built here
// with fixed seeds; every check runs the streaming pipeline (convert_streaming), the path `mlaforge
// convert` takes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <set>

#include "convert/pipeline.h"
#include "convert/transmla.h"
#include "core/error.h"
#include "model/weight_names.h"
#include "tests/support/test_support.h"

namespace mlaforge {
namespace {

constexpr int64_t kVocab = 96;
constexpr int64_t kSeq = 20;  // longer than either window (6, 8): the sliding layers really slide

double max_abs(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat32) - b.to(torch::kFloat32)).abs().max().item<double>();
}

// A tiny random model of `family` with n_kv KV heads (4 query heads).
//   gemma2: head_dim 16 != hidden / heads (8), query_pre_attn_scalar 12 != head_dim, attention cap 4 and final
//           cap 6 (small enough that tanh is far from linear), window 6 on layers 0 and 2, tied embeddings.
//   mixtral: 4 experts, top 2, window 8 on every layer.
ModelSource tiny_family(const std::string& family, int64_t n_kv) {
  nlohmann::json j = {{"model_type", family},       {"vocab_size", kVocab},      {"hidden_size", 32},
                      {"num_hidden_layers", 3},     {"num_attention_heads", 4},  {"num_key_value_heads", n_kv},
                      {"rms_norm_eps", 1e-5},       {"max_position_embeddings", 128}, {"bos_token_id", 1}};
  if (family == "gemma2") {
    j.update({{"intermediate_size", 64}, {"head_dim", 16}, {"query_pre_attn_scalar", 12},
              {"attn_logit_softcapping", 4.0}, {"final_logit_softcapping", 6.0}, {"sliding_window", 6},
              {"hidden_activation", "gelu_pytorch_tanh"}, {"tie_word_embeddings", true}, {"rope_theta", 10000.0}});
  } else {
    j.update({{"intermediate_size", 48}, {"num_local_experts", 4}, {"num_experts_per_tok", 2},
              {"sliding_window", 8}, {"rope_theta", 1e6}, {"tie_word_embeddings", false}});
  }
  ModelSource src;
  src.path = "tiny-" + family;
  src.format = "hf";
  src.config = ModelConfig::from_json(j, src.path);
  Decoder model(src.config);
  torch::manual_seed(family == "gemma2" ? 4321 : 8765);
  torch::NoGradGuard no_grad;
  const bool gemma = family == "gemma2";
  for (auto& p : model->named_parameters()) {
    if (p.key().find("norm") != std::string::npos) {
      // Gemma2 stores norm weights as w - 1.
      p.value().copy_((gemma ? 0 : 1) + 0.1 * torch::randn_like(p.value()));
    } else {
      // Large enough that attention is far from uniform and the routing far from ties; Mixtral's untied
      // head a little smaller so its logits stay O(10) and fp32 rounding well below the 1e-4 tolerances.
      p.value().copy_((gemma ? 0.4 : 0.3) * torch::randn_like(p.value()));
    }
  }
  src.weights = export_weights(*model);
  for (auto& [k, v] : src.weights) v = v.clone();
  return src;
}

std::vector<std::vector<int64_t>> random_docs(int n, int64_t len, int seed) {
  torch::manual_seed(seed);
  std::vector<std::vector<int64_t>> docs;
  for (int i = 0; i < n; ++i) {
    auto t = torch::randint(2, kVocab, {len}, torch::kInt64);
    docs.emplace_back(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + len);
  }
  return docs;
}

torch::Tensor random_tokens(int seed) { return torch::tensor(random_docs(1, kSeq, seed)[0]).unsqueeze(0); }

// The streaming pipeline (sequential calibration, engine self-check on) at rope dim r and latent rank R.
PipelineResult run_pipeline(const ModelSource& src, int64_t r, int64_t R, const std::string& out_dir = "",
                            const std::vector<std::vector<int64_t>>& eval = {}) {
  PipelineOptions po;
  po.convert.rope_dim = r;
  po.convert.kv_lora_rank = R;
  po.keep_weights = true;
  po.progress = false;
  po.verify_engine = true;  // calibration documents (24 tokens) outlast the windows: the reference slides too
  po.out_dir = out_dir;
  return convert_streaming(src.config, WeightReader(src.weights, src.path), random_docs(8, 24, 31), eval, po);
}

Decoder build_converted(const ConvertResult& res) {
  Decoder m(res.config);
  load_weights(*m, res.weights, "converted");
  m->eval();
  return m;
}

std::vector<KeyRotation> all_rope_rotations(const ModelConfig& c, const KVMoments* m) {
  const int64_t L = c.num_key_value_heads * c.head_dim;
  std::vector<KeyRotation> out;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    torch::Tensor S;
    if (m) S = m->joint[static_cast<size_t>(i)].narrow(0, 0, L).narrow(1, 0, L);
    out.push_back(key_rotation(S, c.num_key_value_heads, c.head_dim, L / 2, 1));
  }
  return out;
}

class ConvertFamily : public ::testing::TestWithParam<std::string> {};

// The converted config keeps the family and gains the MLA fields; it parses back to MLA attention with the
// family's features, and the weight table mixes MLA attention names with the family's own.
TEST_P(ConvertFamily, ConfigKeepsFamilyWithMLAAttention) {
  const std::string family = GetParam();
  ModelSource src = tiny_family(family, 2);
  const ModelConfig& c = src.config;
  ConvertOptions o;
  o.rope_dim = 4;
  o.kv_lora_rank = 20;
  nlohmann::json j = mla_config_json(c, o, {}, 100);
  EXPECT_EQ(j["model_type"], family);
  EXPECT_EQ(j["mlaforge_attention"], "mla");
  EXPECT_EQ(j["num_key_value_heads"], 4);
  EXPECT_EQ(j["kv_lora_rank"], 20);
  EXPECT_EQ(j["qk_rope_head_dim"], 4);
  EXPECT_EQ(j["mlaforge_latent_norm"], false);
  EXPECT_FALSE(j.contains("first_k_dense_replace"));
  ModelConfig m = ModelConfig::from_json(j, "converted");
  EXPECT_TRUE(m.is_mla());
  EXPECT_EQ(family_name(m.family), family);
  EXPECT_EQ(m.head_dim, c.head_dim + 4);
  EXPECT_EQ(m.qk_nope_head_dim, c.head_dim);
  EXPECT_EQ(m.v_head_dim, c.head_dim);
  EXPECT_FALSE(m.latent_norm);
  EXPECT_EQ(m.sliding_window, c.sliding_window);
  EXPECT_EQ(m.layer_sliding, c.layer_sliding);
  EXPECT_EQ(m.num_local_experts, c.num_local_experts);
  EXPECT_EQ(m.attn_logit_softcapping, c.attn_logit_softcapping);
  EXPECT_EQ(m.final_logit_softcapping, c.final_logit_softcapping);
  EXPECT_EQ(m.tie_word_embeddings, c.tie_word_embeddings);
  EXPECT_EQ(m.kv_cache_values_per_token_per_layer(), 20 + 4);
  if (family == "gemma2") {
    // The softmax scale is query_pre_attn_scalar^-1/2 before and after: the converter's query scale is 1.
    EXPECT_EQ(j["query_pre_attn_scalar"], 12);
    EXPECT_FLOAT_EQ(m.attention_scale(), c.attention_scale());
    EXPECT_FLOAT_EQ(m.attention_scale(), 1.0f / std::sqrt(12.0f));
  } else {
    EXPECT_FLOAT_EQ(m.attention_scale(), 1.0f / std::sqrt(static_cast<float>(c.head_dim + 4)));
  }

  std::set<std::string> names;
  for (const WeightName& w : expand_weight_names(m)) names.insert(w.hf);
  for (const char* n : {"model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.kv_a_proj_with_mqa.weight",
                        "model.layers.1.self_attn.kv_b_proj.weight", "model.layers.1.self_attn.o_proj.weight",
                        "model.layers.1.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight"})
    EXPECT_TRUE(names.count(n)) << n;
  EXPECT_FALSE(names.count("model.layers.1.self_attn.k_proj.weight"));
  if (family == "gemma2") {
    EXPECT_TRUE(names.count("model.layers.1.pre_feedforward_layernorm.weight"));
    EXPECT_TRUE(names.count("model.layers.1.post_feedforward_layernorm.weight"));
    EXPECT_FALSE(names.count("lm_head.weight"));
  } else {
    EXPECT_TRUE(names.count("model.layers.1.block_sparse_moe.gate.weight"));
    EXPECT_TRUE(names.count("model.layers.1.block_sparse_moe.experts.3.w2.weight"));
  }
  EXPECT_EQ(m.num_parameters(), [&] {
    Decoder d(m);
    int64_t n = 0;
    for (const auto& p : d->parameters()) n += p.numel();
    return n;
  }());
}

// Stage 1 (GQA as one latent head, RoPE on every component) reproduces the original, in the reference
// forward; and end to end through the sequential pipeline: with one KV head and r = d every key component
// keeps RoPE at its own frequency, so the full-rank MLA model (R = 2L - r = d) is the original model.
TEST_P(ConvertFamily, Stage1FullRankReproducesTheOriginal) {
  const std::string family = GetParam();
  auto tokens = random_tokens(41);
  torch::NoGradGuard no_grad;
  {
    ModelSource src = tiny_family(family, 2);
    Decoder model = build_model(src);
    auto ref = model->forward(tokens);
    const double e1 = max_abs(partial_rope_forward(*model, all_rope_rotations(src.config, nullptr), tokens), ref);
    KVMoments m = collect_kv_moments(*model, random_docs(8, 24, 42));
    const double e2 = max_abs(partial_rope_forward(*model, all_rope_rotations(src.config, &m), tokens), ref);
    std::printf("[%s] stage 1 reference %.2e, + RoRoPE (all rope) %.2e\n", family.c_str(), e1, e2);
    EXPECT_LE(e1, 1e-4);
    EXPECT_LE(e2, 1e-4);
  }
  ModelSource src = tiny_family(family, 1);
  const int64_t d = src.config.head_dim;
  Decoder model = build_model(src);
  auto ref = model->forward(tokens);
  PipelineResult run = run_pipeline(src, d, d, "", random_docs(3, kSeq, 43));
  EXPECT_EQ(run.conversion.config.kv_lora_rank, d);
  EXPECT_LE(run.engine_max_diff, 1e-4);
  Decoder mla = build_converted(run.conversion);
  mla->set_mla_path(MLAPath::naive);
  const double e_naive = max_abs(mla->forward(tokens), ref);
  mla->set_mla_path(MLAPath::absorbed);
  const double e_abs = max_abs(mla->forward(tokens), ref);
  std::printf("[%s] pipeline, MQA r=d full rank vs original: naive %.2e absorbed %.2e; eval NLL %.6f -> %.6f\n",
              family.c_str(), e_naive, e_abs, run.before.mean_nll, run.after.mean_nll);
  EXPECT_LE(e_naive, 1e-4);
  EXPECT_LE(e_abs, 1e-4);
  ASSERT_TRUE(run.evaluated);
  EXPECT_NEAR(run.after.mean_nll, run.before.mean_nll, 1e-5);
  std::printf("[%s] max |logit| %.2f\n", family.c_str(), ref.abs().max().item<double>());
  EXPECT_GT(ref.abs().max().item<double>(), 1.0);  // logits far from zero: the comparison means something
}

// With a shared rope key narrower than the keys (r = 4 < d), the full-rank MLA model is the partial-RoPE
// model (not the original), on both attention paths; and the two paths agree with each other.
TEST_P(ConvertFamily, PartialRopeFullRankEqualsMLA) {
  const std::string family = GetParam();
  ModelSource src = tiny_family(family, 2);
  const int64_t L = 2 * src.config.head_dim;
  PipelineResult run = run_pipeline(src, 4, 2 * L - 4);
  Decoder model = build_model(src);
  Decoder mla = build_converted(run.conversion);
  auto tokens = random_tokens(51);
  torch::NoGradGuard no_grad;
  auto partial = partial_rope_forward(*model, run.conversion.rotations, tokens);
  mla->set_mla_path(MLAPath::naive);
  auto naive = mla->forward(tokens);
  mla->set_mla_path(MLAPath::absorbed);
  auto absorbed = mla->forward(tokens);
  const double approx = max_abs(partial, model->forward(tokens));
  std::printf("[%s] r=4 R=%lld: MLA naive vs partial-RoPE %.2e, absorbed %.2e, naive vs absorbed %.2e; "
              "partial-RoPE vs original %.3f\n", family.c_str(), static_cast<long long>(2 * L - 4),
              max_abs(naive, partial), max_abs(absorbed, partial), max_abs(naive, absorbed), approx);
  EXPECT_LE(max_abs(naive, partial), 1e-4);
  EXPECT_LE(max_abs(absorbed, partial), 1e-4);
  EXPECT_LE(max_abs(naive, absorbed), 1e-4);
  EXPECT_GT(approx, 1e-3);  // the partial-RoPE model is a different function: the test can tell them apart
}

// Soft-capping and the sliding windows are live in the converted model (dropping either changes its
// logits), both paths agree, and decoding token by token through the latent KV cache (R + r values per
// token per layer) gives the full forward's logits.
TEST_P(ConvertFamily, NaiveAbsorbedAndLatentCacheDecode) {
  const std::string family = GetParam();
  ModelSource src = tiny_family(family, 2);
  PipelineResult run = run_pipeline(src, 4, 20);  // below full rank: an ordinary MLA model
  const ModelConfig& c = run.conversion.config;
  Decoder mla = build_converted(run.conversion);
  auto tokens = random_tokens(61);
  torch::NoGradGuard no_grad;
  mla->set_mla_path(MLAPath::naive);
  auto full = mla->forward(tokens);
  mla->set_mla_path(MLAPath::absorbed);
  const double e_paths = max_abs(mla->forward(tokens), full);
  EXPECT_LE(e_paths, 1e-4);

  auto variant = [&](const std::function<void(ModelConfig&)>& edit) {
    ConvertResult r = run.conversion;
    edit(r.config);
    return max_abs(build_converted(r)->forward(tokens), full);
  };
  const double no_window = variant([](ModelConfig& m) {
    m.sliding_window.reset();
    m.layer_sliding.assign(m.layer_sliding.size(), false);
  });
  EXPECT_GT(no_window, 1e-3) << "the sliding window changes nothing at T = " << kSeq;
  double no_cap = 0;
  if (family == "gemma2") {
    no_cap = variant([](ModelConfig& m) { m.attn_logit_softcapping.reset(); });
    EXPECT_GT(no_cap, 1e-3) << "attention soft-capping changes nothing";
  }

  for (MLAPath path : {MLAPath::automatic, MLAPath::naive}) {
    mla->set_mla_path(path);
    KVCache cache = mla->make_cache(kSeq);
    std::vector<torch::Tensor> steps;
    for (int64_t t = 0; t < kSeq; ++t) {
      ForwardOptions fo;
      fo.cache = &cache;
      steps.push_back(mla->forward(tokens.narrow(1, t, 1), fo));
    }
    const double e = max_abs(torch::cat(steps, 1), full);
    std::printf("[%s] naive vs absorbed %.2e; decode (%s) vs full %.2e; without window %.3f, without cap %.3f\n",
                family.c_str(), e_paths, mla_path_name(path).c_str(), e, no_window, no_cap);
    EXPECT_LE(e, 1e-4) << mla_path_name(path);
    EXPECT_EQ(cache.allocated_bytes(), c.kv_cache_values_per_token() * kSeq * 4);
    EXPECT_EQ(c.kv_cache_values_per_token(), c.num_hidden_layers * (20 + 4));
  }
}

// The folder the pipeline writes (shards + write_model_metadata) loads back as the same model.
TEST_P(ConvertFamily, WrittenFolderReloads) {
  const std::string family = GetParam();
  ModelSource src = tiny_family(family, 2);
  const std::string dir = testing::make_temp_dir("convert_family_" + family);
  PipelineResult run = run_pipeline(src, 4, 24, dir);
  write_model_metadata(dir, run.conversion.config_json, src);
  LoadOptions load;
  load.load_tokenizer = false;
  ModelSource back = load_model_source(dir, load);
  EXPECT_EQ(back.config.model_type, family);
  EXPECT_TRUE(back.config.is_mla());
  EXPECT_EQ(back.config.kv_lora_rank, 24);
  EXPECT_EQ(back.config.qk_rope_head_dim, 4);
  EXPECT_EQ(back.config.sliding_window, src.config.sliding_window);
  EXPECT_EQ(back.config.num_local_experts, src.config.num_local_experts);
  EXPECT_EQ(back.config.attn_logit_softcapping, src.config.attn_logit_softcapping);
  EXPECT_EQ(back.config.kv_cache_values_per_token_per_layer(), 28);
  Decoder loaded = build_model(back);
  Decoder kept = build_converted(run.conversion);
  auto tokens = random_tokens(71);
  torch::NoGradGuard no_grad;
  EXPECT_LE(max_abs(loaded->forward(tokens), kept->forward(tokens)), 1e-6);
  EXPECT_LE(verify_mla_engine(*loaded, tokens), 1e-4);
}

// --mode deployable (a stock DeepSeek-V3 export) is refused with the reason, at every entry point.
TEST_P(ConvertFamily, DeployableModeRefused) {
  const std::string family = GetParam();
  ModelSource src = tiny_family(family, 2);
  const std::string reason = family == "gemma2" ? "soft-capping" : "router";
  auto expect_refusal = [&](const std::function<void()>& f, const std::string& needle, const char* where) {
    try {
      f();
      ADD_FAILURE() << where << ": deployable mode accepted for " << family;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << where << ": " << e.what();
    }
  };
  expect_refusal([&] { check_deployable(src.config); }, reason, "check_deployable");
  expect_refusal([&] {
    PipelineOptions po;
    po.convert.rope_dim = 4;
    po.deployable = true;
    po.progress = false;
    convert_streaming(src.config, WeightReader(src.weights, src.path), random_docs(2, 12, 81), {}, po);
  }, reason, "convert_streaming");
  ConvertOptions o;
  o.rope_dim = 4;
  nlohmann::json j = mla_config_json(src.config, o, {}, 10);
  expect_refusal([&] { mark_deployable(j, 1.0); }, "--mode exact", "mark_deployable");
  EXPECT_NO_THROW(check_convertible(src.config));
}

INSTANTIATE_TEST_SUITE_P(Families, ConvertFamily, ::testing::Values("gemma2", "mixtral"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

// The marker is validated where configs are parsed.
TEST(ConvertFamilyConfig, MarkerIsValidated) {
  ModelSource src = tiny_family("gemma2", 2);
  ConvertOptions o;
  o.rope_dim = 4;
  o.kv_lora_rank = 20;
  const nlohmann::json good = mla_config_json(src.config, o, {}, 10);
  auto expect_error = [](nlohmann::json j, const std::string& needle) {
    try {
      ModelConfig::from_json(j, "cfg.json");
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos) << e.what();
    }
  };
  nlohmann::json j = good;
  j["mlaforge_attention"] = "latent";
  expect_error(j, "mlaforge_attention");
  j = good;
  j["model_type"] = "llama";
  expect_error(j, "only defined for gemma2 and mixtral");
  j = good;
  j.erase("kv_lora_rank");
  expect_error(j, "kv_lora_rank");
  j = good;
  j["num_key_value_heads"] = 2;
  expect_error(j, "num_key_value_heads == num_attention_heads");
  j = good;
  j.erase("query_pre_attn_scalar");
  expect_error(j, "query_pre_attn_scalar");
  // "gqa" (or no marker) is the family's own attention: the MLA fields are then ignored.
  j = src.config.raw;
  j["mlaforge_attention"] = "gqa";
  EXPECT_FALSE(ModelConfig::from_json(j, "cfg.json").is_mla());
  EXPECT_TRUE(ModelConfig::from_json(good, "cfg.json").is_mla());
}

}  // namespace
}  // namespace mlaforge
