// Training losses (trainer/losses.h): CE and distillation KL against torch (tests/python/refs_optim.py) and
// a closed form, chunked == unchunked (values and gradients, LM head tied or not, Gemma2 soft-capping),
// peak memory of chunked vs unchunked with a large vocabulary, and token-count normalisation across
// micro-batches (vs a mean of means, which must differ).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/tensor_io.h"
#include "tests/torch/trainer_test_util.h"
#include "trainer/losses.h"
#include "trainer/trainable.h"

namespace mlaforge {
namespace {

using testing::rel_diff;

// float32 sums of ~15 per-token terms of O(1..10): torch and we run the same kernels; only the order in
// which row terms are added can differ (chunks). Relative tolerance for values and gradients:
constexpr double kSumRelTol = 1e-6;
constexpr double kGradRelTol = 1e-5;

LogitsHead linear_head(const torch::Tensor& weight) {
  LogitsHead head;
  head.fn = [weight](const torch::Tensor& h) { return torch::matmul(h, weight.t()); };
  head.params = {weight};
  head.vocab = weight.size(0);
  return head;
}

// Against torch: F.cross_entropy(sum) and F.kl_div(log_target) * tau^2 over trained / non-pad tokens, and
// the gradients of alpha * KL / N + (1 - alpha) * CE / N, unchunked, in uneven chunks and automatic.
TEST(Losses, DistillationMatchesTorch) {
  REQUIRE_TEST_DATA("optim/distill/reference.safetensors");
  const StateDict ref = load_safetensors_state(
      SafetensorsCheckpoint::open(testing::test_data_dir() + "/optim/distill/reference.safetensors"));
  const auto& targets = ref.at("targets");
  const auto& teacher = ref.at("teacher");
  const auto& nonpad = ref.at("nonpad");
  const double alpha = ref.at("alpha").item<double>();
  for (const double tau : {1.0, 2.0}) {
    const std::string tag = tau == 1.0 ? "tau1" : "tau2";
    for (const int64_t chunk : {int64_t{0}, int64_t{4}, int64_t{-1}}) {
      SCOPED_TRACE("tau " + std::to_string(tau) + " chunk " + std::to_string(chunk));
      auto hidden = ref.at("hidden").clone().requires_grad_(true);
      auto weight = ref.at("weight").clone().requires_grad_(true);
      const LossOptions opts{.chunk_tokens = chunk, .temperature = tau};
      LossSums s = lm_loss_sums(linear_head(weight), hidden, targets, teacher, {}, opts);
      EXPECT_EQ(s.ce_tokens, (targets != -100).sum().item<int64_t>());
      EXPECT_EQ(s.kl_tokens, s.ce_tokens);
      EXPECT_LE(rel_diff(s.ce_sum, ref.at("ce_sum." + tag)), kSumRelTol);
      EXPECT_LE(rel_diff(s.kl_sum, ref.at("kl_trained." + tag)), kSumRelTol);
      const StepTokens step = count_tokens(targets, /*distill=*/true);
      EXPECT_EQ(step.ce, s.ce_tokens);
      micro_batch_loss(s, step, alpha).backward();
      EXPECT_LE(rel_diff(hidden.grad(), ref.at("grad_hidden." + tag)), kGradRelTol);
      EXPECT_LE(rel_diff(weight.grad(), ref.at("grad_weight." + tag)), kGradRelTol);

      // KL over every non-pad token (prompt included).
      torch::NoGradGuard no_grad;
      LossSums all = lm_loss_sums(linear_head(weight), hidden, targets, teacher, nonpad, opts);
      EXPECT_EQ(all.kl_tokens, nonpad.sum().item<int64_t>());
      EXPECT_GT(all.kl_tokens, s.kl_tokens);
      EXPECT_LE(rel_diff(all.kl_sum, ref.at("kl_nonpad." + tag)), kSumRelTol);
    }
  }
}

// Two classes, teacher p = (1/4, 3/4), student q = (1/2, 1/2) at tau = 1:
// KL(p || q) = 1/4 ln(1/2) + 3/4 ln(3/2). At tau = 2 both logit vectors are halved first.
TEST(Losses, KLMatchesClosedForm) {
  const double ln3 = std::log(3.0);
  auto teacher = torch::tensor({0.0, ln3}, torch::kFloat64).to(torch::kFloat32).view({1, 1, 2});
  auto student = torch::zeros({1, 1, 2});
  auto targets = torch::tensor({{int64_t{1}}});
  const double kl1 = 0.25 * std::log(0.5) + 0.75 * std::log(1.5);
  auto s = loss_sums_from_logits(student, targets, teacher, {}, 1.0);
  EXPECT_NEAR(s.kl_sum.item<double>(), kl1, 1e-7);
  EXPECT_NEAR(s.ce_sum.item<double>(), std::log(2.0), 1e-7);
  // tau = 2: p = softmax(0, ln3 / 2) = (1, sqrt 3) / (1 + sqrt 3); scaled by tau^2 = 4.
  const double r = std::sqrt(3.0), p0 = 1 / (1 + r), p1 = r / (1 + r);
  const double kl2 = 4 * (p0 * std::log(p0 / 0.5) + p1 * std::log(p1 / 0.5));
  EXPECT_NEAR(loss_sums_from_logits(student, targets, teacher, {}, 2.0).kl_sum.item<double>(), kl2, 1e-6);
  // Identical distributions: zero.
  EXPECT_NEAR(loss_sums_from_logits(teacher, targets, teacher, {}, 3.0).kl_sum.item<double>(), 0.0, 1e-7);
}

// The decoder's own head through lm_loss_sums, chunked and not: the same sums and parameter gradients.
void expect_chunked_equals_unchunked(const ModelConfig& config) {
  Decoder model = testing::random_decoder(config, 11);
  select_trainable(*model, "all");
  torch::manual_seed(12);
  auto ids = torch::randint(0, config.vocab_size, {3, 17}, torch::kInt64);
  auto targets = shift_labels(ids);
  targets.index_put_({1, torch::indexing::Slice(0, 9)}, kIgnoreIndex);
  auto teacher = torch::randn({3, 17, config.vocab_size}) * 2;

  auto run = [&](int64_t chunk) {
    model->zero_grad();
    LossSums s = lm_loss_sums(model_head(*model), model->hidden(ids), targets, teacher, {},
                              LossOptions{.chunk_tokens = chunk, .temperature = 1.5});
    micro_batch_loss(s, count_tokens(targets, true), 0.4).backward();
    std::vector<torch::Tensor> grads;
    for (const auto& p : model->parameters()) grads.push_back(p.grad().clone());
    return std::make_tuple(s.ce_sum.item<double>(), s.kl_sum.item<double>(), grads);
  };
  // Unchunked from full logits: the plain reference.
  model->zero_grad();
  LossSums ref = loss_sums_from_logits(model->forward(ids), targets, teacher, {}, 1.5);
  micro_batch_loss(ref, count_tokens(targets, true), 0.4).backward();
  std::vector<torch::Tensor> ref_grads;
  for (const auto& p : model->parameters()) ref_grads.push_back(p.grad().clone());

  for (const int64_t chunk : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{1000}}) {
    auto [ce, kl, grads] = run(chunk);
    EXPECT_NEAR(ce, ref.ce_sum.item<double>(), kSumRelTol * std::abs(ce)) << "chunk " << chunk;
    EXPECT_NEAR(kl, ref.kl_sum.item<double>(), kSumRelTol * std::abs(kl)) << "chunk " << chunk;
    double worst = 0;
    for (size_t i = 0; i < grads.size(); ++i) worst = std::max(worst, rel_diff(grads[i], ref_grads[i]));
    EXPECT_LE(worst, kGradRelTol) << "chunk " << chunk;
    std::printf("[loss] %-7s chunk %4lld: |ce - ref| %.2g, |kl - ref| %.2g, worst gradient rel diff %.2g\n",
                family_name(config.family).c_str(), static_cast<long long>(chunk), std::abs(ce - ref.ce_sum.item<double>()),
                std::abs(kl - ref.kl_sum.item<double>()), worst);
  }
}

TEST(Losses, ChunkedEqualsUnchunkedUntiedHead) { expect_chunked_equals_unchunked(testing::tiny_llama_config()); }
TEST(Losses, ChunkedEqualsUnchunkedTiedHead) {
  expect_chunked_equals_unchunked(testing::tiny_llama_config(2, /*tied=*/true));
}
TEST(Losses, ChunkedEqualsUnchunkedGemma2Softcap) {
  nlohmann::json j = {{"model_type", "gemma2"},  {"vocab_size", 96},   {"hidden_size", 32},
                      {"intermediate_size", 64}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                      {"num_key_value_heads", 2}, {"head_dim", 8},     {"rms_norm_eps", 1e-6},
                      {"query_pre_attn_scalar", 8}, {"final_logit_softcapping", 3.0},
                      {"attn_logit_softcapping", 20.0}, {"sliding_window", 8}, {"hidden_activation", "gelu_pytorch_tanh"},
                      {"tie_word_embeddings", true}};
  expect_chunked_equals_unchunked(ModelConfig::from_json(j, "tiny-gemma2"));
}

// Peak CPU memory of loss + backward with a 32k vocabulary: chunked holds one chunk's logits at a time.
TEST(Losses, ChunkingBoundsPeakMemory) {
  const int64_t N = 1024, D = 64, V = 32768, chunk = 128;
  torch::manual_seed(13);
  auto weight = (torch::randn({V, D}) / 8).requires_grad_(true);
  auto hidden_leaf = torch::randn({1, N, D}).requires_grad_(true);
  auto targets = torch::randint(0, V, {1, N}, torch::kInt64);
  auto measure = [&](int64_t chunk_tokens) {
    weight.mutable_grad().reset();
    hidden_leaf.mutable_grad().reset();
    testing::CpuMemoryScope scope;
    LossSums s = lm_loss_sums(linear_head(weight), hidden_leaf, targets, {}, {}, LossOptions{.chunk_tokens = chunk_tokens});
    micro_batch_loss(s, count_tokens(targets)).backward();
    return std::make_pair(scope.peak_since_start(), s.ce_sum.item<double>());
  };
  const auto [full_peak, full_ce] = measure(0);
  const auto [chunk_peak, chunk_ce] = measure(chunk);
  const double logits_mib = static_cast<double>(N * V * 4) / (1 << 20);
  std::printf("[loss] N %lld, V %lld: peak %.1f MiB unchunked, %.1f MiB in chunks of %lld (one fp32 logits copy: %.0f MiB)\n",
              static_cast<long long>(N), static_cast<long long>(V), full_peak / 1048576.0, chunk_peak / 1048576.0,
              static_cast<long long>(chunk), logits_mib);
  EXPECT_NEAR(chunk_ce, full_ce, 1e-5 * full_ce);
  // Unchunked holds several (N, V) float32 buffers; chunked several (chunk, V) ones plus the weight
  // gradient (V, D) and hidden-sized tensors.
  EXPECT_GT(full_peak, 2 * N * V * 4);
  EXPECT_LT(chunk_peak, full_peak / 4);
}

// Token-count normalisation: two micro-batches with 3 and 11 trained tokens. Backpropagating each one's
// share of the step objective gives the gradient of (sum of all CE) / 14, as one batch would; a mean of
// per-micro-batch means gives another gradient (checked to differ, so this test can fail).
TEST(Losses, MicroBatchesNormaliseByTheStepsTokenCount) {
  Decoder model = testing::random_decoder(testing::tiny_llama_config(), 14);
  select_trainable(*model, "all");
  torch::manual_seed(15);
  auto ids = torch::randint(0, 96, {2, 12}, torch::kInt64);
  auto targets = shift_labels(ids);
  targets.index_put_({0, torch::indexing::Slice(0, 8)}, kIgnoreIndex);  // micro-batch 0: 3 trained tokens
  auto grads = [&] {
    std::vector<torch::Tensor> g;
    for (const auto& p : model->parameters()) g.push_back(p.grad().clone());
    model->zero_grad();
    return g;
  };
  // One batch: CE summed over all trained tokens / their count.
  LossSums whole = lm_loss_sums(model_head(*model), model->hidden(ids), targets, {}, {}, {});
  EXPECT_EQ(whole.ce_tokens, 3 + 11);
  (whole.ce_sum / static_cast<double>(whole.ce_tokens)).backward();
  const auto ref = grads();

  StepTokens step;
  for (int b = 0; b < 2; ++b) step += count_tokens(targets.narrow(0, b, 1));
  EXPECT_EQ(step.ce, 14);
  for (int b = 0; b < 2; ++b) {
    LossSums s = lm_loss_sums(model_head(*model), model->hidden(ids.narrow(0, b, 1)), targets.narrow(0, b, 1), {}, {}, {});
    micro_batch_loss(s, step).backward();
  }
  const auto accumulated = grads();
  for (int b = 0; b < 2; ++b) {
    LossSums s = lm_loss_sums(model_head(*model), model->hidden(ids.narrow(0, b, 1)), targets.narrow(0, b, 1), {}, {}, {});
    (s.ce_sum / static_cast<double>(s.ce_tokens) / 2.0).backward();
  }
  const auto mean_of_means = grads();
  double worst = 0, mom = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    worst = std::max(worst, rel_diff(accumulated[i], ref[i]));
    mom = std::max(mom, rel_diff(mean_of_means[i], ref[i]));
  }
  EXPECT_LE(worst, kGradRelTol);
  EXPECT_GT(mom, 0.05);
  std::printf("[loss] accumulated vs whole batch: %.2g; mean of means vs whole batch: %.2g\n", worst, mom);
}

TEST(Losses, LabelsShiftCountsMeterAndErrors) {
  auto labels = torch::tensor({{5, 6, 7, -100}, {1, 2, -100, -100}}, torch::kInt64);
  EXPECT_TRUE(torch::equal(shift_labels(labels), torch::tensor({{6, 7, -100, -100}, {2, -100, -100, -100}}, torch::kInt64)));

  auto targets = torch::tensor({{1, -100, 2}}, torch::kInt64);
  auto mask = torch::tensor({{true, true, false}});
  EXPECT_EQ(count_tokens(targets).ce, 2);
  EXPECT_EQ(count_tokens(targets).kl, 0);
  EXPECT_EQ(count_tokens(targets, true).kl, 2);
  EXPECT_EQ(count_tokens(targets, true, mask).kl, 2);

  auto logits = torch::zeros({1, 3, 4});  // uniform: CE per token ln 4
  LossMeter meter;
  meter.add(loss_sums_from_logits(logits, targets));
  meter.add(loss_sums_from_logits(logits, torch::tensor({{3, 3, 3}}, torch::kInt64)));
  const auto report = meter.report();
  EXPECT_EQ(report.ce_tokens, 5);
  EXPECT_NEAR(report.ce, std::log(4.0), 1e-6);
  EXPECT_EQ(report.kl, 0.0);

  auto error_of = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of([&] { loss_sums_from_logits(logits, torch::tensor({{1, 9, 2}}, torch::kInt64)); })
                .find("outside the vocabulary [0, 4)"),
            std::string::npos);
  const LossSums plain = loss_sums_from_logits(logits, targets);
  EXPECT_NE(error_of([&] { micro_batch_loss(plain, {2, 0}, 0.5); }).find("needs teacher logits"), std::string::npos);
  EXPECT_NE(error_of([&] { micro_batch_loss(plain, {0, 0}, 0.0); }).find("no trained tokens"), std::string::npos);
  EXPECT_NE(error_of([&] { micro_batch_loss(plain, {2, 0}, 1.5); }).find("alpha"), std::string::npos);
  EXPECT_NE(error_of([&] { loss_sums_from_logits(logits, targets.view({3})); }).find("targets must be"),
            std::string::npos);
  // A micro-batch without trained tokens: zero, but still differentiable.
  auto h = torch::randn({1, 3, 8}).requires_grad_(true);
  auto w = torch::randn({4, 8});
  LossSums none = lm_loss_sums(linear_head(w), h, torch::full({1, 3}, kIgnoreIndex, torch::kInt64), {}, {}, {});
  EXPECT_EQ(none.ce_tokens, 0);
  EXPECT_EQ(none.ce_sum.item<double>(), 0.0);
  micro_batch_loss(none, {5, 0}).backward();
  EXPECT_EQ(h.grad().abs().sum().item<double>(), 0.0);
}

}  // namespace
}  // namespace mlaforge
