// `mlaforge train` as a whole (trainer/train.h): packed batches give the unpacked loss and gradients; a
// recipe run on the real stories260K model trains, evaluates, exports and reports; runs are
// deterministic; self-distillation starts at KL 0; bad layouts are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include "core/error.h"
#include "data/packing.h"
#include "model/checkpoint.h"
#include "model/tensor_io.h"
#include "model/weight_names.h"
#include "tests/support/test_support.h"
#include "tests/torch/trainer_test_util.h"
#include "trainer/losses.h"
#include "trainer/train.h"
#include "trainer/train_data.h"

namespace mlaforge {
namespace {

namespace fs = std::filesystem;
using testing::random_decoder;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ------------------------------------------------------------------------------ packed == unpacked --
std::vector<TokenizedSample> random_samples(int n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<TokenizedSample> out;
  for (int i = 0; i < n; ++i) {
    TokenizedSample s;
    const int len = 3 + static_cast<int>(rng() % 18);
    for (int t = 0; t < len; ++t) {
      s.ids.push_back(static_cast<int32_t>(rng() % vocab));
      // A prompt part (untrained) then an answer part (trained), as chat samples have.
      s.loss_mask.push_back(t >= len / 3 ? 1 : 0);
    }
    s.loss_mask[0] = 0;
    out.push_back(s);
  }
  return out;
}

struct LossAndGrads {
  double ce_sum = 0;
  int64_t tokens = 0;
  std::map<std::string, torch::Tensor> grads;
};

LossAndGrads loss_and_grads(Decoder& model, const PackedBatch& batch) {
  model->zero_grad();
  const BatchTensors b = to_tensors(batch, torch::kCPU);
  const ForwardOptions fo{.positions = b.positions, .segment_ids = b.segments};
  const LossSums sums = lm_loss_sums(model_head(*model), model->hidden(b.input_ids, fo), b.targets);
  sums.ce_sum.backward();
  LossAndGrads out{sums.ce_sum.item<double>(), sums.ce_tokens, {}};
  for (const auto& p : model->named_parameters()) out.grads[p.key()] = p.value().grad().clone();
  return out;
}

// Packing several samples into rows (per-document attention, positions restarting per document) gives
// exactly the loss sum, token count and gradients of running each sample alone in its own padded row:
// float32 reduction-order noise only.
void expect_packed_equals_unpacked(const ModelConfig& config) {
  Decoder model = random_decoder(config, 11);
  const auto samples = random_samples(9, config.vocab_size, 5);
  const int64_t seq_len = 32;
  const auto plan = plan_packing(samples, seq_len);
  ASSERT_LT(plan.size(), samples.size());  // really packed: fewer rows than samples
  const PackedBatch packed = make_packed_batch(samples, plan, seq_len, 0);
  std::vector<int32_t> all(samples.size());
  std::iota(all.begin(), all.end(), 0);
  const PackedBatch padded = make_padded_batch(samples, all, 0, 8);
  const LossAndGrads a = loss_and_grads(model, packed);
  const LossAndGrads b = loss_and_grads(model, padded);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.tokens, packed.trained_tokens);
  EXPECT_NEAR(a.ce_sum, b.ce_sum, 2e-5 * std::abs(b.ce_sum));
  double worst = 0;
  for (const auto& [name, g] : b.grads) {
    const double scale = g.abs().max().item<double>() + 1e-12;
    worst = std::max(worst, (a.grads.at(name) - g).abs().max().item<double>() / scale);
  }
  EXPECT_LT(worst, 1e-4);
  std::printf("[train] %s: %zu samples in %zu packed rows vs %lld padded rows: loss %.6f vs %.6f, grads max rel %.2g\n",
              family_name(config.family).c_str(), samples.size(), plan.size(), static_cast<long long>(padded.rows),
              a.ce_sum, b.ce_sum, worst);
}

TEST(Train, PackedLossEqualsUnpackedLossLlama) { expect_packed_equals_unpacked(testing::tiny_llama_config()); }
TEST(Train, PackedLossEqualsUnpackedLossMla) { expect_packed_equals_unpacked(testing::tiny_mla_config(true)); }

// ----------------------------------------------------------------------------- runs on stories260K --
class TrainRun : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_ASSET("models/stories260K/stories260K.bin");
    REQUIRE_ASSET("text/tinystories_val_part1.txt");
    dir_ = testing::make_temp_dir("train_run");
    // Held-out evaluation text: the first 16 paragraphs; training text: the next 120.
    std::ifstream in(testing::asset_path("text/tinystories_val_part1.txt"));
    std::stringstream ss;
    ss << in.rdbuf();
    std::vector<std::string> docs;
    std::string text = ss.str();
    size_t at = 0;
    while (at < text.size() && docs.size() < 136) {
      const size_t end = text.find("\n\n", at);
      const std::string doc = text.substr(at, end == std::string::npos ? std::string::npos : end - at);
      if (doc.find_first_not_of(" \n") != std::string::npos) docs.push_back(doc);
      if (end == std::string::npos) break;
      at = end + 2;
    }
    auto write = [&](const std::string& name, size_t from, size_t to) {
      std::ofstream out(dir_ + "/" + name);
      for (size_t i = from; i < to; ++i) out << docs[i] << "\n\n";
    };
    write("eval.txt", 0, 16);
    write("train.txt", 16, docs.size());
  }

  // A recipe over the real model; `extra` lines are appended (YAML), overrides applied after.
  Recipe recipe(const std::string& name, const std::vector<std::string>& overrides = {}) const {
    const std::string yaml = "model:\n  path: " + testing::asset_path("models/stories260K/stories260K.bin") +
                             "\n  dtype: fp32\n  trainable: all\n"
                             "data:\n  train: train.txt\n  eval: eval.txt\n  format: text\n  max_seq_len: 128\n"
                             "  num_workers: 1\n"
                             "train:\n  max_steps: 6\n  device: cpu\n  log_every: 100\n  output_dir: " + name + "\n"
                             "optim:\n  lr: 2.0e-3\n"
                             "schedule:\n  warmup: 1\n"
                             "batch:\n  micro_batch_size: 2\n  grad_accumulation: 2\n"
                             "checkpoint:\n  every: 0\n"
                             "log:\n  progress: never\n  png: false\n";
    return parse_recipe_text(yaml, dir_ + "/recipe.yaml", dir_, overrides, name);
  }

  std::string dir_;
};

// Trains, evaluates before and after, exports a loadable model in which exactly the trainable tensors
// changed, and writes the recipe, metrics and report.
TEST_F(TrainRun, TrainsEvaluatesExportsAndReports) {
  const Recipe r = recipe("run", {"model.trainable=*.wq.weight", "train.max_steps=8", "optim.lr=1e-2"});
  const TrainSummary s = run_training(r);
  ASSERT_EQ(s.steps, 8);
  ASSERT_EQ(s.evals.size(), 2u);
  EXPECT_EQ(s.evals[0].step, 0);
  EXPECT_EQ(s.evals[1].step, 8);
  EXPECT_LT(s.evals[1].ce, s.evals[0].ce - 0.01) << "the held-out loss did not improve";
  EXPECT_NEAR(s.evals[0].perplexity, std::exp(s.evals[0].ce), 1e-9 * s.evals[0].perplexity);
  EXPECT_EQ(s.trainable_parameters, 5 * 64 * 64);  // 5 layers' wq (64 x 64)
  for (const StepReport& step : s.steps_log) {
    EXPECT_GT(step.trained_tokens, 0);
    EXPECT_TRUE(std::isfinite(step.loss) && std::isfinite(step.grad_norm));
    EXPECT_NEAR(step.loss, step.ce, 1e-12);  // no teacher, dense model: the objective is the CE
  }
  std::printf("[train] stories260K wq only, 8 steps: eval ce %.4f -> %.4f, step loss %.4f -> %.4f, %.0f tok/s\n",
              s.evals[0].ce, s.evals[1].ce, s.steps_log.front().loss, s.steps_log.back().loss, s.tokens_per_second);

  // The export: loads, config unchanged, only wq tensors differ from the original.
  const ModelSource original = load_model_source(r.model.path);
  const ModelSource exported = load_model_source(s.model_dir);
  ASSERT_TRUE(exported.tokenizer != nullptr) << "the tokenizer was not exported";
  EXPECT_EQ(exported.config.num_hidden_layers, original.config.num_hidden_layers);
  ASSERT_EQ(exported.weights.size(), original.weights.size());
  int changed = 0;
  for (const auto& [name, w] : original.weights) {
    const bool is_wq = name.find("q_proj") != std::string::npos;
    const bool equal = torch::equal(w.to(torch::kFloat32), exported.weights.at(name).to(torch::kFloat32));
    EXPECT_EQ(equal, !is_wq) << name;
    changed += !equal;
  }
  EXPECT_EQ(changed, 5);

  // What the run wrote.
  const fs::path out(r.train.output_dir);
  EXPECT_EQ(parse_recipe_text(read_file((out / "recipe.yaml").string()), "recipe.yaml", dir_), r);
  const auto report = nlohmann::json::parse(read_file((out / "report.json").string()));
  EXPECT_EQ(report.at("steps").get<int64_t>(), 8);
  EXPECT_EQ(report.at("evals").size(), 2u);
  std::ifstream metrics(out / "metrics.jsonl");
  std::string line;
  int train_records = 0, eval_records = 0;
  while (std::getline(metrics, line)) {
    const auto j = nlohmann::json::parse(line);
    const std::string kind = j.at("split");
    if (kind == "train") EXPECT_EQ(j.at("step").get<int64_t>(), ++train_records);
    eval_records += kind == "eval";
  }
  EXPECT_EQ(train_records, 8);
  EXPECT_EQ(eval_records, 2);
}

// Same recipe, same seed: bitwise the same losses and gradient norms; another seed shuffles differently.
TEST_F(TrainRun, RunsAreDeterministic) {
  const std::vector<std::string> o = {"train.max_steps=4", "eval.at_start=false", "eval.at_end=false",
                                      "train.export_at_end=false"};
  auto losses = [&](const std::string& name, const std::vector<std::string>& extra) {
    auto overrides = o;
    overrides.insert(overrides.end(), extra.begin(), extra.end());
    std::vector<std::pair<double, double>> out;
    for (const auto& st : run_training(recipe(name, overrides)).steps_log) out.emplace_back(st.loss, st.grad_norm);
    return out;
  };
  const auto a = losses("a", {});
  const auto b = losses("b", {});
  const auto c = losses("c", {"train.seed=7"});
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

// Distilling from the model itself: the KL term starts at 0 and the CE term is the plain CE.
TEST_F(TrainRun, SelfDistillationStartsAtZeroKl) {
  const std::string model = testing::asset_path("models/stories260K/stories260K.bin");
  const TrainSummary s = run_training(recipe("distill", {"teacher.path=" + model, "teacher.kl_ratio=0.5",
                                                         "train.max_steps=1", "eval.at_end=false",
                                                         "train.export_at_end=false"}));
  ASSERT_TRUE(s.teacher.has_value());
  ASSERT_EQ(s.evals.size(), 1u);
  EXPECT_NEAR(s.evals[0].kl, 0.0, 1e-6);
  EXPECT_NEAR(s.teacher->ce, s.evals[0].ce, 1e-6);
  ASSERT_EQ(s.steps_log.size(), 1u);
  EXPECT_NEAR(s.steps_log[0].kl, 0.0, 1e-6);
  EXPECT_NEAR(s.steps_log[0].loss, 0.5 * s.steps_log[0].ce, 1e-6);
}

// bf16 compute with fp32 masters follows the fp32 run closely over a few steps.
TEST_F(TrainRun, Bf16TracksFp32) {
  const std::vector<std::string> o = {"train.max_steps=3", "eval.at_start=false", "eval.at_end=false",
                                      "train.export_at_end=false"};
  auto with = [&](std::vector<std::string> extra, const std::string& name) {
    extra.insert(extra.end(), o.begin(), o.end());
    return run_training(recipe(name, extra)).steps_log;
  };
  const auto fp32 = with({}, "fp32");
  const auto bf16 = with({"model.dtype=bf16"}, "bf16");
  ASSERT_EQ(fp32.size(), bf16.size());
  for (size_t i = 0; i < fp32.size(); ++i) {
    EXPECT_NEAR(bf16[i].loss, fp32[i].loss, 0.02 * fp32[i].loss) << "step " << i + 1;
    std::printf("[train] step %zu loss fp32 %.5f bf16 %.5f\n", i + 1, fp32[i].loss, bf16[i].loss);
  }
}

// A Mixtral (MoE) model trains with the load-balancing loss in its objective: loss = CE + coef x aux.
TEST_F(TrainRun, MixtralObjectiveIncludesTheRouterLoss) {
  // A tiny random Mixtral over stories260K's vocabulary, so that its SentencePiece tokenizer serves.
  nlohmann::json j = {{"model_type", "mixtral"},      {"vocab_size", 512},          {"hidden_size", 32},
                      {"intermediate_size", 48},      {"num_hidden_layers", 2},     {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},     {"rms_norm_eps", 1e-5},       {"rope_theta", 10000.0},
                      {"max_position_embeddings", 256}, {"num_local_experts", 4},   {"num_experts_per_tok", 2},
                      {"router_aux_loss_coef", 0.02}, {"torch_dtype", "float32"}};
  const ModelConfig config = ModelConfig::from_json(j, "tiny-mixtral");
  const std::string folder = dir_ + "/mixtral";
  fs::create_directories(folder);
  Decoder model = random_decoder(config, 4);
  save_state_dict(folder, export_weights(*model));
  std::ofstream(folder + "/config.json") << j.dump(2);
  fs::copy_file(testing::asset_path("models/stories260K/tok512.model"), folder + "/tokenizer.model");

  const TrainSummary s = run_training(recipe("moe", {"model.path=" + folder, "train.max_steps=3", "eval.at_start=false",
                                                     "train.export_at_end=false", "optim.lr=1e-3"}));
  ASSERT_EQ(s.steps_log.size(), 3u);
  for (const StepReport& st : s.steps_log) {
    EXPECT_GT(st.aux, 0.5) << "step " << st.step;  // transformers' loss is about top_k (2) when balanced
    EXPECT_NEAR(st.loss, st.ce + 0.02 * st.aux, 1e-9 * st.loss) << "step " << st.step;
    EXPECT_TRUE(std::isfinite(st.grad_norm));
  }
  ASSERT_EQ(s.evals.size(), 1u);
  EXPECT_TRUE(std::isfinite(s.evals[0].ce));
  std::printf("[train] tiny mixtral: aux %.4f %.4f %.4f, ce %.4f -> %.4f\n", s.steps_log[0].aux, s.steps_log[1].aux,
              s.steps_log[2].aux, s.steps_log[0].ce, s.steps_log[2].ce);
}

TEST_F(TrainRun, RefusesMoreThanOneProcessAndBadPatterns) {
  try {
    run_training(recipe("tp", {"parallel.tp=2"}));
    ADD_FAILURE() << "tp 2 accepted in one process";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("parallel: tp 2"), std::string::npos) << e.what();
  }
  try {
    run_training(recipe("nd", {"optim.no_decay=[nothing.matches]"}));
    ADD_FAILURE() << "a no_decay pattern matching nothing was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("optim.no_decay: pattern 'nothing.matches'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mlaforge
