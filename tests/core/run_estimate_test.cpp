// The paper estimate of a run (trainer/run_estimate.h): parameter counts per tensor-parallel rank against
// the config's own count and hand-counted tiny models, and each memory / speed term against its formula.
// The real shapes are checked end to end by tests/cli/recipes_validate.sh (published parameter totals).
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "model/config.h"
#include "trainer/recipe.h"
#include "trainer/run_estimate.h"

namespace mlaforge {
namespace {

// vocab 100, hidden 16, intermediate 32, 2 layers, 4 heads of 4, 2 KV heads, untied.
ModelConfig tiny_llama() {
  return ModelConfig::from_json(
      {{"model_type", "llama"}, {"vocab_size", 100}, {"hidden_size", 16}, {"intermediate_size", 32},
       {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"head_dim", 4},
       {"tie_word_embeddings", false}},
      "tiny_llama");
}

// The same as a converted MLA model: latent 8, rope 2, nope 4, v 4.
ModelConfig tiny_mla() {
  return ModelConfig::from_json(
      {{"model_type", "deepseek_v3"}, {"vocab_size", 100}, {"hidden_size", 16}, {"intermediate_size", 32},
       {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 4}, {"kv_lora_rank", 8},
       {"q_lora_rank", nullptr}, {"qk_rope_head_dim", 2}, {"qk_nope_head_dim", 4}, {"v_head_dim", 4},
       {"first_k_dense_replace", 2}, {"tie_word_embeddings", false}},
      "tiny_mla");
}

ModelConfig tiny_mixtral() {
  return ModelConfig::from_json(
      {{"model_type", "mixtral"}, {"vocab_size", 100}, {"hidden_size", 16}, {"intermediate_size", 32},
       {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"num_local_experts", 4},
       {"num_experts_per_tok", 2}, {"tie_word_embeddings", false}},
      "tiny_mixtral");
}

ModelConfig tiny_gemma2() {
  return ModelConfig::from_json(
      {{"model_type", "gemma2"}, {"vocab_size", 100}, {"hidden_size", 16}, {"intermediate_size", 32},
       {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"head_dim", 8},
       {"query_pre_attn_scalar", 8}, {"attn_logit_softcapping", 50.0}, {"final_logit_softcapping", 30.0},
       {"sliding_window", 8}},
      "tiny_gemma2");
}

ModelConfig tiny_qwen2_mla() {  // attention biases: the q LoRA anchor and the down-projection biases
  return ModelConfig::from_json(
      {{"model_type", "deepseek_v3"}, {"vocab_size", 100}, {"hidden_size", 16}, {"intermediate_size", 32},
       {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 4}, {"kv_lora_rank", 8},
       {"q_lora_rank", 17}, {"qk_rope_head_dim", 2}, {"qk_nope_head_dim", 4}, {"v_head_dim", 4},
       {"attention_bias", true}, {"first_k_dense_replace", 2}, {"tie_word_embeddings", false}},
      "tiny_qwen2_mla");
}

TEST(RunEstimate, ParameterCountsMatchTheConfigAndSplitOverTp) {
  for (const ModelConfig& c : {tiny_llama(), tiny_mla(), tiny_mixtral(), tiny_gemma2(), tiny_qwen2_mla()}) {
    SCOPED_TRACE(c.model_type);
    EXPECT_EQ(count_parameters(c, 1).total, static_cast<double>(c.num_parameters()));
    EXPECT_EQ(count_parameters(c, 1).rank, static_cast<double>(c.num_parameters()));
    EXPECT_LT(count_parameters(c, 2).rank, count_parameters(c, 1).rank);
  }
  // By hand, tiny llama: embed and lm_head 1,600 each (vocab split), final norm 16; per layer q 256, k 128,
  // v 128 (column), o 256 (row), gate/up/down 512 each, 2 norms of 16 (replicated).
  const ModelConfig llama = tiny_llama();
  EXPECT_EQ(count_parameters(llama, 1).total, 7888);
  EXPECT_EQ(count_parameters(llama, 2).rank, (3200 + 2 * 2304) / 2.0 + 16 + 2 * 32);
  EXPECT_EQ(count_parameters(llama, 2, {"attention"}).total, 2 * 768);
  EXPECT_EQ(count_parameters(llama, 2, {"attention"}).rank, 768);
  // MLA: the latent down-projection (kv_a 10 x 16) and its norm are replicated, kv_b (32 x 8) split.
  const ModelConfig mla = tiny_mla();
  EXPECT_EQ(count_parameters(mla, 1, {"up_proj"}).total, 2 * 256);
  EXPECT_EQ(count_parameters(mla, 4, {"up_proj"}).rank, 2 * 64);
  EXPECT_EQ(count_parameters(mla, 1, {"attention"}).total, 2 * (384 + 160 + 8 + 256 + 256));
  EXPECT_EQ(count_parameters(mla, 2, {"attention"}).rank, 2 * ((384 + 256 + 256) / 2.0 + 160 + 8));
  // Mixtral's experts stay whole on every TP rank (model/weight_names.h).
  const ModelConfig moe = tiny_mixtral();
  EXPECT_EQ(count_parameters(moe, 1).total - count_parameters(moe, 4).rank,
            (3200 + 2 * (256 + 128 + 128 + 256)) * 0.75);
}

TEST(RunEstimate, MemoryTermsFollowTheirFormulas) {
  const Recipe r = parse_recipe_text(
      "model: {path: /s, dtype: bf16, trainable: all, activation_checkpointing: true}\n"
      "teacher: {path: /t, kl_ratio: 0.5}\n"
      "data: {train: /d, max_seq_len: 64}\n"
      "train: {max_steps: 100}\n"
      "batch: {micro_batch_size: 2, global_batch_size: 8}\n"
      "parallel: {tp: 2, zero: 1, bucket_mb: 1}\n",
      "r.yaml", "/");
  const RunPlan plan = plan_run(r, 4);  // tp 2 x dp 2, accumulation 2
  const ModelConfig student = tiny_mla(), teacher = tiny_llama();
  const RunEstimate e = estimate_run(r, plan, student, teacher);
  const double P_r = count_parameters(student, 2).rank, Pt_r = count_parameters(teacher, 2).rank;
  auto term = [&](const std::string& name) {
    for (const auto& m : e.memory)
      if (m.name == name) return m.bytes;
    ADD_FAILURE() << "no term " << name;
    return 0.0;
  };
  EXPECT_EQ(e.rank_parameters, P_r);
  EXPECT_EQ(e.rank_trainable, P_r);
  EXPECT_EQ(e.rank_teacher, Pt_r);
  EXPECT_EQ(term("weights"), 2 * P_r);
  EXPECT_EQ(term("gradients"), 6 * P_r);
  EXPECT_EQ(term("optimizer"), 12 * P_r / 2);  // ZeRO-1 over dp 2
  EXPECT_EQ(term("teacher"), 2 * Pt_r);
  EXPECT_EQ(term("checkpoints"), 2.0 * 2 * 64 * 16 * 2);  // L x b x s x D x 2 bytes
  EXPECT_EQ(term("attention"), 3.0 * 2 * 64 * 64);
  EXPECT_EQ(term("loss"), 8 * (2.0 * 64 * 50 * 4) + 2.0 * 64 * 50 * 2);  // vocab 100 / tp 2
  EXPECT_EQ(term("buckets"), 2.0 * 1024 * 1024);
  EXPECT_EQ(term("overhead"), 2.0 * 1024 * 1024 * 1024);
  double sum = 0;
  for (const auto& m : e.memory) sum += m.bytes;
  EXPECT_EQ(e.steady_bytes, sum);
  EXPECT_EQ(e.startup_bytes, 4 * P_r + 4 * P_r / 2 + 2 * Pt_r + 2.0 * 1024 * 1024 * 1024);
  EXPECT_EQ(e.peak_bytes, std::max(e.steady_bytes, e.startup_bytes));
  EXPECT_TRUE(e.fits());

  // FLOPs per token: student 4 M + 2 M_T (lm_head counted, the untied input embedding not) + 3 x causal
  // attention (mean context 32: 2 x 32 x 4 heads x (6 + 4) x 2 layers); teacher 2 M_t + its attention.
  const double m_student = 2 * (384 + 160 + 256 + 256 + 3 * 512) + 1600;
  const double m_teacher = 2 * (256 + 128 + 128 + 256 + 3 * 512) + 1600;
  const double expected = 6 * m_student + 3 * (2.0 * 32 * 4 * 10 * 2) + 2 * m_teacher + 2.0 * 32 * 4 * 8 * 2;
  EXPECT_DOUBLE_EQ(e.flops_per_token, expected);
  EXPECT_DOUBLE_EQ(e.tokens_per_second, 4 * 0.35 * 989e12 / expected);
  EXPECT_DOUBLE_EQ(e.step_seconds, 8 * 64 / e.tokens_per_second);
  ASSERT_TRUE(e.run_hours.has_value());
  EXPECT_DOUBLE_EQ(*e.run_hours, e.step_seconds * 100 / 3600);

  // Without a teacher and without checkpointing: no teacher terms, L + 1 layers of activations.
  const Recipe plain = parse_recipe_text(
      "model: {path: /s, dtype: fp32}\ndata: {train: /d, max_seq_len: 64}\ntrain: {max_steps: 1}\n", "r.yaml", "/");
  const RunEstimate p = estimate_run(plain, plan_run(plain, 1), tiny_llama(), std::nullopt);
  for (const auto& m : p.memory) {
    EXPECT_NE(m.name, "teacher");
    EXPECT_NE(m.name, "checkpoints");
    EXPECT_NE(m.name, "buckets");
  }
  EXPECT_EQ(p.memory[0].bytes, 4 * 7888.0);  // fp32 weights
  EXPECT_EQ(p.memory[2].bytes, 8 * 7888.0);  // fp32 AdamW moments, no masters
  // Gemma-2's soft-capped attention materialises its scores.
  const RunEstimate g = estimate_run(plain, plan_run(plain, 1), tiny_gemma2(), std::nullopt);
  double scores = 0;
  for (const auto& m : g.memory)
    if (m.name == "attention") scores = m.bytes;
  EXPECT_EQ(scores, 3.0 * 64 * 64 + 8.0 * 4 * 64 * 64);

  // A teacher is required when the recipe distils; a GPU too small says so.
  EXPECT_THROW(estimate_run(r, plan, student, std::nullopt), Error);
  EstimateAssumptions small;
  small.gpu_memory_gib = 1;
  const RunEstimate tight = estimate_run(r, plan, student, teacher, small);
  EXPECT_FALSE(tight.fits());
  EXPECT_NE(tight.describe()[2].find("DOES NOT FIT"), std::string::npos) << tight.describe()[2];
  EXPECT_EQ(tight.to_json()["fits"], false);
}

}  // namespace
}  // namespace mlaforge
