// Golden facts about real checkpoints (../shared/assets/README.md), measured independently of mlaforge.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "data/text.h"
#include "data/tokenizer.h"
#include "model/decoder.h"
#include "model/generate.h"
#include "tests/support/test_support.h"
#include "trainer/evaluate.h"

namespace mlaforge {
namespace {

using testing::asset_path;

TEST(GoldenTinyRandomLlama2, LogitsMatchTransformers) {
  REQUIRE_ASSET("models/tiny-random-llama-2/corpus.json");
  ModelSource src = load_model_source(asset_path("models/tiny-random-llama-2"));
  EXPECT_EQ(src.weights.size(), 21u);
  Decoder model = build_model(src);
  std::ifstream in(asset_path("models/tiny-random-llama-2/corpus.json"));
  auto corpus = nlohmann::json::parse(in);
  const double tol = corpus["logit_tolerance"]["absolute"].get<double>();  // 1e-5
  int checked = 0;
  torch::NoGradGuard no_grad;
  for (const auto& c : corpus["model_cases"]) {
    std::vector<int64_t> ids = c["input_ids"].get<std::vector<int64_t>>();
    auto logits = model->forward(torch::tensor(ids).unsqueeze(0)).select(1, -1).squeeze(0);  // (V,)
    for (const auto& [token, expected] : c["sampled_logits"].items()) {
      EXPECT_NEAR(logits[std::stoll(token)].item<double>(), expected.get<double>(), tol)
          << "input " << c["input_ids"] << " token " << token;
      ++checked;
    }
    EXPECT_EQ(logits.argmax().item<int64_t>(), c["greedy_token"].get<int64_t>());
  }
  EXPECT_GE(checked, 30);
}

TEST(GoldenTinyRandomLlama2, GreedyContinuationWithKVCache) {
  REQUIRE_ASSET("models/tiny-random-llama-2/corpus.json");
  ModelSource src = load_model_source(asset_path("models/tiny-random-llama-2"));
  Decoder model = build_model(src);
  std::ifstream in(asset_path("models/tiny-random-llama-2/corpus.json"));
  auto corpus = nlohmann::json::parse(in);
  for (const auto& c : corpus["model_cases"]) {
    auto expected = c["greedy_continuation"].get<std::vector<int64_t>>();
    SamplingOptions o;
    o.max_new_tokens = static_cast<int64_t>(expected.size());
    auto r = generate(*model, c["input_ids"].get<std::vector<int64_t>>(), o);
    EXPECT_EQ(r.tokens, expected) << "input " << c["input_ids"];
  }
}

// stories260K: llama2.c checkpoint with adjacent-pair RoPE, imported into HF layout.
TEST(GoldenStories260K, GreedyStoryFromBos) {
  REQUIRE_ASSET("models/stories260K/stories260K.bin");
  LoadOptions load;
  load.tokenizer_path = asset_path("models/stories260K/tok512.bin");
  ModelSource src = load_model_source(asset_path("models/stories260K/stories260K.bin"), load);
  ASSERT_TRUE(src.tokenizer);
  Decoder model = build_model(src);
  SamplingOptions o;
  o.max_new_tokens = 200;  // llama2.c "200 steps" from BOS: 200 sampled tokens
  auto r = generate(*model, {1}, o);
  std::vector<int32_t> ids(r.tokens.begin(), r.tokens.end());
  std::string text = src.tokenizer->decode(ids);
  if (!text.empty() && text[0] == ' ') text.erase(0, 1);
  EXPECT_EQ(text.rfind("Once upon a time, there was a little girl named Lily. She loved to play outside in the park.", 0), 0u)
      << text;
  const std::string tail = "Lily didn't want to help her mom, so she";
  ASSERT_GE(text.size(), tail.size());
  EXPECT_EQ(text.substr(text.size() - tail.size()), tail) << text;
}

TEST(GoldenStories260K, PerplexityOnTinyStories) {
  REQUIRE_ASSET("models/stories260K/stories260K.bin");
  REQUIRE_ASSET("text/tinystories_val_part1.txt");
  LoadOptions load;
  load.tokenizer_path = asset_path("models/stories260K/tok512.model");
  ModelSource src = load_model_source(asset_path("models/stories260K/stories260K.bin"), load);
  Decoder model = build_model(src);
  auto docs = read_documents(asset_path("text/tinystories_val_part1.txt"));
  docs.resize(20);
  auto tokens = tokenize_documents(*src.tokenizer, src.config, docs, 512);
  EXPECT_EQ((std::vector<int64_t>(tokens[0].begin(), tokens[0].begin() + 12)),
            (std::vector<int64_t>{1, 301, 427, 309, 426, 301, 427, 309, 394, 265, 262, 415}));
  EvalOptions eval;
  eval.progress = false;
  EvalResult r = evaluate_nll(*model, tokens, eval);
  EXPECT_EQ(r.tokens, 2099);
  EXPECT_NEAR(r.mean_nll, 1.3798, 5e-4);
}

}  // namespace
}  // namespace mlaforge
