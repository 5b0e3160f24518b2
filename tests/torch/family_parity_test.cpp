// Numerical parity with Hugging Face transformers for every supported family: logits, gradients of every
// parameter, the MoE router loss, KV-cache decoding, packed sequences and left-padded batches. The
// references are tiny random models written by tests/python/refs_families.py (see there for each case).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/decoder.h"
#include "model/tensor_io.h"
#include "model/weight_names.h"
#include "tests/support/test_support.h"

namespace mlaforge {
namespace {

// float32: transformers (eager attention) and mlaforge compute the same maths with different kernels
// (SDPA vs matmul + softmax), so they agree to float32 rounding. Measured: max logits error <= 4e-6 on
// logits up to ~4 in every case (gemma2, which takes the same unfused path as transformers, is exact).
constexpr double kLogitsTolF32 = 1e-4;
// Parameter gradients: max |ours - theirs| over a tensor, relative to max |theirs|. Measured <= 1.3e-6.
constexpr double kGradRelTolF32 = 1e-4;
// bfloat16: both sides round every activation to 8 mantissa bits, in different places (SDPA's fused CPU
// kernel keeps q.k and the probabilities in float32 where eager attention rounds them to bf16), so they
// differ by bf16 noise. Yardstick: transformers' own bf16 run differs from a float32 run of the same bf16
// weights by 0.039 in the logits (|logits| <= 3.9) and by up to 2.4% in the gradients. Measured ours vs
// transformers bf16: 0.055 and 2.8%. Tolerances: about 2.5x transformers' own bf16 error.
constexpr double kLogitsTolBF16 = 0.1;
constexpr double kGradRelTolBF16 = 0.06;

// Keep in sync with case_table() in tests/python/refs_families.py. kF32Cases also have the packed and
// left-padded references and are the ones whose decoding is compared at float32 tolerance.
const std::vector<std::string> kF32Cases = {
    "llama",      "llama_mha", "llama_tied",    "llama_linear", "llama_dynamic", "llama_yarn", "llama_llama3",
    "llama_bias", "qwen2",     "qwen2_sliding", "mistral",      "mixtral",       "gemma2",
};
std::vector<std::string> all_cases() {
  std::vector<std::string> cases = kF32Cases;
  cases.push_back("llama_bf16");
  return cases;
}

struct Case {
  std::string name, dir;
  ModelSource source;
  StateDict ref;
  bool bf16 = false;

  const torch::Tensor& at(const std::string& key) const {
    auto it = ref.find(key);
    if (it == ref.end()) throw std::runtime_error(name + ": reference has no tensor '" + key + "'");
    return it->second;
  }
  bool has(const std::string& key) const { return ref.count(key) != 0; }
};

Case load_case(const std::string& name) {
  Case c;
  c.name = name;
  c.dir = testing::test_data_dir() + "/families/" + name;
  c.source = load_model_source(c.dir);
  c.ref = load_safetensors_state(SafetensorsCheckpoint::open(c.dir + "/reference.safetensors"));
  c.bf16 = c.source.config.torch_dtype == "bfloat16";
  return c;
}

Decoder build(const Case& c) { return build_model(c.source, c.bf16 ? torch::kBFloat16 : torch::kFloat32); }

// NaN-propagating (torch's max propagates NaN; std::max would drop it).
double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat32) - b.to(torch::kFloat32)).abs().max().item<double>();
}
double worse(double acc, double e) {
  if (std::isnan(acc)) return acc;
  return std::isnan(e) || e > acc ? e : acc;
}

#define REQUIRE_CASE(name) REQUIRE_TEST_DATA("families/" + std::string(name) + "/reference.safetensors")

class FamilyParity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { REQUIRE_CASE(GetParam()); }
};
// Float32 cases only: decoding, packing and padding are compared at float32 tolerance.
class FamilyParityF32 : public FamilyParity {};

// Forward logits and the gradient of every parameter through loss = (logits * P).sum().
TEST_P(FamilyParity, LogitsAndGradients) {
  Case c = load_case(GetParam());
  Decoder model = build(c);
  const auto& ids = c.at("input_ids");
  auto logits = model->forward(ids);
  ASSERT_EQ(logits.sizes(), c.at("logits").sizes());
  const double err = max_abs_diff(logits, c.at("logits"));
  const double tol = c.bf16 ? kLogitsTolBF16 : kLogitsTolF32;
  std::printf("[parity] %-14s logits max abs err %.3g (|logits| <= %.2f)", c.name.c_str(), err,
              c.at("logits").abs().max().item<double>());
  if (c.has("logits_fp32"))
    std::printf("; transformers bf16 vs its own fp32: %.3g", max_abs_diff(c.at("logits"), c.at("logits_fp32")));
  std::printf("\n");
  EXPECT_LE(err, tol) << c.name;

  auto loss = (logits.to(torch::kFloat32) * c.at("probe")).sum();
  loss.backward();
  auto params = model->named_parameters(true);
  const double grad_tol = c.bf16 ? kGradRelTolBF16 : kGradRelTolF32;
  double worst = -1;
  std::string worst_name;
  int compared = 0;
  for (const WeightName& w : expand_weight_names(c.source.config)) {
    const torch::Tensor* p = params.find(w.ours);
    ASSERT_NE(p, nullptr) << w.ours;
    ASSERT_TRUE(p->grad().defined()) << c.name << ": no gradient for " << w.ours;
    const auto& expected = c.at("grad." + w.hf);
    ASSERT_EQ(p->grad().sizes(), expected.sizes()) << w.hf;
    const double scale = std::max(expected.abs().max().item<double>(), 1e-30);
    const double rel = max_abs_diff(p->grad(), expected) / scale;
    EXPECT_LE(rel, grad_tol) << c.name << ": gradient of " << w.hf << " (max |grad| " << scale << ")";
    if (rel > worst) {
      worst = rel;
      worst_name = w.hf;
    }
    ++compared;
  }
  size_t ref_grads = 0;
  for (const auto& [k, v] : c.ref) ref_grads += k.rfind("grad.", 0) == 0;
  EXPECT_EQ(static_cast<size_t>(compared), ref_grads) << "every reference gradient must be compared";
  std::printf("[parity] %-14s %d gradients, worst relative err %.3g (%s)", c.name.c_str(), compared, worst,
              worst_name.c_str());
  if (c.has("grad_fp32." + worst_name)) {
    const auto& g16 = c.at("grad." + worst_name);
    std::printf("; transformers bf16 vs its own fp32 there: %.3g",
                max_abs_diff(g16, c.at("grad_fp32." + worst_name)) / g16.abs().max().item<double>());
  }
  std::printf("\n");
}

// Mixtral's router load-balancing loss (transformers' load_balancing_loss_func over all layers) and its
// gradient with respect to each router.
TEST(FamilyParityMoE, RouterAuxLoss) {
  REQUIRE_CASE("mixtral");
  Case c = load_case("mixtral");
  ASSERT_TRUE(c.has("aux_loss"));
  Decoder model = build(c);
  model->forward(c.at("input_ids"));
  auto aux = model->aux_loss();
  const double err = std::abs(aux.item<double>() - c.at("aux_loss").item<double>());
  std::printf("[parity] %-14s aux loss %.6f vs %.6f, abs err %.3g\n", c.name.c_str(), aux.item<double>(),
              c.at("aux_loss").item<double>(), err);
  EXPECT_LE(err, 1e-5);
  aux.backward();
  auto params = model->named_parameters(true);
  double worst = 0;
  int compared = 0;
  for (const WeightName& w : expand_weight_names(c.source.config)) {
    if (!c.has("aux_grad." + w.hf)) continue;
    const torch::Tensor* p = params.find(w.ours);
    ASSERT_NE(p, nullptr);
    ASSERT_TRUE(p->grad().defined()) << w.ours;
    const auto& expected = c.at("aux_grad." + w.hf);
    const double rel = max_abs_diff(p->grad(), expected) / std::max(expected.abs().max().item<double>(), 1e-30);
    EXPECT_LE(rel, kGradRelTolF32) << w.hf;
    worst = std::max(worst, rel);
    ++compared;
  }
  EXPECT_EQ(compared, c.source.config.num_hidden_layers);
  std::printf("[parity] %-14s aux-loss router gradients, worst relative err %.3g\n", c.name.c_str(), worst);
}

// Prefill 10 tokens, then feed one token at a time through the KV cache: every step's logits must equal
// transformers' full-sequence logits at that position.
TEST_P(FamilyParityF32, KVCacheDecodeMatchesFullForward) {
  Case c = load_case(GetParam());
  if (c.source.config.rope_scaling.type == RopeScaling::Type::dynamic)
    GTEST_SKIP() << "dynamic NTK re-bases RoPE when the length grows, so keys cached before that point were "
                    "rotated with other frequencies (transformers behaves the same): not comparable";
  Decoder model = build(c);
  torch::NoGradGuard no_grad;
  const auto& ids = c.at("input_ids");
  const auto& full = c.at("logits");
  const int64_t T = ids.size(1), prefill = 10;
  KVCache cache = model->make_cache(T);
  ForwardOptions o;
  o.cache = &cache;
  auto first = model->forward(ids.narrow(1, 0, prefill), o);
  double err = max_abs_diff(first, full.narrow(1, 0, prefill));
  for (int64_t t = prefill; t < T; ++t) {
    auto step = model->forward(ids.narrow(1, t, 1), o);
    err = worse(err, max_abs_diff(step, full.narrow(1, t, 1)));
  }
  EXPECT_EQ(cache.length(), T);
  std::printf("[parity] %-14s KV-cache decode (prefill %lld + %lld steps) max abs err %.3g\n", c.name.c_str(),
              static_cast<long long>(prefill), static_cast<long long>(T - prefill), err);
  EXPECT_LE(err, kLogitsTolF32);
}

// Two documents packed in one row (segment ids + positions restarting at 0) equal each document alone.
TEST_P(FamilyParityF32, PackedSequencesMatchSeparateDocuments) {
  Case c = load_case(GetParam());
  Decoder model = build(c);
  torch::NoGradGuard no_grad;
  ForwardOptions o;
  o.positions = c.at("packed.position_ids");
  o.segment_ids = c.at("packed.segment_ids");
  auto logits = model->forward(c.at("packed.input_ids"), o);
  const auto& doc0 = c.at("packed.doc0_logits");
  const auto& doc1 = c.at("packed.doc1_logits");
  const int64_t n0 = doc0.size(1), n1 = doc1.size(1);
  ASSERT_EQ(logits.size(1), n0 + n1);
  const double err = worse(max_abs_diff(logits.narrow(1, 0, n0), doc0), max_abs_diff(logits.narrow(1, n0, n1), doc1));
  std::printf("[parity] %-14s packed (%lld + %lld tokens) vs separate documents: max abs err %.3g\n",
              c.name.c_str(), static_cast<long long>(n0), static_cast<long long>(n1), err);
  EXPECT_LE(err, kLogitsTolF32);
}

// A left-padded batch (key_valid marks the padding, positions count real tokens only), in one forward and
// through the KV cache: the real positions match transformers with the same attention_mask.
TEST_P(FamilyParityF32, LeftPaddedBatchMatchesTransformers) {
  Case c = load_case(GetParam());
  Decoder model = build(c);
  torch::NoGradGuard no_grad;
  const auto& ids = c.at("padded.input_ids");
  const auto valid = c.at("padded.attention_mask").to(torch::kBool);
  const auto& positions = c.at("padded.position_ids");
  const auto& expected = c.at("padded.logits");
  const int64_t T = ids.size(1);
  // Max |difference| over the real (unpadded) query positions only.
  auto masked_err = [&](const torch::Tensor& got, int64_t begin, int64_t len) {
    auto diff = (got - expected.narrow(1, begin, len)).abs().amax(-1);  // (B, len)
    auto real = valid.narrow(1, begin, len);
    EXPECT_TRUE(torch::isfinite(got.index({real})).all().item<bool>()) << c.name << ": non-finite logits";
    return diff.masked_fill(real.logical_not(), 0).max().item<double>();
  };

  ForwardOptions full;
  full.positions = positions;
  full.key_valid = valid;
  const double err = masked_err(model->forward(ids, full), 0, T);
  EXPECT_LE(err, kLogitsTolF32);

  // Dynamic NTK: see KVCacheDecodeMatchesFullForward.
  const bool decode = c.source.config.rope_scaling.type != RopeScaling::Type::dynamic;
  double decode_err = 0;
  if (decode) {
    KVCache cache = model->make_cache(T);
    const int64_t prefill = 10;
    for (int64_t begin = 0; begin < T;) {
      const int64_t len = begin == 0 ? prefill : 1;
      ForwardOptions o;
      o.cache = &cache;
      o.positions = positions.narrow(1, begin, len);
      o.key_valid = valid.narrow(1, 0, begin + len);
      decode_err = worse(decode_err, masked_err(model->forward(ids.narrow(1, begin, len), o), begin, len));
      begin += len;
    }
    EXPECT_LE(decode_err, kLogitsTolF32);
  }
  char decode_text[64] = "skipped (dynamic NTK)";
  if (decode) std::snprintf(decode_text, sizeof decode_text, "%.3g", decode_err);
  std::printf("[parity] %-14s left-padded batch: forward max abs err %.3g, KV-cache decode %s\n", c.name.c_str(),
              err, decode_text);
}

auto case_name = [](const ::testing::TestParamInfo<std::string>& info) { return info.param; };
INSTANTIATE_TEST_SUITE_P(Families, FamilyParity, ::testing::ValuesIn(all_cases()), case_name);
INSTANTIATE_TEST_SUITE_P(Families, FamilyParityF32, ::testing::ValuesIn(kF32Cases), case_name);

}  // namespace
}  // namespace mlaforge
