// The embedded default model (SmolLM2-135M-Instruct, GGUF Q4_1) against transformers' own GGUF loader
// (tests/python/refs_smollm2.py): same dequantised weights, same logits, same perplexity.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "data/text.h"
#include "data/tokenizer.h"
#include "model/decoder.h"
#include "model/tensor_io.h"
#include "tests/support/test_support.h"
#include "trainer/evaluate.h"

namespace mlaforge {
namespace {

nlohmann::json reference() {
  std::ifstream in(testing::test_data_dir() + "/smollm2/reference.json");
  return nlohmann::json::parse(in);
}

TEST(DefaultModel, LogitsMatchTransformersGgufLoader) {
  REQUIRE_TEST_DATA("smollm2/reference.json");
  const auto ref = reference();
  ModelSource src = load_model_source(ref["model"].get<std::string>());
  Decoder model = build_model(src);
  auto state = load_safetensors_state(SafetensorsCheckpoint::open(testing::test_data_dir() + "/smollm2/logits.safetensors"));
  torch::NoGradGuard no_grad;
  auto logits = model->forward(state["input_ids"]).squeeze(0);  // (32, V)
  const double err = (logits - state["logits"]).abs().max().item<double>();
  std::printf("SmolLM2 logits max abs error vs transformers: %.3g\n", err);
  EXPECT_LE(err, 1e-4);  // fp32 (measured: 0, bit-identical)
  EXPECT_TRUE(logits.argmax(-1).equal(state["logits"].argmax(-1)));
}

TEST(DefaultModel, PerplexityMatchesTransformers) {
  REQUIRE_TEST_DATA("smollm2/reference.json");
  REQUIRE_ASSET("text/tinystories_val_part1.txt");
  const auto ref = reference();
  ModelSource src = load_model_source(ref["model"].get<std::string>());
  Decoder model = build_model(src);
  auto docs = read_documents(testing::asset_path("text/tinystories_val_part1.txt"));
  docs.resize(ref["documents"].get<size_t>());
  auto tokens = tokenize_documents(*src.tokenizer, src.config, docs, 256);
  EvalOptions eval;
  eval.progress = false;
  EvalResult r = evaluate_nll(*model, tokens, eval);
  EXPECT_EQ(r.tokens, ref["tokens"].get<int64_t>());
  EXPECT_NEAR(r.mean_nll, ref["mean_nll"].get<double>(), 1e-4);
}

}  // namespace
}  // namespace mlaforge
