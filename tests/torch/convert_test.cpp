// TransMLA conversion (convert/transmla.h): exactness of each stage, export round trip, RoPE layout check,
// and the stories260K perplexity / KV-size report.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "convert/transmla.h"
#include "core/error.h"
#include "data/text.h"
#include "data/tokenizer.h"
#include "model/tensor_io.h"
#include "tests/support/test_support.h"
#include "trainer/evaluate.h"

namespace mlaforge {
namespace {

using testing::asset_path;

double max_abs(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat32) - b.to(torch::kFloat32)).abs().max().item<double>();
}

// A tiny random GQA llama (4 query heads, 2 KV heads, head_dim 8) with weights large enough that
// attention is far from uniform, so that errors in q.k show in the logits.
ModelSource tiny_llama(int64_t n_kv = 2, const std::string& model_type = "llama") {
  nlohmann::json j = {{"model_type", model_type},      {"vocab_size", 96},          {"hidden_size", 32},
                      {"intermediate_size", 64},    {"num_hidden_layers", 2},    {"num_attention_heads", 4},
                      {"num_key_value_heads", n_kv}, {"rms_norm_eps", 1e-5},     {"rope_theta", 10000.0},
                      {"max_position_embeddings", 128}, {"bos_token_id", 1}};
  ModelSource src;
  src.path = "tiny-llama";
  src.format = "hf";
  src.config = ModelConfig::from_json(j, "tiny-llama");
  Decoder model(src.config);
  torch::manual_seed(1234);
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) {
    if (p.key().find("norm") != std::string::npos) {
      p.value().copy_(1 + 0.1 * torch::randn_like(p.value()));
    } else {
      p.value().copy_(0.4 * torch::randn_like(p.value()));
    }
  }
  src.weights = export_weights(*model);
  for (auto& [k, v] : src.weights) v = v.clone();
  return src;
}

std::vector<std::vector<int64_t>> random_docs(int64_t vocab, int n, int64_t len, int seed) {
  torch::manual_seed(seed);
  std::vector<std::vector<int64_t>> docs;
  for (int i = 0; i < n; ++i) {
    auto t = torch::randint(2, vocab, {len}, torch::kInt64);
    docs.emplace_back(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + len);
  }
  return docs;
}

std::vector<KeyRotation> rotations_for(const ModelConfig& c, const KVMoments* m, int64_t pairs, int64_t fold) {
  const int64_t L = c.num_key_value_heads * c.head_dim;
  std::vector<KeyRotation> out;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    torch::Tensor S;
    if (m) S = m->joint[static_cast<size_t>(i)].narrow(0, 0, L).narrow(1, 0, L);
    out.push_back(key_rotation(S, c.num_key_value_heads, c.head_dim, pairs, fold));
  }
  return out;
}

Decoder build_converted(const ConvertResult& res) {
  Decoder m(res.config);
  load_weights(*m, res.weights, "converted");
  m->eval();
  return m;
}

// (a) stage 1 alone and stage 1 + RoRoPE with RoPE kept on every component reproduce the original;
// (b) at full rank the MLA model reproduces the partial-RoPE model, naive and absorbed.
void check_exactness(const ModelSource& src, const std::vector<std::vector<int64_t>>& calib,
                     const torch::Tensor& tokens, int64_t rope_dim, double tol, const char* what) {
  Decoder model = build_model(src);
  torch::NoGradGuard no_grad;
  const ModelConfig& c = src.config;
  const int64_t L = c.num_key_value_heads * c.head_dim;
  auto ref = model->forward(tokens);
  KVMoments m = collect_kv_moments(*model, calib);

  const double e1 = max_abs(partial_rope_forward(*model, rotations_for(c, nullptr, L / 2, 1), tokens), ref);
  EXPECT_LE(e1, tol) << what << ": stage 1 (GQA as one latent head)";
  const double e2 = max_abs(partial_rope_forward(*model, rotations_for(c, &m, L / 2, 1), tokens), ref);
  EXPECT_LE(e2, tol) << what << ": stage 1 + RoRoPE, RoPE on every component";

  ConvertOptions o;
  o.rope_dim = rope_dim;
  o.kv_lora_rank = 2 * L - rope_dim;
  ConvertResult res = convert_to_mla(c, src.weights, m, o);
  EXPECT_EQ(res.config.kv_lora_rank, 2 * L - rope_dim);
  auto partial = partial_rope_forward(*model, res.rotations, tokens);
  Decoder mla = build_converted(res);
  mla->set_mla_path(MLAPath::naive);
  const double e3 = max_abs(mla->forward(tokens), partial);
  mla->set_mla_path(MLAPath::absorbed);
  const double e4 = max_abs(mla->forward(tokens), partial);
  EXPECT_LE(e3, tol) << what << ": full-rank MLA (naive) vs partial-RoPE";
  EXPECT_LE(e4, tol) << what << ": full-rank MLA (absorbed) vs partial-RoPE";
  // The partial-RoPE model itself is an approximation: it must differ from the original unless r = d*n_kv.
  const double approx = max_abs(partial, ref);
  std::printf("[%s] stage1 %.2e, RoRoPE(all rope) %.2e, MLA full rank naive %.2e absorbed %.2e; "
              "partial-RoPE (r=%lld) vs original %.3f\n",
              what, e1, e2, e3, e4, static_cast<long long>(rope_dim), approx);
}

TEST(ConvertTiny, ExactStagesAndFullRank) {
  ModelSource src = tiny_llama();
  auto calib = random_docs(96, 8, 24, 1);
  auto tokens = torch::tensor(random_docs(96, 1, 20, 2)[0]).unsqueeze(0);
  check_exactness(src, calib, tokens, 4, 1e-4, "tiny llama r=4");
  check_exactness(src, calib, tokens, 8, 1e-4, "tiny llama r=8");
}

TEST(ConvertTiny, MHAIsGroupSizeOne) {
  ModelSource src = tiny_llama(4);
  auto calib = random_docs(96, 8, 24, 3);
  auto tokens = torch::tensor(random_docs(96, 1, 20, 4)[0]).unsqueeze(0);
  check_exactness(src, calib, tokens, 4, 1e-4, "tiny MHA r=4");
}

TEST(ConvertTiny, ExportLoadsBackWithSameLogits) {
  ModelSource src = tiny_llama();
  Decoder model = build_model(src);
  KVMoments m = collect_kv_moments(*model, random_docs(96, 8, 24, 5));
  ConvertOptions o;
  o.rope_dim = 4;
  o.kv_lora_rank = 12;
  ConvertResult res = convert_to_mla(src.config, src.weights, m, o);
  Decoder mla = build_converted(res);
  auto tokens = torch::tensor(random_docs(96, 1, 20, 6)[0]).unsqueeze(0);
  const std::string dir = testing::make_temp_dir("convert_export");
  write_mla_folder(dir, res, src);
  LoadOptions load;
  load.load_tokenizer = false;
  ModelSource back = load_model_source(dir, load);
  EXPECT_EQ(back.config.model_type, "deepseek_v3");
  EXPECT_EQ(back.config.kv_lora_rank, 12);
  EXPECT_EQ(back.config.qk_rope_head_dim, 4);
  EXPECT_FALSE(back.config.latent_norm);
  EXPECT_EQ(back.config.kv_cache_values_per_token_per_layer(), 16);
  Decoder loaded = build_model(back);
  torch::NoGradGuard no_grad;
  EXPECT_LE(max_abs(loaded->forward(tokens), mla->forward(tokens)), 1e-6);
  // The loaded model passes the engine self-check the converter runs.
  EXPECT_LE(verify_mla_engine(*loaded, tokens), 1e-4);
}

TEST(ConvertTiny, DeployableModeKeepsTheFunctionUnderTheStockLatentNorm) {
  ModelSource src = tiny_llama();
  Decoder model = build_model(src);
  auto calib = random_docs(96, 8, 24, 9);
  KVMoments m = collect_kv_moments(*model, calib);
  ConvertOptions o;
  o.rope_dim = 4;
  o.kv_lora_rank = 2 * 16 - 4;
  ConvertResult res = convert_to_mla(src.config, src.weights, m, o);
  auto tokens = torch::tensor(random_docs(96, 1, 20, 10)[0]).unsqueeze(0);
  torch::NoGradGuard no_grad;
  auto partial = partial_rope_forward(*model, res.rotations, tokens);
  make_deployable(*model, calib, res);
  EXPECT_TRUE(res.config.latent_norm);
  EXPECT_TRUE(res.config.attention_bias);
  EXPECT_EQ(res.config.kv_lora_rank, 29);
  const std::string dir = testing::make_temp_dir("convert_deployable");
  write_mla_folder(dir, res, src);
  LoadOptions load;
  load.load_tokenizer = false;
  Decoder loaded = build_model(load_model_source(dir, load));
  loaded->set_mla_path(MLAPath::naive);
  const double e_naive = max_abs(loaded->forward(tokens), partial);
  loaded->set_mla_path(MLAPath::absorbed);
  const double e_abs = max_abs(loaded->forward(tokens), partial);
  std::printf("deployable full rank vs partial-RoPE: naive %.2e, absorbed %.2e\n", e_naive, e_abs);
  EXPECT_LE(e_naive, 1e-3);
  EXPECT_LE(e_abs, 1e-3);
}

// The deployable export runs in stock transformers (DeepseekV3ForCausalLM) with our logits.
TEST(ConvertTiny, DeployableExportRunsInTransformers) {
  const std::string python = MLAFORGE_PYTHON;
  if (python.empty()) GTEST_SKIP() << "no MLAFORGE_PYTHON with transformers configured";
  for (const std::string family : {"llama", "qwen2"}) {
  SCOPED_TRACE(family);
  ModelSource src = tiny_llama(2, family);
  Decoder model = build_model(src);
  auto calib = random_docs(96, 8, 24, 11);
  KVMoments m = collect_kv_moments(*model, calib);
  ConvertOptions o;
  o.rope_dim = 4;
  o.kv_lora_rank = 12;
  ConvertResult res = convert_to_mla(src.config, src.weights, m, o);
  make_deployable(*model, calib, res);
  const std::string dir = testing::make_temp_dir("convert_hf_" + family);
  write_mla_folder(dir, res, src);
  const auto ids = random_docs(96, 1, 20, 12)[0];
  {
    std::ofstream out(dir + "/tokens.json");
    out << nlohmann::json(ids).dump();
  }
  const std::string cmd = python + " " + testing::source_dir() + "/tests/python/run_hf_causal_lm.py " + dir + " " +
                          dir + "/tokens.json " + dir + "/logits.json";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(dir + "/logits.json");
  auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["model_class"], "DeepseekV3ForCausalLM");
  std::vector<float> flat;
  for (const auto& row : j["logits"]) for (const auto& v : row) flat.push_back(v.get<float>());
  auto hf_logits = torch::tensor(flat).view({static_cast<int64_t>(ids.size()), -1});
  Decoder mla = build_converted(res);
  torch::NoGradGuard no_grad;
  auto ours = mla->forward(torch::tensor(ids).unsqueeze(0)).squeeze(0);
  const double err = max_abs(ours, hf_logits);
  std::printf("%s deployable export in transformers vs mlaforge: max |logit diff| %.2e\n", family.c_str(), err);
  EXPECT_LE(err, 1e-4);
  EXPECT_EQ(hf_logits.sizes(), ours.sizes());
  EXPECT_GT(hf_logits.abs().max().item<double>(), 0.1);
  }
}

// Qwen2's q/k/v biases ride along: exact at full rank (exact and deployable modes), and in transformers.
TEST(ConvertTiny, Qwen2BiasesRideAlong) {
  ModelSource src = tiny_llama(2, "qwen2");
  ASSERT_TRUE(src.config.attention_bias);
  auto calib = random_docs(96, 8, 24, 13);
  auto tokens = torch::tensor(random_docs(96, 1, 20, 14)[0]).unsqueeze(0);
  check_exactness(src, calib, tokens, 4, 1e-4, "tiny qwen2 r=4");
  Decoder model = build_model(src);
  KVMoments m = collect_kv_moments(*model, calib);
  ConvertOptions o;
  o.rope_dim = 4;
  o.kv_lora_rank = 28;
  ConvertResult res = convert_to_mla(src.config, src.weights, m, o);
  EXPECT_EQ(res.config.q_lora_rank, 33);
  torch::NoGradGuard no_grad;
  auto partial = partial_rope_forward(*model, res.rotations, tokens);
  make_deployable(*model, calib, res);
  Decoder mla = build_converted(res);
  const double err = max_abs(mla->forward(tokens), partial);
  std::printf("qwen2 deployable full rank vs partial-RoPE: %.2e\n", err);
  EXPECT_LE(err, 1e-3);
  EXPECT_LE(verify_mla_engine(*mla, tokens), 1e-4);
}

// --q-lora-rank: at full query rank (Rq = D) the compressed query is exact; below it, close.
TEST(ConvertTiny, QueryLoraRank) {
  for (const std::string family : {"llama", "qwen2"}) {
    SCOPED_TRACE(family);
    ModelSource src = tiny_llama(2, family);
    Decoder model = build_model(src);
    auto calib = random_docs(96, 8, 24, 15);
    KVMoments m = collect_kv_moments(*model, calib, /*input_moments=*/true);
    auto tokens = torch::tensor(random_docs(96, 1, 20, 16)[0]).unsqueeze(0);
    ConvertOptions o;
    o.rope_dim = 4;
    o.kv_lora_rank = 28;
    ConvertResult plain = convert_to_mla(src.config, src.weights, m, o);
    Decoder ref = build_converted(plain);
    o.q_lora_rank = 32;
    ConvertResult full = convert_to_mla(src.config, src.weights, m, o);
    EXPECT_EQ(full.config.q_lora_rank, 33);
    Decoder q_full = build_converted(full);
    o.q_lora_rank = 16;
    Decoder q_half = build_converted(convert_to_mla(src.config, src.weights, m, o));
    torch::NoGradGuard no_grad;
    auto r = ref->forward(tokens);
    const double e_full = max_abs(q_full->forward(tokens), r), e_half = max_abs(q_half->forward(tokens), r);
    std::printf("%s q_lora_rank 32+1 vs plain q_proj %.2e; 16+1: %.3f\n", family.c_str(), e_full, e_half);
    EXPECT_LE(e_full, 1e-3);
    EXPECT_LE(verify_mla_engine(*q_half, tokens), 1e-4);
  }
}

// The attention-weighted PCA metric (ConvertOptions::pca_metric) keeps the full-rank guarantee, and is the
// balanced metric when both of its metrics are isotropic (o_proj with orthonormal columns, query moments
// a multiple of the identity): then the converted models compute the same function.
TEST(ConvertTiny, AttentionPcaMetric) {
  ModelSource src = tiny_llama();
  Decoder model = build_model(src);
  const ModelConfig& c = src.config;
  const int64_t L = c.num_key_value_heads * c.head_dim;
  auto calib = random_docs(96, 8, 24, 21);
  auto tokens = torch::tensor(random_docs(96, 1, 20, 22)[0]).unsqueeze(0);
  KVMoments m = collect_kv_moments(*model, calib, false, /*query_moments=*/true);
  ASSERT_EQ(m.query.size(), 2u);
  EXPECT_EQ(m.query[0].sizes(), (std::vector<int64_t>{2, 8, 8}));
  torch::NoGradGuard no_grad;
  ConvertOptions o;
  o.rope_dim = 4;
  o.kv_lora_rank = 2 * L - 4;
  o.pca_metric = "attention";
  ConvertResult full = convert_to_mla(c, src.weights, m, o);
  Decoder mla = build_converted(full);
  const double e_full = max_abs(mla->forward(tokens), partial_rope_forward(*model, full.rotations, tokens));
  EXPECT_LE(e_full, 1e-4) << "attention metric, full rank vs partial-RoPE";

  // Isotropic metrics: orthogonal o_proj (D = H d = 32), identity query moments.
  ModelSource iso = src;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    auto& wo = iso.weights["model.layers." + std::to_string(i) + ".self_attn.o_proj.weight"];
    wo = std::get<0>(torch::linalg_qr(torch::randn({32, 32}, torch::kFloat64))).to(wo.dtype()) * 0.7;
    m.query[static_cast<size_t>(i)] = torch::eye(8, torch::kFloat64).expand({2, 8, 8}).clone() * 3.0;
  }
  o.kv_lora_rank = 12;
  o.pca_metric = "balanced";
  Decoder balanced = build_converted(convert_to_mla(c, iso.weights, m, o));
  o.pca_metric = "attention";
  Decoder weighted = build_converted(convert_to_mla(c, iso.weights, m, o));
  const double e_iso = max_abs(weighted->forward(tokens), balanced->forward(tokens));
  std::printf("attention PCA metric: full rank vs partial-RoPE %.2e; isotropic metrics vs balanced %.2e\n", e_full, e_iso);
  EXPECT_LE(e_iso, 1e-4);
  // ... and differs from it when they are not (the real o_proj and query moments).
  o.pca_metric = "balanced";
  Decoder b_real = build_converted(convert_to_mla(c, src.weights, collect_kv_moments(*model, calib, false, true), o));
  o.pca_metric = "attention";
  Decoder w_real = build_converted(convert_to_mla(c, src.weights, collect_kv_moments(*model, calib, false, true), o));
  EXPECT_GT(max_abs(w_real->forward(tokens), b_real->forward(tokens)), 1e-3);
}

// Query-aware RoPE selection (ConvertOptions::rope_select = "query"): the maps are inverse-transposes (scores
// unchanged), RoPE on every component stays exact, isotropic queries give back the key-energy selection, and
// a component with little key energy but large query energy keeps RoPE where key energy alone drops it.
TEST(ConvertTiny, QueryAwareRopeSelection) {
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  // Two KV heads of head_dim 2 (one frequency), one rope pair: head 0 has 4x head 1's key energy, but head 1's
  // queries carry 100x head 0's query energy: score energy 0.4 vs 10.
  auto S = torch::diag(torch::tensor({4.0, 4.0, 1.0, 1.0}, f64));
  auto Qm = torch::stack({torch::eye(2, f64) * 0.1, torch::eye(2, f64) * 10.0});
  KeyRotation by_key = key_rotation(S, 2, 2, 1, 1);
  KeyRotation by_query = key_rotation(S, 2, 2, 1, 1, 1e-8, Qm);
  EXPECT_NEAR(std::abs(by_key.key_map[0][0].item<double>()), 1.0, 1e-9) << "key energy keeps head 0";
  EXPECT_NEAR(by_key.key_map[0][2].item<double>(), 0.0, 1e-9);
  EXPECT_NEAR(by_query.key_map[0][0].item<double>(), 0.0, 1e-9) << "score energy keeps head 1";
  EXPECT_GT(std::abs(by_query.key_map[0][2].item<double>()), 0.1);
  EXPECT_NEAR(by_query.rope_energy / by_query.total_energy, 10.0 / 10.4, 1e-6);

  // A real layer's moments: query_map = key_map^-T; isotropic queries: the key selection (rows up to sign).
  ModelSource src = tiny_llama();
  Decoder model = build_model(src);
  const ModelConfig& c = src.config;
  const int64_t L = c.num_key_value_heads * c.head_dim;
  KVMoments m = collect_kv_moments(*model, random_docs(96, 8, 24, 31), false, true);
  auto K0 = m.joint[0].narrow(0, 0, L).narrow(1, 0, L);
  for (int64_t fold : {1, 2}) {
    KeyRotation q = key_rotation(K0, 2, 8, 2, fold, 1e-8, m.query[0]);
    EXPECT_LE((q.query_map.mm(q.key_map.t()) - torch::eye(L, f64)).abs().max().item<double>(), 1e-8);
    KeyRotation k = key_rotation(K0, 2, 8, 2, fold);
    KeyRotation iso = key_rotation(K0, 2, 8, 2, fold, 1e-8, torch::eye(8, f64).expand({2, 8, 8}) * 5.0);
    auto overlap = (iso.key_map * k.key_map).sum(1).abs();  // |<row, row>| of unit rows: 1 when equal up to sign
    EXPECT_LE((overlap - 1).abs().max().item<double>(), 1e-6) << "freqfold " << fold;
    EXPECT_LE((iso.query_map - iso.key_map).abs().max().item<double>(), 1e-6);
    EXPECT_GT((q.key_map.abs() - k.key_map.abs()).abs().max().item<double>(), 1e-2) << "real queries change the choice";
  }

  // RoPE on every component: exact with the non-orthogonal maps too.
  torch::NoGradGuard no_grad;
  auto tokens = torch::tensor(random_docs(96, 1, 20, 32)[0]).unsqueeze(0);
  std::vector<KeyRotation> all;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    all.push_back(key_rotation(m.joint[static_cast<size_t>(i)].narrow(0, 0, L).narrow(1, 0, L), 2, 8, L / 2, 1, 1e-8,
                               m.query[static_cast<size_t>(i)]));
  EXPECT_LE(max_abs(partial_rope_forward(*model, all, tokens), model->forward(tokens)), 1e-4);

  // Through the converter: the full-rank MLA model is the partial-RoPE model of the query-aware maps.
  ConvertOptions o;
  o.rope_select = "query";
  o.rope_dim = 4;
  o.kv_lora_rank = 2 * L - 4;
  ConvertResult res = convert_to_mla(c, src.weights, m, o);
  Decoder mla = build_converted(res);
  EXPECT_LE(max_abs(mla->forward(tokens), partial_rope_forward(*model, res.rotations, tokens)), 1e-4);
  EXPECT_GT(max_abs(res.rotations[0].query_map, res.rotations[0].key_map), 1e-3) << "not orthogonal";
}

TEST(ConvertTiny, HalfSplitRopeOnInterleavedSliceFailsLoudly) {
  ModelSource src = tiny_llama();
  Decoder model = build_model(src);
  KVMoments m = collect_kv_moments(*model, random_docs(96, 8, 24, 7));
  ConvertOptions o;
  o.rope_dim = 8;
  o.kv_lora_rank = 20;
  ConvertResult res = convert_to_mla(src.config, src.weights, m, o);
  auto tokens = torch::tensor(random_docs(96, 1, 20, 8)[0]).unsqueeze(0);
  Decoder good = build_converted(res);
  EXPECT_NO_THROW(verify_mla_engine(*good, tokens));
  // The same weights read by an engine that applies rotate_half RoPE to the interleaved slice.
  ConvertResult wrong = res;
  wrong.config.rope_interleave = false;
  Decoder bad = build_converted(wrong);
  try {
    verify_mla_engine(*bad, tokens);
    ADD_FAILURE() << "half-split RoPE on the interleaved rope slice went undetected";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("interleaved"), std::string::npos) << e.what();
  }
}

TEST(ConvertTiny, RefusesWhatItCannotConvert) {
  nlohmann::json j = {{"model_type", "mixtral"},   {"vocab_size", 96},       {"hidden_size", 32}, {"num_local_experts", 2},
                      {"intermediate_size", 64}, {"num_hidden_layers", 1}, {"num_attention_heads", 4},
                      {"num_key_value_heads", 2}};
  auto c = ModelConfig::from_json(j, "mixtral");
  EXPECT_NO_THROW(check_convertible(c));  // MoE converts (convert_families_test.cpp); the experts stay as they are
  ModelConfig llama = tiny_llama().config;
  ModelConfig yarn = llama;
  yarn.rope_scaling.type = RopeScaling::Type::yarn;
  EXPECT_THROW(check_convertible(yarn), Error);
  ConvertOptions mla_options;
  mla_options.rope_dim = 4;
  auto mla = ModelConfig::from_json(mla_config_json(llama, mla_options, {}, 1), "converted");
  EXPECT_THROW(check_convertible(mla), Error);  // already MLA
  ConvertOptions o;
  o.rope_dim = 3;
  EXPECT_THROW(resolve_ranks(llama, o), Error);
  o.rope_dim = 4;
  o.freqfold = 3;  // must divide head_dim/2 = 4
  EXPECT_THROW(resolve_ranks(llama, o), Error);
  o.freqfold = 1;  // divides d/r = 2: fine
  EXPECT_EQ(resolve_ranks(llama, o).freqfold, 1);
  o.freqfold = 0;
  o.kv_lora_rank = 1000;
  EXPECT_EQ(resolve_ranks(llama, o).kv_lora_rank, 2 * 16 - 4);
}

struct Stories {
  ModelSource src;
  std::vector<std::vector<int64_t>> calib, eval;
};

Stories load_stories() {
  Stories s;
  LoadOptions load;
  load.tokenizer_path = asset_path("models/stories260K/tok512.model");
  s.src = load_model_source(asset_path("models/stories260K/stories260K.bin"), load);
  auto docs = read_documents(asset_path("text/tinystories_val_part1.txt"));
  std::vector<std::string> calib(docs.begin() + 200, docs.begin() + 328), eval(docs.begin(), docs.begin() + 100);
  s.calib = tokenize_documents(*s.src.tokenizer, s.src.config, calib, 256);
  s.eval = tokenize_documents(*s.src.tokenizer, s.src.config, eval, 512);
  return s;
}

TEST(ConvertStories260K, ExactStagesAndFullRank) {
  REQUIRE_ASSET("models/stories260K/stories260K.bin");
  REQUIRE_ASSET("text/tinystories_val_part1.txt");
  Stories s = load_stories();
  std::vector<std::vector<int64_t>> calib(s.calib.begin(), s.calib.begin() + 32);
  auto tokens = torch::tensor(s.eval[0]).unsqueeze(0);
  check_exactness(s.src, calib, tokens, 4, 1e-4, "stories260K r=4");
  check_exactness(s.src, calib, tokens, 8, 1e-4, "stories260K r=8");
}

TEST(ConvertStories260K, PerplexityAtKVBudgets) {
  REQUIRE_ASSET("models/stories260K/stories260K.bin");
  REQUIRE_ASSET("text/tinystories_val_part1.txt");
  Stories s = load_stories();
  Decoder model = build_model(s.src);
  const ModelConfig& c = s.src.config;
  const int64_t L = c.num_key_value_heads * c.head_dim;
  EvalOptions eo;
  eo.progress = false;
  const double ppl0 = evaluate_nll(*model, s.eval, eo).perplexity;
  const int64_t bytes0 = 2 * L * c.num_hidden_layers * 4;
  std::printf("stories260K original: ppl %.4f, KV %lld values/token (%lld bytes fp32)\n", ppl0,
              static_cast<long long>(2 * L * c.num_hidden_layers), static_cast<long long>(bytes0));
  KVMoments m = collect_kv_moments(*model, s.calib);
  struct Budget { int64_t r, R, F; };
  for (Budget b : {Budget{4, 16, 0}, Budget{4, 16, 1}, Budget{8, 16, 0}, Budget{8, 24, 0}, Budget{4, 2 * L - 4, 0},
                   Budget{4, 2 * L - 4, 1}, Budget{8, 2 * L - 8, 0}}) {
    ConvertOptions o;
    o.rope_dim = b.r;
    o.kv_lora_rank = b.R;
    o.freqfold = b.F;
    ConvertResult res = convert_to_mla(c, s.src.weights, m, o);
    Decoder mla = build_converted(res);
    const double ppl = evaluate_nll(*mla, s.eval, eo).perplexity;
    ConvertResult dep = res;
    make_deployable(*model, s.calib, dep);
    ASSERT_TRUE(dep.config.latent_norm);
    Decoder mla_dep = build_converted(dep);
    const double ppl_dep = evaluate_nll(*mla_dep, s.eval, eo).perplexity;
    // The partial-RoPE model (what MLA reaches at full rank), on the same documents.
    double nll_partial = 0;
    int64_t n_tok = 0;
    {
      torch::NoGradGuard no_grad;
      for (const auto& doc : s.eval) {
        auto t = torch::tensor(doc).unsqueeze(0);
        auto lp = torch::log_softmax(partial_rope_forward(*model, res.rotations, t), -1);
        auto tgt = t.narrow(1, 1, t.size(1) - 1);
        nll_partial -= lp.narrow(1, 0, t.size(1) - 1).gather(-1, tgt.unsqueeze(-1)).sum().item<double>();
        n_tok += tgt.numel();
      }
    }
    const double ppl_partial = std::exp(nll_partial / static_cast<double>(n_tok));
    double rope_e = 0, pca_e = 0;
    for (const auto& l : res.layers) {
      rope_e += l.rope_energy / static_cast<double>(res.layers.size());
      pca_e += l.pca_energy / static_cast<double>(res.layers.size());
    }
    const int64_t values = (b.R + b.r) * c.num_hidden_layers;
    std::printf("  r=%lld R=%lld freqfold=%lld: partial-RoPE ppl %.4f, MLA ppl %.4f, KV %lld values/token (%lld bytes "
                "fp32, %lld bf16), mean RoPE energy %.1f%%, PCA energy %.1f%%; deployable (latent norm + anchor, R+1) ppl %.4f\n",
                static_cast<long long>(b.r), static_cast<long long>(b.R),
                static_cast<long long>(res.config_json["mlaforge_conversion"]["freqfold"].get<int64_t>()), ppl_partial,
                ppl, static_cast<long long>(values), static_cast<long long>(values * 4),
                static_cast<long long>(values * 2), 100 * rope_e, 100 * pca_e, ppl_dep);
    EXPECT_TRUE(std::isfinite(ppl));
    if (b.R < 2 * L - b.r) {
      ConvertResult seq = convert_sequential(*model, s.src.weights, s.calib, o);
      Decoder mla_seq = build_converted(seq);
      std::printf("    sequential calibration: MLA ppl %.4f\n", evaluate_nll(*mla_seq, s.eval, eo).perplexity);
    }
    if (b.R == 2 * L - b.r) {
      EXPECT_NEAR(ppl, ppl_partial, 1e-3 * ppl_partial) << "full rank must reproduce the partial-RoPE model";
    } else {
      EXPECT_GE(ppl, ppl_partial * 0.98);
    }
  }
}

}  // namespace
}  // namespace mlaforge
