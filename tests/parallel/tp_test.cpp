// Tensor parallelism (parallel/tensor_parallel.h) against the single-device model: every rank builds the
// same full model (same seed), its TP shard, runs forward + vocabulary-parallel CE + backward, and
// compares logits (gathered here, for the test only), the CE sum and every parameter's gradient with the
// full model's (the full gradient sharded by the same plan). Run under mpirun -np 2 and -np 4
// (parallel_tp_np2/np4); tp is the largest valid size dividing the world (the rest are DP replicas).
// Single-process tests: the config refusal and the shard/gather round trip.
#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/weight_names.h"
#include "parallel/tensor_parallel.h"
#include "trainer/activation_checkpoint.h"
#include "parallel_test_main.h"

namespace mlaforge::parallel {
namespace {

using testing::world;

ModelConfig llama_config() {  // GQA, untied head, vocab 97 (not a multiple of 2 or 4: padding)
  return ModelConfig::from_json(nlohmann::json::parse(R"({
    "model_type": "llama", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 64, "tie_word_embeddings": false})"), "llama");
}
ModelConfig qwen2_config() {  // GQA with q/k/v biases (column-parallel) and a tied head
  return ModelConfig::from_json(nlohmann::json::parse(R"({
    "model_type": "qwen2", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
    "max_position_embeddings": 64, "tie_word_embeddings": true})"), "qwen2");
}
ModelConfig mla_config(bool q_lora) {
  auto j = nlohmann::json::parse(R"({
    "model_type": "deepseek_v3", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "kv_lora_rank": 16,
    "q_lora_rank": null, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8, "head_dim": 8,
    "n_routed_experts": 256, "first_k_dense_replace": 2, "moe_intermediate_size": 16, "rope_interleave": true,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}})");
  if (q_lora) j["q_lora_rank"] = 12;
  return ModelConfig::from_json(j, q_lora ? "mla_q_lora" : "mla");
}
ModelConfig gemma2_config() {  // soft-capping (attention and final), sliding window, tied head, sqrt(D) scaling
  return ModelConfig::from_json(nlohmann::json::parse(R"({
    "model_type": "gemma2", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "query_pre_attn_scalar": 12, "attn_logit_softcapping": 4.0, "final_logit_softcapping": 6.0,
    "sliding_window": 4, "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": true,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 64})"), "gemma2");
}
ModelConfig mixtral_config() {  // MoE: experts replicated under TP
  return ModelConfig::from_json(nlohmann::json::parse(R"({
    "model_type": "mixtral", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 48,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
    "num_local_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 64})"), "mixtral");
}

// The full model with random weights (norms near 1), identical on every rank.
Decoder random_model(const ModelConfig& c) {
  torch::manual_seed(1234);
  Decoder m(c);
  torch::NoGradGuard no_grad;
  for (auto& p : m->named_parameters()) {
    if (p.key().find("norm") != std::string::npos) {
      p.value().copy_(1.0 + 0.1 * torch::randn_like(p.value()));
    } else {
      p.value().copy_(0.15 * torch::randn_like(p.value()));
    }
  }
  return m;
}

StateDict cloned(const StateDict& s) {
  StateDict out;
  for (const auto& [k, v] : s) out[k] = v.clone();
  return out;
}

// Gradients under HF names (the plan's keys).
StateDict grads_by_hf(const ModelConfig& c, const DecoderImpl& m) {
  StateDict out;
  auto params = m.named_parameters(true);
  for (const WeightName& w : expand_weight_names(c)) {
    const torch::Tensor& g = params[w.ours].grad();
    out[w.hf] = g.defined() ? g.clone() : torch::zeros_like(params[w.ours]);
  }
  return out;
}

struct Batch {
  torch::Tensor tokens, targets;
};
Batch make_batch(int64_t vocab) {
  torch::manual_seed(7);
  Batch b;
  b.tokens = torch::randint(0, vocab, {2, 9}, torch::kInt64);
  b.targets = torch::randint(0, vocab, {2, 9}, torch::kInt64);
  b.tokens[1][2] = vocab - 1;   // the last id: on the last rank, next to its padding rows
  b.targets[1][0] = vocab - 1;
  b.targets[0][3] = -100;       // an ignored position
  b.targets[1][8] = -100;
  return b;
}

struct Result {
  double logits = 0, loss = 0, loss_ref = 0, grad = 0;  // max abs differences; grad relative to max |ref|
  std::string worst;
  int exact = 0, tensors = 0;  // gradients equal bit for bit, of all
  Decoder full{nullptr}, local{nullptr};
};

struct RunOptions {
  int64_t chunk_tokens = 5;             // several loss chunks, recomputed in backward
  bool activation_checkpointing = false;  // layers recomputed in backward (their collectives too)
};

int tp_for(const ModelConfig& c, int world_size) {
  int best = 1;
  for (int tp : valid_tp_sizes(c))
    if (world_size % tp == 0) best = tp;
  return best;
}

// Runs full and TP forward/backward; `tp_comm` is this rank's TP group.
Result run(const ModelConfig& c, Communicator& tp_comm, TpOptions options = {}, RunOptions how = {}) {
  const int tp = tp_comm.size(), rank = tp_comm.rank();
  Result r;
  r.full = random_model(c);
  const StateDict full_sd = cloned(export_weights(*r.full));
  r.local = Decoder(tp_rank_config(c, tp));
  load_weights(*r.local, shard_state_dict(c, full_sd, tp, rank), "shard");
  r.local->set_tp_hooks(make_tp_hooks(c, tp_comm, options));
  if (how.activation_checkpointing) set_activation_checkpointing(*r.local, true);

  const Batch b = make_batch(c.vocab_size);
  auto logits_full = r.full->forward(b.tokens);  // (B, T, V)
  auto ce_full = loss_sums_from_logits(logits_full, b.targets).ce_sum;
  ce_full.backward();

  auto h = r.local->hidden(b.tokens);
  LossOptions lo;
  lo.chunk_tokens = how.chunk_tokens;
  LossSums sums = vocab_parallel_loss_sums(*r.local, h, b.targets, c.vocab_size, tp_comm, lo);
  EXPECT_EQ(sums.ce_tokens, (b.targets != -100).sum().item<int64_t>());
  sums.ce_sum.backward();
  r.loss = std::abs(sums.ce_sum.item<double>() - ce_full.item<double>());
  r.loss_ref = ce_full.item<double>();

  {  // logits, gathered for the comparison only
    torch::NoGradGuard no_grad;
    auto ll = r.local->forward(b.tokens).contiguous();  // (B, T, Vl)
    torch::Tensor all = torch::empty({tp * ll.numel()});
    tp_comm.all_gather(ll.reshape({-1}), all);
    auto full_logits = all.view({tp, ll.size(0), ll.size(1), ll.size(2)}).permute({1, 2, 0, 3})
                           .reshape({ll.size(0), ll.size(1), -1}).narrow(2, 0, c.vocab_size);
    r.logits = (full_logits - logits_full).abs().max().item<double>();
  }

  const StateDict want = shard_state_dict(c, grads_by_hf(c, *r.full), tp, rank);
  const StateDict got = grads_by_hf(tp_rank_config(c, tp), *r.local);
  EXPECT_EQ(want.size(), got.size());
  for (const auto& [name, g] : want) {
    auto it = got.find(name);
    if (it == got.end()) {
      ADD_FAILURE() << "no local gradient for " << name;
      continue;
    }
    EXPECT_EQ(it->second.sizes(), g.sizes()) << name;
    const double scale = std::max(1.0, g.abs().max().item<double>());
    const double d = (it->second - g).abs().max().item<double>() / scale;
    r.tensors += 1;
    r.exact += torch::equal(it->second, g) ? 1 : 0;
    if (d >= r.grad) {
      r.grad = d;
      r.worst = name;
    }
  }
  return r;
}

void report(const std::string& what, int tp, const Result& r) {
  if (world()->rank() == 0)
    std::printf("[tp] %s tp=%d: max|logits diff| %.3g, |CE sum diff| %.3g (CE sum %.4f), max grad diff %.3g "
                "(relative to max(1, max|grad|); worst %s); %d of %d gradient tensors bitwise equal\n",
                what.c_str(), tp, r.logits, r.loss, r.loss_ref, r.grad, r.worst.c_str(), r.exact, r.tensors);
}

// The stated tolerances (float32): logits 2e-5 absolute (|logits| ~ 1), CE sum 1e-4 absolute over
// ~16 tokens (|CE sum| ~ 75), gradients 2e-5 relative to max(1, max |grad|) per tensor.
void expect_close(const Result& r) {
  EXPECT_LT(r.logits, 2e-5);
  EXPECT_LT(r.loss, 1e-4);
  EXPECT_LT(r.grad, 2e-5) << r.worst;
}

void check_family(const ModelConfig& c, const std::string& what, RunOptions how = {}) {
  REQUIRE_MPI_WORLD();
  const int tp = tp_for(c, world()->size());
  ASSERT_GT(tp, 1);
  ParallelGroups groups = make_parallel_groups(world()->split(0, world()->rank(), "world"), tp);
  Result r = run(c, *groups.tp, {}, how);
  report(what, tp, r);
  expect_close(r);
  // Export: the gathered shards are the full weights, bit for bit.
  const StateDict full_sd = export_weights(*r.full);
  const StateDict back = gather_state_dict(c, cloned(export_weights(*r.local)), *groups.tp);
  ASSERT_EQ(back.size(), full_sd.size());
  for (const auto& [name, t] : full_sd) EXPECT_TRUE(torch::equal(back.at(name), t)) << name;
}

TEST(TensorParallel, LlamaGqaPaddedVocab) { check_family(llama_config(), "llama (GQA 4/2, vocab 97)"); }
TEST(TensorParallel, Qwen2BiasTiedHead) { check_family(qwen2_config(), "qwen2 (q/k/v bias, tied head)"); }
TEST(TensorParallel, Gemma2SoftcapSlidingTied) { check_family(gemma2_config(), "gemma2 (soft-caps, sliding, tied)"); }
TEST(TensorParallel, MlaNoQLora) { check_family(mla_config(false), "MLA (q_proj)"); }
TEST(TensorParallel, MlaQLora) { check_family(mla_config(true), "MLA (q_a/q_b)"); }
// In float64 the TP forward agrees to ~1e-15: the float32 differences above are summation order only.
TEST(TensorParallel, Float64LogitsAgreeToRounding) {
  REQUIRE_MPI_WORLD();
  for (const ModelConfig& c : {llama_config(), mla_config(true)}) {
    const int tp = tp_for(c, world()->size());
    ParallelGroups groups = make_parallel_groups(world()->split(0, world()->rank(), "world"), tp);
    Decoder full = random_model(c);
    full->to(torch::kDouble);
    Decoder local(tp_rank_config(c, tp));
    local->to(torch::kDouble);
    load_weights(*local, shard_state_dict(c, cloned(export_weights(*full)), tp, groups.tp->rank()), "shard");
    local->set_tp_hooks(make_tp_hooks(c, *groups.tp));
    torch::NoGradGuard no_grad;
    const Batch b = make_batch(c.vocab_size);
    auto want = full->forward(b.tokens);
    auto ll = local->forward(b.tokens).contiguous();  // (B, T, Vl)
    torch::Tensor all = torch::empty({tp * ll.numel()}, ll.options());
    groups.tp->all_gather(ll.reshape({-1}), all);
    auto got = all.view({tp, ll.size(0), ll.size(1), ll.size(2)}).permute({1, 2, 0, 3})
                   .reshape({ll.size(0), ll.size(1), -1}).narrow(2, 0, c.vocab_size);
    const double d = (got - want).abs().max().item<double>();
    EXPECT_LT(d, 1e-12) << c.model_type;
    if (world()->rank() == 0) std::printf("[tp] %s tp=%d float64: max|logits diff| %.3g\n", c.model_type.c_str(), tp, d);
  }
}

// The training setup: layers checkpointed (their collectives rerun in backward), loss unchunked.
TEST(TensorParallel, MlaQLoraActivationCheckpointing) {
  RunOptions how;
  how.chunk_tokens = 0;
  how.activation_checkpointing = true;
  check_family(mla_config(true), "MLA (q_a/q_b), activation checkpointing, one loss chunk", how);
}
TEST(TensorParallel, MixtralReplicatedExperts) { check_family(mixtral_config(), "mixtral (experts replicated)"); }

// The shared rope key: every head reads rows [R, R + rope) of kv_a_proj_with_mqa, so each rank's heads
// contribute only part of its gradient. With the latent's backward all-reduce (TpPoint::mla_latent) every
// rank holds the full gradient; without it, the rank's gradient differs and only the sum over ranks is
// the full one.
TEST(TensorParallel, MlaSharedRopeKeyGradientIsReduced) {
  REQUIRE_MPI_WORLD();
  for (bool q_lora : {false, true}) {
    const ModelConfig c = mla_config(q_lora);
    const int tp = tp_for(c, world()->size());
    ParallelGroups groups = make_parallel_groups(world()->split(0, world()->rank(), "world"), tp);
    const int64_t R = c.kv_lora_rank, rope = c.qk_rope_head_dim;
    // The last layer: nothing downstream of its latent depends on the skipped reductions.
    const std::string name = "layers." + std::to_string(c.num_hidden_layers - 1) + ".attn.wkv_a.weight";
    auto rope_rows = [&](Decoder& m) { return m->named_parameters()[name].grad().narrow(0, R, rope).clone(); };
    auto latent_rows = [&](Decoder& m) { return m->named_parameters()[name].grad().narrow(0, 0, R).clone(); };

    Result with = run(c, *groups.tp);
    const auto want = rope_rows(with.full);
    const double d_with = (rope_rows(with.local) - want).abs().max().item<double>();
    EXPECT_LT(d_with, 2e-5 * std::max(1.0, want.abs().max().item<double>()));
    EXPECT_LT((latent_rows(with.local) - latent_rows(with.full)).abs().max().item<double>(), 2e-5);

    TpOptions skip;
    skip.skip_backward_reduce = {TpPoint::mla_latent};
    Result without = run(c, *groups.tp, skip);
    const auto partial = rope_rows(without.local);
    const double d_without = (partial - want).abs().max().item<double>();
    EXPECT_GT(d_without, 1e-3 * want.abs().max().item<double>()) << "the partial rope-key gradient equals the full one";
    torch::Tensor summed = partial.contiguous();
    groups.tp->all_reduce(summed);
    const double d_sum = (summed - want).abs().max().item<double>();
    EXPECT_LT(d_sum, 2e-5 * std::max(1.0, want.abs().max().item<double>()));
    if (world()->rank() == 0)
      std::printf("[tp] MLA%s tp=%d rope-key rows of %s: |grad - full| with reduction %.3g, without %.3g "
                  "(max |full| %.3g), sum of the partial ones over ranks vs full %.3g\n",
                  q_lora ? " (q_lora)" : "", tp, name.c_str(), d_with, d_without, want.abs().max().item<double>(),
                  d_sum);
  }
}

// The loss alone: vocabulary-parallel CE sum and its gradient against the unsharded cross-entropy, with
// padding columns (garbage values that must not count) and targets on every rank.
TEST(TensorParallel, VocabParallelCrossEntropyMatchesFullSoftmax) {
  REQUIRE_MPI_WORLD();
  const int tp = world()->size(), rank = world()->rank();
  const int64_t V = 23, Vp = padded_vocab(V, tp), n = Vp / tp;
  torch::manual_seed(3);
  auto full = (3.0 * torch::randn({6, Vp})).requires_grad_(true);  // same on all ranks
  auto targets = torch::tensor({0L, 22L, -100L, 11L, 5L, 21L});
  auto ref = torch::nn::functional::cross_entropy(
      full.narrow(1, 0, V), targets,
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
  ref.backward();
  auto local = full.detach().narrow(1, rank * n, n).clone().requires_grad_(true);
  auto ce = vocab_parallel_cross_entropy(local, targets, rank * n, V, *world());
  ce.backward();
  EXPECT_NEAR(ce.item<double>(), ref.item<double>(), 1e-5);
  const auto want = full.grad().narrow(1, rank * n, n);
  EXPECT_LT((local.grad() - want).abs().max().item<double>(), 1e-6);
  if (rank == tp - 1) EXPECT_EQ(local.grad().narrow(1, V - rank * n, Vp - V).abs().sum().item<double>(), 0.0);
  EXPECT_EQ(local.grad()[2].abs().sum().item<double>(), 0.0);  // the ignored row
}

// --- single process --------------------------------------------------------------------------------

TEST(TensorParallelPlan, RefusesTpNotDividingHeadsAndListsValidOnes) {
  const ModelConfig c = llama_config();  // 4 heads, 2 KV heads
  EXPECT_EQ(valid_tp_sizes(c), (std::vector<int>{1, 2}));
  try {
    tp_rank_config(c, 4);
    FAIL() << "tp = 4 accepted with 2 KV heads";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_key_value_heads (2); valid tp values for this llama model: 1, 2"),
              std::string::npos)
        << e.what();
  }
  try {
    tp_rank_config(mla_config(false), 3);
    FAIL() << "tp = 3 accepted with 4 heads";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_attention_heads (4); valid tp values for this deepseek_v3 model: 1, 2, 4"),
              std::string::npos)
        << e.what();
  }
  const ModelConfig r = tp_rank_config(mla_config(true), 4);
  EXPECT_EQ(r.num_attention_heads, 1);
  EXPECT_EQ(r.intermediate_size, 16);
  EXPECT_EQ(r.vocab_size, 25);  // 97 padded to 100
  EXPECT_EQ(r.q_lora_rank, 12);
  EXPECT_EQ(r.kv_lora_rank, 16);
  EXPECT_EQ(tp_rank_config(mixtral_config(), 2).intermediate_size, 48);  // experts replicated
}

TEST(TensorParallelPlan, MlaSplitsFollowTheTable) {
  const ModelConfig c = mla_config(true);
  for (const WeightName& w : expand_weight_names(c)) {
    if (w.hf.find("kv_a_proj_with_mqa") != std::string::npos || w.hf.find("q_a_") != std::string::npos ||
        w.hf.find("kv_a_layernorm") != std::string::npos)
      EXPECT_EQ(w.split, TpSplit::replicated) << w.hf;
    if (w.hf.find("kv_b_proj") != std::string::npos || w.hf.find("q_b_proj") != std::string::npos)
      EXPECT_EQ(w.split, TpSplit::column) << w.hf;
    if (w.hf.find("o_proj") != std::string::npos) EXPECT_EQ(w.split, TpSplit::row) << w.hf;
  }
}

TEST(TensorParallelPlan, ShardThenGatherIsTheIdentity) {
  for (const ModelConfig& c : {llama_config(), mla_config(true), qwen2_config()}) {
    for (int tp : {2, 4}) {
      if (c.num_key_value_heads % tp != 0 && !c.is_mla()) continue;
      Decoder full = random_model(c);
      const StateDict sd = cloned(export_weights(*full));
      std::vector<StateDict> shards;
      for (int r = 0; r < tp; ++r) {
        shards.push_back(shard_state_dict(c, sd, tp, r));
        Decoder local(tp_rank_config(c, tp));
        EXPECT_NO_THROW(load_weights(*local, shards.back(), "shard")) << c.model_type << " tp=" << tp;
      }
      // MLA kv_b: rank r holds heads [r H/tp, ...): rows [r * H/tp * (nope + v), ...).
      if (c.is_mla()) {
        const std::string kvb = "model.layers.0.self_attn.kv_b_proj.weight";
        const int64_t rows = c.num_attention_heads / tp * (c.qk_nope_head_dim + c.v_head_dim);
        EXPECT_TRUE(torch::equal(shards[1].at(kvb), sd.at(kvb).narrow(0, rows, rows)));
      }
      // The vocabulary padding rows are zeros on the last rank.
      const int64_t n = padded_vocab(c.vocab_size, tp) / tp;
      const auto& last = shards.back().at("model.embed_tokens.weight");
      EXPECT_EQ(last.size(0), n);
      EXPECT_EQ(last.narrow(0, c.vocab_size - (tp - 1) * n, tp * n - c.vocab_size).abs().sum().item<double>(), 0.0);
      const StateDict back = gather_state_dict(c, shards);
      ASSERT_EQ(back.size(), sd.size());
      for (const auto& [name, t] : sd) EXPECT_TRUE(torch::equal(back.at(name), t)) << name;
    }
  }
}

}  // namespace
}  // namespace mlaforge::parallel
