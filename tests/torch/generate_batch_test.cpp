// Batched decoding (generate_batch: left padding, per-row masks and positions, rows stopping on their own)
// against one generate() call per prompt, and DecodeSession (a cache kept across calls) against decoding
// from scratch, for GQA models (llama; mistral with a sliding window shorter than the sequences) and MLA
// models (a DeepSeek-V3 config, and a tiny llama converted by TransMLA with partial RoPE). The MLA
// models decode on the absorbed path over the latent cache (MLAPath::automatic with a cache), whose size
// is checked too.
#include <gtest/gtest.h>

#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "convert/transmla.h"
#include "core/error.h"
#include "model/decoder.h"
#include "model/generate.h"
#include "tests/torch/trainer_test_util.h"

namespace mlaforge {
namespace {

// Batched and single decodes run the same maths with other GEMM shapes and masks: rounding only.
// Measured max |logit difference| ~1e-6 (logits O(1..5)).
constexpr double kLogitsTol = 1e-5;

struct NamedModel {
  std::string name;
  Decoder model{nullptr};
};

ModelConfig mistral_window_config(int64_t window) {
  nlohmann::json j = {{"model_type", "mistral"},        {"vocab_size", 96},         {"hidden_size", 32},
                      {"intermediate_size", 64},        {"num_hidden_layers", 2},   {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},       {"rms_norm_eps", 1e-5},     {"rope_theta", 10000.0},
                      {"max_position_embeddings", 128}, {"sliding_window", window}};
  return ModelConfig::from_json(j, "tiny-mistral");
}

// A tiny llama converted to MLA (rope dim 4 of head_dim 8, latent rank 12 of 2 * 2 * 8 = 32): the
// converter's own config (no latent norm, partial RoPE), calibrated on random documents.
Decoder converted_mla() {
  const ModelConfig llama = testing::tiny_llama_config();
  Decoder original = testing::random_decoder(llama, 77);
  StateDict weights = export_weights(*original);
  for (auto& [k, v] : weights) v = v.clone();
  std::vector<std::vector<int64_t>> docs;
  torch::manual_seed(5);
  for (int i = 0; i < 8; ++i) {
    auto t = torch::randint(0, llama.vocab_size, {24}, torch::kInt64);
    docs.emplace_back(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + 24);
  }
  torch::NoGradGuard no_grad;
  const KVMoments moments = collect_kv_moments(*original, docs);
  ConvertOptions o;
  o.rope_dim = 4;
  o.kv_lora_rank = 12;
  ConvertResult res = convert_to_mla(llama, weights, moments, o);
  Decoder mla(res.config);
  load_weights(*mla, res.weights, "converted");
  mla->eval();
  return mla;
}

std::vector<NamedModel> models() {
  std::vector<NamedModel> out;
  out.push_back({"llama-gqa", testing::random_decoder(testing::tiny_llama_config(), 11)});
  out.push_back({"mistral-window5", testing::random_decoder(mistral_window_config(5), 12)});
  out.push_back({"deepseek-mla", testing::random_decoder(testing::tiny_mla_config(), 13)});
  out.push_back({"converted-mla", converted_mla()});
  return out;
}

std::vector<int64_t> random_prompt(int64_t vocab, int64_t length, uint64_t seed) {
  torch::manual_seed(seed);
  auto t = torch::randint(0, vocab, {length}, torch::kInt64);
  return {t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + length};
}

// One decode's tokens and the logits of every step.
struct Recorded {
  GenerateResult result;
  std::vector<torch::Tensor> logits;  // (V,) per step
};

Recorded single(DecoderImpl& model, const std::vector<int64_t>& prompt, const SamplingOptions& o,
                const std::function<bool(int64_t)>& on_token = {}) {
  Recorded r;
  r.result = generate(model, prompt, o, on_token, [&](int64_t, const torch::Tensor& l) { r.logits.push_back(l[0].clone()); });
  return r;
}

// Largest |difference| between the batch's row b and the single run, over the steps the single run took.
double logits_error(const std::vector<torch::Tensor>& batch_steps, int64_t b, const Recorded& one) {
  EXPECT_GE(batch_steps.size(), one.logits.size());
  double err = 0;
  for (size_t s = 0; s < one.logits.size() && s < batch_steps.size(); ++s)
    err = std::max(err, (batch_steps[s][b] - one.logits[s]).abs().max().item<double>());
  return err;
}

TEST(GenerateBatch, GreedyEqualsOneCallPerPrompt) {
  for (NamedModel& m : models()) {
    DecoderImpl& model = *m.model;
    const int64_t V = model.config().vocab_size;
    // Three lengths: the longest sets the padding of the others; a 1-token prompt is all padding but one.
    const std::vector<std::vector<int64_t>> prompts = {random_prompt(V, 7, 1), random_prompt(V, 12, 2),
                                                       random_prompt(V, 1, 3)};
    SamplingOptions o;
    o.max_new_tokens = 10;

    // Make each row stop its own way: row 1 by a stop string (its on_token refuses the 4th token), and
    // row 2 (else row 0, when a random model repeats itself) at a stop id: a token of its free continuation
    // at index >= 2 that it has not produced before, so it stops exactly there; the other row by length
    // (or at that id too, if it happens to produce it).
    int64_t stop_id = -1;
    size_t eos_row = 0;
    for (size_t r : {size_t{2}, size_t{0}}) {
      const std::vector<int64_t> t = single(model, prompts[r], o).result.tokens;
      for (size_t i = 2; i < t.size() && stop_id < 0; ++i)
        if (std::find(t.begin(), t.begin() + static_cast<std::ptrdiff_t>(i), t[i]) == t.begin() + static_cast<std::ptrdiff_t>(i))
          stop_id = t[i];
      if (stop_id >= 0) {
        eos_row = r;
        break;
      }
    }
    ASSERT_GE(stop_id, 0) << m.name << ": no fresh token to stop at";
    o.stop_ids = {stop_id};
    auto stop_row1 = [](int64_t count) { return count < 4; };

    std::vector<Recorded> singles;
    for (size_t b = 0; b < prompts.size(); ++b) {
      int64_t count = 0;
      singles.push_back(single(model, prompts[b], o, [&](int64_t) { return b != 1 || stop_row1(++count); }));
    }
    std::vector<int64_t> counts(prompts.size(), 0);
    std::vector<torch::Tensor> batch_logits;
    BatchGenerateResult batch = generate_batch(
        model, prompts, o, [&](size_t b, int64_t) { return b != 1 || stop_row1(++counts[b]); },
        [&](int64_t, const torch::Tensor& l) { batch_logits.push_back(l.clone()); });

    ASSERT_EQ(batch.sequences.size(), prompts.size());
    double worst = 0;
    std::set<std::string> reasons;
    for (size_t b = 0; b < prompts.size(); ++b) {
      EXPECT_EQ(batch.sequences[b].tokens, singles[b].result.tokens) << m.name << " row " << b;
      EXPECT_EQ(batch.sequences[b].stop_reason, singles[b].result.stop_reason) << m.name << " row " << b;
      const double err = logits_error(batch_logits, static_cast<int64_t>(b), singles[b]);
      EXPECT_LE(err, kLogitsTol) << m.name << " row " << b;
      worst = std::max(worst, err);
      reasons.insert(batch.sequences[b].stop_reason);
    }
    EXPECT_EQ(batch.sequences[1].stop_reason, "stop_string") << m.name;
    EXPECT_EQ(batch.sequences[1].tokens.size(), 4u) << m.name;
    EXPECT_EQ(batch.sequences[eos_row].stop_reason, "eos") << m.name;
    EXPECT_EQ(batch.sequences[eos_row].tokens.back(), stop_id) << m.name;
    // The batch ran as long as its longest row needed.
    size_t longest = 0;
    for (const auto& s : singles) longest = std::max(longest, s.result.tokens.size());
    EXPECT_EQ(batch.steps, static_cast<int64_t>(longest) - 1) << m.name;
    EXPECT_EQ(batch.padded_length, 12);

    // The cache holds what the attention keeps per token and layer (MLA: latent + rope key only), for
    // B rows x (longest prompt + max_new_tokens) positions, float32.
    const int64_t capacity = 12 + o.max_new_tokens;
    EXPECT_EQ(batch.cache_bytes, 3 * capacity * model.config().kv_cache_values_per_token() * 4) << m.name;
    if (model.config().is_mla()) {
      int64_t latent = 0;
      for (int64_t l = 0; l < model.config().num_hidden_layers; ++l)
        latent += model.config().kv_lora_rank_at(l) + model.config().qk_rope_head_dim;
      EXPECT_EQ(model.config().kv_cache_values_per_token(), latent) << m.name;
    }
    std::printf("[generate_batch] %-16s rows stop %s/%s/%s after %zu/%zu/%zu tokens, max logits diff vs single %.2g\n",
                m.name.c_str(), batch.sequences[0].stop_reason.c_str(), batch.sequences[1].stop_reason.c_str(),
                batch.sequences[2].stop_reason.c_str(), batch.sequences[0].tokens.size(),
                batch.sequences[1].tokens.size(), batch.sequences[2].tokens.size(), worst);
  }
}

// Equal-length prompts take the unmasked path (no key_valid, default positions): the same answer.
TEST(GenerateBatch, EqualLengthsNeedNoMask) {
  Decoder model = testing::random_decoder(testing::tiny_mla_config(), 21);
  const std::vector<std::vector<int64_t>> prompts = {random_prompt(96, 6, 4), random_prompt(96, 6, 5)};
  SamplingOptions o;
  o.max_new_tokens = 6;
  BatchGenerateResult batch = generate_batch(*model, prompts, o);
  for (size_t b = 0; b < prompts.size(); ++b)
    EXPECT_EQ(batch.sequences[b].tokens, generate(*model, prompts[b], o).tokens) << "row " << b;
}

// Sampling: row b draws with seed + b, so it reproduces generate() with that seed.
TEST(GenerateBatch, SampledRowsUseSeedPlusIndex) {
  Decoder model = testing::random_decoder(testing::tiny_llama_config(), 31);
  const std::vector<std::vector<int64_t>> prompts = {random_prompt(96, 3, 6), random_prompt(96, 9, 7)};
  SamplingOptions o;
  o.max_new_tokens = 8;
  o.temperature = 0.8;
  o.top_k = 20;
  o.top_p = 0.9;
  o.repetition_penalty = 1.2;
  o.seed = 100;
  BatchGenerateResult batch = generate_batch(*model, prompts, o);
  for (size_t b = 0; b < prompts.size(); ++b) {
    SamplingOptions ob = o;
    ob.seed = o.seed + b;
    EXPECT_EQ(batch.sequences[b].tokens, generate(*model, prompts[b], ob).tokens) << "row " << b;
  }
}

TEST(GenerateBatch, RejectsEmptyInput) {
  Decoder model = testing::random_decoder(testing::tiny_llama_config(), 41);
  SamplingOptions o;
  EXPECT_THROW(generate_batch(*model, {}, o), Error);
  EXPECT_THROW(generate_batch(*model, {{1, 2}, {}}, o), Error);
}

// A session keeps the shared prefix and prefills the rest; every call equals generate() from scratch.
TEST(DecodeSession, ReusesTheSharedPrefixAndEqualsScratch) {
  for (NamedModel& m : models()) {
    DecoderImpl& model = *m.model;
    const int64_t V = model.config().vocab_size;
    SamplingOptions o;
    o.max_new_tokens = 6;
    DecodeSession session(model, /*initial_capacity=*/4);  // small: the calls below must grow it

    auto check = [&](const std::vector<int64_t>& context, int64_t expect_reused, const char* what) -> GenerateResult {
      std::vector<torch::Tensor> cached_logits;
      GenerateResult got = session.generate(context, o, {}, [&](int64_t, const torch::Tensor& l) {
        cached_logits.push_back(l[0].clone());
      });
      const Recorded scratch = single(model, context, o);
      EXPECT_EQ(got.tokens, scratch.result.tokens) << m.name << ": " << what;
      EXPECT_EQ(got.reused_tokens, expect_reused) << m.name << ": " << what;
      EXPECT_EQ(cached_logits.size(), scratch.logits.size()) << m.name << ": " << what;
      double err = 0;
      for (size_t s = 0; s < std::min(cached_logits.size(), scratch.logits.size()); ++s)
        err = std::max(err, (cached_logits[s] - scratch.logits[s]).abs().max().item<double>());
      EXPECT_LE(err, kLogitsTol) << m.name << ": " << what;
      // The cache now holds the context and every generated token but the last (never fed back).
      std::vector<int64_t> expect_cached = context;
      expect_cached.insert(expect_cached.end(), got.tokens.begin(), got.tokens.end() - 1);
      EXPECT_EQ(session.cached_tokens(), expect_cached) << m.name << ": " << what;
      EXPECT_EQ(session.cache().length(), static_cast<int64_t>(expect_cached.size())) << m.name;
      return got;
    };

    std::vector<int64_t> context = random_prompt(V, 9, 8);
    GenerateResult first = check(context, 0, "first call");
    // The conversation continues: the context grows by the reply and a new turn; all but the reply's last
    // token (never fed back) is reused.
    std::vector<int64_t> longer = context;
    longer.insert(longer.end(), first.tokens.begin(), first.tokens.end());
    const std::vector<int64_t> turn = random_prompt(V, 5, 9);
    longer.insert(longer.end(), turn.begin(), turn.end());
    check(longer, static_cast<int64_t>(context.size() + first.tokens.size() - 1), "extended context");
    // History rewritten at token 3: only 0..2 are kept.
    std::vector<int64_t> rewritten = longer;
    rewritten[3] = (rewritten[3] + 1) % V;
    check(rewritten, 3, "rewritten history");
    // The same context again: everything but the last token is reused (it runs again for its logits).
    check(rewritten, static_cast<int64_t>(rewritten.size()) - 1, "same context");
    // A context that is a prefix of the cached tokens.
    std::vector<int64_t> shorter(rewritten.begin(), rewritten.begin() + 6);
    check(shorter, 5, "shorter context");
    EXPECT_GE(session.cache().capacity(), static_cast<int64_t>(longer.size()) + o.max_new_tokens) << m.name;
  }
}

TEST(KVCache, TruncateAndReserveKeepTheCachedEntries) {
  KVCache cache(1, 4);
  auto e = torch::arange(2 * 3 * 4, torch::kFloat32).view({1, 2, 3, 4});  // (B, h, T, w)
  cache.append(0, {e});
  cache.advance(3);
  cache.reserve(10);
  EXPECT_EQ(cache.capacity(), 10);
  ASSERT_EQ(cache.entries(0).size(), 1u);
  EXPECT_TRUE(cache.entries(0)[0].equal(e));
  EXPECT_EQ(cache.allocated_bytes(), 2 * 10 * 4 * 4);
  cache.truncate(1);
  EXPECT_TRUE(cache.entries(0)[0].equal(e.narrow(2, 0, 1)));
  EXPECT_THROW(cache.truncate(2), Error);
}

}  // namespace
}  // namespace mlaforge
