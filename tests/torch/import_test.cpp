// GGUF and llama2.c importers: every tensor against references written by tests/python/refs_gguf.py, the
// config built from the metadata, the Q/K permutation (checked through RoPE-invariant attention scores),
// and end-to-end generation with the real stories260K checkpoint.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <fstream>

#include "core/error.h"
#include "core/mmap_file.h"
#include "data/tokenizer.h"
#include "model/checkpoint.h"
#include "model/decoder.h"
#include "model/generate.h"
#include "model/import_common.h"
#include "model/llama2c.h"
#include "model/safetensors.h"
#include "model/tensor_io.h"
#include "tests/support/test_support.h"

namespace mlaforge {
namespace {

std::string data_path(const std::string& rel) { return testing::test_data_dir() + "/" + rel; }

StateDict load_ref(const std::string& rel) {
  return load_safetensors_state(SafetensorsCheckpoint::open(data_path(rel)));
}

template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_same_names(const StateDict& got, const StateDict& want) {
  std::vector<std::string> a, b;
  for (const auto& [k, v] : got) a.push_back(k);
  for (const auto& [k, v] : want) b.push_back(k);
  EXPECT_EQ(a, b);
}

// Bit-exact comparison of every tensor.
void expect_equal_state(const StateDict& got, const StateDict& want) {
  expect_same_names(got, want);
  for (const auto& [name, w] : want) {
    auto it = got.find(name);
    if (it == got.end()) continue;
    const torch::Tensor& g = it->second;
    EXPECT_EQ(g.scalar_type(), torch::kFloat32) << name;
    ASSERT_EQ(g.sizes(), w.sizes()) << name;
    EXPECT_TRUE(torch::equal(g, w.to(torch::kFloat32)))
        << name << ": max |diff| " << (g - w).abs().max().item<double>();
  }
}

// ---- RoPE in both layouts, written out here independently of model/rope.cpp ------------------------

// x (n_heads * d) in interleaved layout: pairs (x[2i], x[2i+1]) rotated by pos * theta^(-2i/d).
torch::Tensor rope_adjacent(const torch::Tensor& x, int64_t d, int64_t pos, double theta) {
  torch::Tensor y = x.clone();
  auto xa = x.accessor<double, 1>();
  auto ya = y.accessor<double, 1>();
  for (int64_t h = 0; h < x.size(0) / d; ++h)
    for (int64_t i = 0; i < d / 2; ++i) {
      const double angle = pos * std::pow(theta, -2.0 * i / d);
      const double a = xa[h * d + 2 * i], b = xa[h * d + 2 * i + 1];
      ya[h * d + 2 * i] = a * std::cos(angle) - b * std::sin(angle);
      ya[h * d + 2 * i + 1] = a * std::sin(angle) + b * std::cos(angle);
    }
  return y;
}

// Hugging Face rotate_half layout: element i pairs with i + d/2.
torch::Tensor rope_rotate_half(const torch::Tensor& x, int64_t d, int64_t pos, double theta) {
  torch::Tensor y = x.clone();
  auto xa = x.accessor<double, 1>();
  auto ya = y.accessor<double, 1>();
  for (int64_t h = 0; h < x.size(0) / d; ++h)
    for (int64_t i = 0; i < d / 2; ++i) {
      const double angle = pos * std::pow(theta, -2.0 * i / d);
      const double a = xa[h * d + i], b = xa[h * d + i + d / 2];
      ya[h * d + i] = a * std::cos(angle) - b * std::sin(angle);
      ya[h * d + i + d / 2] = a * std::sin(angle) + b * std::cos(angle);
    }
  return y;
}

// Attention scores q_h . k_{h / group} for every query head.
std::vector<double> scores(const torch::Tensor& q, const torch::Tensor& k, int64_t heads, int64_t kv_heads,
                           int64_t d) {
  std::vector<double> out;
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t g = h / (heads / kv_heads);
    out.push_back(torch::dot(q.slice(0, h * d, (h + 1) * d), k.slice(0, g * d, (g + 1) * d)).item<double>());
  }
  return out;
}

}  // namespace

// ---- GGUF ------------------------------------------------------------------------------------------

TEST(ImportGguf, TinyLlamaF32IsExactAndConfigured) {
  REQUIRE_TEST_DATA("gguf/tiny_llama_f32.gguf");
  ModelSource src = load_model_source(data_path("gguf/tiny_llama_f32.gguf"));
  EXPECT_EQ(src.format, "gguf");
  const ModelConfig& c = src.config;
  EXPECT_EQ(c.family, Family::llama);
  EXPECT_EQ(c.vocab_size, 320);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.max_position_embeddings, 256);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);  // float32 metadata read back as the decimal it came from
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::none);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(src.chat_template, "{% for m in messages %}{{ m['content'] }}{% endfor %}");
  expect_equal_state(src.weights, load_ref("gguf/tiny_llama_f32_ref.safetensors"));

  // The embedded SentencePiece-style vocabulary.
  ASSERT_NE(src.tokenizer, nullptr);
  EXPECT_EQ(src.tokenizer->vocab_size(), 320);
  EXPECT_EQ(src.tokenizer->bos_id, 1);
  EXPECT_EQ(src.tokenizer->eos_id, 2);
  EXPECT_EQ(src.tokenizer->encode("a"), std::vector<int32_t>{260});            // "▁a"
  EXPECT_EQ(src.tokenizer->encode("a", true), (std::vector<int32_t>{1, 260}));  // add_bos_token
  EXPECT_EQ(src.tokenizer->decode(src.tokenizer->encode("the cat\n")), "the cat\n");
}

TEST(ImportGguf, TinyLlamaF16WithLinearRopeScaling) {
  REQUIRE_TEST_DATA("gguf/tiny_llama_f16.gguf");
  LoadOptions options;
  options.load_tokenizer = false;
  ModelSource src = import_gguf(data_path("gguf/tiny_llama_f16.gguf"), options);
  EXPECT_EQ(src.tokenizer, nullptr);
  EXPECT_EQ(src.config.rope_scaling.type, RopeScaling::Type::linear);
  EXPECT_EQ(src.config.rope_scaling.factor, 2.0);
  expect_equal_state(src.weights, load_ref("gguf/tiny_llama_f16_ref.safetensors"));
}

TEST(ImportGguf, TinyLlamaQuantisedTiedWithLlama3Scaling) {
  REQUIRE_TEST_DATA("gguf/tiny_llama_quant.gguf");
  LoadOptions options;
  options.load_tokenizer = false;
  ModelSource src = import_gguf(data_path("gguf/tiny_llama_quant.gguf"), options);
  const ModelConfig& c = src.config;
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(src.weights.count("lm_head.weight"), 0u);
  // rope_freqs.weight recognised as Llama-3.1 scaling.
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::llama3);
  EXPECT_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  // Bit-exact against the gguf package's dequantisation (un-permuted in numpy) ...
  expect_equal_state(src.weights, load_ref("gguf/tiny_llama_quant_ref.safetensors"));
  // ... and within quantisation error of the original HF weights (Q8_0 / Q4_0 / Q4_1 / BF16 mixed).
  const StateDict orig = load_ref("gguf/tiny_llama_orig.safetensors");
  for (const auto& [name, w] : orig) {
    const double err = (src.weights.at(name) - w).abs().max().item<double>();
    const double range = w.abs().max().item<double>();
    EXPECT_LT(err, range / 7.0) << name;  // 4-bit: at most half a step of (max - min) / 15
    if (w.dim() == 2) EXPECT_GT(err, 0.0) << name << " was expected to be quantised";
    if (name.find("layernorm") != std::string::npos) EXPECT_EQ(err, 0.0) << name;
  }
}

TEST(ImportGguf, Qwen2WithBiasesIsNotPermuted) {
  REQUIRE_TEST_DATA("gguf/tiny_qwen2.gguf");
  LoadOptions options;
  options.load_tokenizer = false;
  ModelSource src = import_gguf(data_path("gguf/tiny_qwen2.gguf"), options);
  EXPECT_EQ(src.config.family, Family::qwen2);
  EXPECT_TRUE(src.config.attention_bias);
  EXPECT_EQ(src.weights.count("model.layers.1.self_attn.k_proj.bias"), 1u);
  expect_equal_state(src.weights, load_ref("gguf/tiny_qwen2_ref.safetensors"));
}

TEST(ImportGguf, ClearErrors) {
  REQUIRE_TEST_DATA("gguf/types.gguf");
  const std::string arch_msg = error_of([] { import_gguf(data_path("gguf/types.gguf"), {}); });
  EXPECT_NE(arch_msg.find("architecture 'testarch' is not supported"), std::string::npos) << arch_msg;
  EXPECT_NE(arch_msg.find("types.gguf"), std::string::npos) << arch_msg;
  const std::string meta_msg = error_of([] { import_gguf(data_path("gguf/unsupported.gguf"), {}); });
  EXPECT_NE(meta_msg.find("unsupported.gguf"), std::string::npos) << meta_msg;
}

TEST(ImportGguf, PermutationHelperIsTheInverseOfLlamaCpps) {
  // llama.cpp: per head, rows (2, d/2) -> (d/2, 2). Our helper must undo it, for weights and biases.
  const int64_t heads = 3, d = 8, in = 5;
  torch::Tensor hf = torch::arange(heads * d * in, torch::kFloat32).reshape({heads * d, in});
  torch::Tensor gguf = hf.reshape({heads, 2, d / 2, in}).transpose(1, 2).reshape({heads * d, in});
  EXPECT_TRUE(torch::equal(interleaved_to_rotate_half(gguf, heads, "w"), hf));
  torch::Tensor bias = torch::arange(heads * d, torch::kFloat32);
  torch::Tensor gbias = bias.reshape({heads, 2, d / 2}).transpose(1, 2).reshape({heads * d});
  EXPECT_TRUE(torch::equal(interleaved_to_rotate_half(gbias, heads, "b"), bias));
  // Row 2i of a head (first of pair i) lands at i, row 2i+1 at d/2 + i.
  torch::Tensor rows = interleaved_to_rotate_half(torch::arange(8, torch::kFloat32).reshape({8, 1}), 1, "r");
  EXPECT_TRUE(torch::equal(rows.flatten(), torch::tensor({0.f, 2.f, 4.f, 6.f, 1.f, 3.f, 5.f, 7.f})));
  EXPECT_NE(error_of([] { interleaved_to_rotate_half(torch::zeros({6, 2}), 2, "wq"); }).find("wq"),
            std::string::npos);
}

TEST(ImportGguf, SmolLM2Q4_1) {
  REQUIRE_TEST_DATA("gguf/smollm2_path.txt");
  const std::string path = read_text_file(data_path("gguf/smollm2_path.txt"));
  if (!file_exists(path)) GTEST_SKIP() << path << " not present";
  {
    LoadOptions weights_only;
    weights_only.load_tokenizer = false;
    const auto start = std::chrono::steady_clock::now();
    ModelSource w = import_gguf(path, weights_only);
    std::printf("SmolLM2-135M Q4_1 GGUF weights imported in %.2f s\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  const auto start = std::chrono::steady_clock::now();
  ModelSource src = load_model_source(path);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("SmolLM2-135M Q4_1 GGUF imported (weights + tokenizer) in %.2f s\n", secs);
  const ModelConfig& c = src.config;
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.num_hidden_layers, 30);
  EXPECT_EQ(c.num_attention_heads, 9);
  EXPECT_EQ(c.num_key_value_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(c.pad_token_id, 2);
  EXPECT_EQ(src.weights.size(), 2u + 30u * 9u);
  EXPECT_EQ(src.chat_template.rfind("{% for message in messages %}", 0), 0u);

  const StateDict ref = load_ref("gguf/smollm2_ref.safetensors");
  for (const char* name : {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"}) {
    const torch::Tensor& want = ref.at(std::string("hf:") + name);
    EXPECT_TRUE(torch::equal(src.weights.at(name), want)) << name;
  }
  EXPECT_TRUE(torch::equal(src.weights.at("model.embed_tokens.weight").slice(0, 0, 16),
                           ref.at("token_embd.weight[:16]")));
  EXPECT_TRUE(torch::equal(src.weights.at("model.layers.29.mlp.down_proj.weight").slice(0, 0, 8),
                           ref.at("blk.29.ffn_down.weight[:8]")));

  ASSERT_NE(src.tokenizer, nullptr);
  EXPECT_EQ(src.tokenizer->vocab_size(), 49152);
  const std::string text = "The capital of France is";
  EXPECT_EQ(src.tokenizer->decode(src.tokenizer->encode(text)), text);

  // End to end: the quantised instruct model knows the answer when the weights are in the right layout.
  auto t0 = std::chrono::steady_clock::now();
  Decoder model = build_model(src);
  model->eval();
  torch::NoGradGuard no_grad;
  std::printf("SmolLM2 model built in %.2f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  std::vector<int64_t> prompt;
  for (int32_t id : src.tokenizer->encode(text)) prompt.push_back(id);
  SamplingOptions sampling;
  sampling.max_new_tokens = 6;
  t0 = std::chrono::steady_clock::now();
  const GenerateResult result = generate(*model, prompt, sampling);
  std::printf("SmolLM2 generated %zu tokens in %.2f s\n", result.tokens.size(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  std::vector<int32_t> out(result.tokens.begin(), result.tokens.end());
  const std::string continuation = src.tokenizer->decode(out);
  std::printf("SmolLM2 continuation: \"%s\"\n", continuation.c_str());
  EXPECT_NE(continuation.find("Paris"), std::string::npos) << continuation;
}

// ---- llama2.c --------------------------------------------------------------------------------------

TEST(ImportLlama2c, Stories260KLayoutAndTokenizer) {
  REQUIRE_ASSET("models/stories260K/stories260K.bin");
  const std::string path = testing::asset_path("models/stories260K/stories260K.bin");
  ModelSource src = load_model_source(path);
  EXPECT_EQ(src.format, "llama2c");
  const ModelConfig& c = src.config;
  EXPECT_EQ(c.family, Family::llama);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_hidden_layers, 5);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(src.weights.count("lm_head.weight"), 0u);
  EXPECT_EQ(src.weights.size(), 2u + 5u * 9u);
  EXPECT_EQ(src.weights.at("model.layers.4.self_attn.k_proj.weight").sizes(), (at::IntArrayRef{32, 64}));
  EXPECT_EQ(src.weights.at("model.layers.0.mlp.down_proj.weight").sizes(), (at::IntArrayRef{64, 172}));
  if (file_exists(data_path("gguf/stories260K_hf.safetensors")))
    expect_equal_state(src.weights, load_ref("gguf/stories260K_hf.safetensors"));

  // tok512.model sits next to the checkpoint and is picked up (before tok512.bin).
  ASSERT_NE(src.tokenizer, nullptr);
  EXPECT_EQ(src.tokenizer->vocab_size(), 512);
  // Exported folders carry it as tokenizer.model (the name Hugging Face loaders look for), byte for byte.
  EXPECT_TRUE(src.tokenizer_files.empty());
  ASSERT_EQ(src.generated_tokenizer_files.count("tokenizer.model"), 1u);
  EXPECT_EQ(src.generated_tokenizer_files.at("tokenizer.model"),
            read_text_file(testing::asset_path("models/stories260K/tok512.model")));
  // Token ids of the first TinyStories validation paragraph begin 1, 301, 427, 309, 426 (assets README).
  if (testing::has_asset("text/tinystories_val_part1.txt")) {
    const std::string text = read_text_file(testing::asset_path("text/tinystories_val_part1.txt"));
    const std::vector<int32_t> ids = src.tokenizer->encode(text.substr(0, text.find("\n\n")), true);
    ASSERT_GE(ids.size(), 12u);
    EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + 12),
              (std::vector<int32_t>{1, 301, 427, 309, 426, 301, 427, 309, 394, 265, 262, 415}));
  }

  // Explicit tokenizer path (llama2.c .bin format).
  LoadOptions options;
  options.tokenizer_path = testing::asset_path("models/stories260K/tok512.bin");
  ModelSource with_bin = import_llama2c(path, options);
  ASSERT_NE(with_bin.tokenizer, nullptr);
  EXPECT_EQ(with_bin.tokenizer->vocab_size(), 512);
}

TEST(ImportLlama2c, PermutationKeepsAttentionScores) {
  REQUIRE_ASSET("models/stories260K/stories260K.bin");
  const std::string path = testing::asset_path("models/stories260K/stories260K.bin");
  LoadOptions options;
  options.load_tokenizer = false;
  ModelSource src = import_llama2c(path, options);
  Llama2cFile raw = Llama2cFile::open(path);
  const int64_t H = 8, KV = 4, d = 8, D = 64;
  torch::manual_seed(0);
  for (int64_t layer : {0, 3}) {
    const torch::Tensor wq_orig = torch::from_blob(const_cast<float*>(raw.data(raw.get("wq"))), {5, D, D})[layer]
                                      .to(torch::kFloat64);
    const torch::Tensor wk_orig =
        torch::from_blob(const_cast<float*>(raw.data(raw.get("wk"))), {5, KV * d, D})[layer].to(torch::kFloat64);
    const std::string p = "model.layers." + std::to_string(layer) + ".self_attn.";
    const torch::Tensor wq_hf = src.weights.at(p + "q_proj.weight").to(torch::kFloat64);
    const torch::Tensor wk_hf = src.weights.at(p + "k_proj.weight").to(torch::kFloat64);
    // The permutation only reorders rows.
    EXPECT_FALSE(torch::equal(wq_hf, wq_orig));
    EXPECT_TRUE(torch::equal(std::get<0>(wq_hf.flatten().sort()), std::get<0>(wq_orig.flatten().sort())));
    for (auto [m, n] : std::vector<std::pair<int64_t, int64_t>>{{0, 0}, {5, 2}, {17, 9}, {300, 11}}) {
      const torch::Tensor xq = torch::randn({D}, torch::kFloat64), xk = torch::randn({D}, torch::kFloat64);
      const auto want = scores(rope_adjacent(wq_orig.mv(xq), d, m, 10000.0),
                               rope_adjacent(wk_orig.mv(xk), d, n, 10000.0), H, KV, d);
      const auto got = scores(rope_rotate_half(wq_hf.mv(xq), d, m, 10000.0),
                              rope_rotate_half(wk_hf.mv(xk), d, n, 10000.0), H, KV, d);
      const auto wrong = scores(rope_rotate_half(wq_orig.mv(xq), d, m, 10000.0),
                                rope_rotate_half(wk_orig.mv(xk), d, n, 10000.0), H, KV, d);
      double worst = 0, wrong_worst = 0;
      for (size_t h = 0; h < want.size(); ++h) {
        EXPECT_NEAR(got[h], want[h], 1e-12 * (1 + std::abs(want[h]))) << "layer " << layer << " head " << h;
        worst = std::max(worst, std::abs(got[h] - want[h]));
        wrong_worst = std::max(wrong_worst, std::abs(wrong[h] - want[h]));
      }
      // Sanity: without the permutation the scores differ once positions differ.
      if (m != n) EXPECT_GT(wrong_worst, 1e-3) << "m=" << m << " n=" << n;
    }
  }
}

TEST(ImportLlama2c, Stories260KGeneratesTheKnownStory) {
  REQUIRE_ASSET("models/stories260K/stories260K.bin");
  ModelSource src = load_model_source(testing::asset_path("models/stories260K/stories260K.bin"));
  ASSERT_NE(src.tokenizer, nullptr);
  Decoder model = build_model(src);
  model->eval();
  torch::NoGradGuard no_grad;
  SamplingOptions sampling;
  sampling.max_new_tokens = 200;  // 200 forward steps from BOS, each producing one token
  const GenerateResult result = generate(*model, {1}, sampling);
  std::vector<int32_t> out(result.tokens.begin(), result.tokens.end());
  const std::string text = src.tokenizer->decode(out);
  EXPECT_EQ(text.rfind("Once upon a time, there was a little girl named Lily. She loved to play outside in the "
                       "park.",
                       0),
            0u)
      << text;
  EXPECT_NE(text.find("Lily didn't want to help her mom, so she"), std::string::npos) << text;
}

TEST(ImportLlama2c, UntiedClassifierMatchesPython) {
  REQUIRE_TEST_DATA("gguf/tiny_untied.bin");
  LoadOptions options;
  options.load_tokenizer = false;
  ModelSource src = import_llama2c(data_path("gguf/tiny_untied.bin"), options);
  EXPECT_FALSE(src.config.tie_word_embeddings);
  EXPECT_EQ(src.config.num_key_value_heads, 2);
  expect_equal_state(src.weights, load_ref("gguf/tiny_untied_hf.safetensors"));
}

TEST(ImportLlama2c, TruncatedFileIsAClearError) {
  REQUIRE_ASSET("models/stories260K/stories260K.bin");
  const std::string bytes = read_text_file(testing::asset_path("models/stories260K/stories260K.bin"));
  const std::string dir = testing::make_temp_dir("import");
  const std::string path = dir + "/cut.bin";
  {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), 1000000);
  }
  const std::string msg = error_of([&] { load_model_source(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected 1056540 bytes"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1000000"), std::string::npos) << msg;
}

}  // namespace mlaforge
