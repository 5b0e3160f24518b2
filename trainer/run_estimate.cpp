// Memory and speed estimates of a training run (see trainer/run_estimate.h for every formula).
#include "trainer/run_estimate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string_view>

#include "core/error.h"
#include "model/weight_names.h"

namespace mlaforge {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr double kMiB = 1024.0 * 1024.0;

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Elements of one weight-table row at layer `layer` (per expert for expert rows): the shapes the model
// builds from the config (model/layers.cpp, model/mla_attention.cpp, model/attention.cpp).
double row_numel(const ModelConfig& c, const std::string& hf, int64_t layer) {
  const double D = static_cast<double>(c.hidden_size), I = static_cast<double>(c.intermediate_size);
  const double H = static_cast<double>(c.num_attention_heads), KV = static_cast<double>(c.num_key_value_heads);
  const double d = static_cast<double>(c.head_dim), V = static_cast<double>(c.vocab_size);
  const double E = static_cast<double>(c.num_local_experts);
  const double R = static_cast<double>(c.is_mla() ? c.kv_lora_rank_at(std::max<int64_t>(layer, 0)) : 0);
  const double r = static_cast<double>(c.qk_rope_head_dim), nope = static_cast<double>(c.qk_nope_head_dim);
  const double v = static_cast<double>(c.v_head_dim), qr = static_cast<double>(c.q_lora_rank);
  const double qk = nope + r;
  if (hf == "model.embed_tokens.weight" || hf == "lm_head.weight") return V * D;
  if (ends_with(hf, "layernorm.weight") && hf.find("self_attn.") == std::string::npos) return D;  // decoder norms
  if (hf == "model.norm.weight") return D;
  if (c.is_mla()) {
    if (ends_with(hf, "q_a_proj.weight")) return qr * D;
    if (ends_with(hf, "q_a_layernorm.weight")) return qr;
    if (ends_with(hf, "q_a_proj.bias")) return qr;
    if (ends_with(hf, "q_b_proj.weight")) return H * qk * qr;
    if (ends_with(hf, "self_attn.q_proj.weight")) return H * qk * D;
    if (ends_with(hf, "kv_a_proj_with_mqa.weight")) return (R + r) * D;
    if (ends_with(hf, "kv_a_proj_with_mqa.bias")) return R + r;
    if (ends_with(hf, "kv_a_layernorm.weight")) return R;
    if (ends_with(hf, "kv_b_proj.weight")) return H * (nope + v) * R;
    if (ends_with(hf, "o_proj.weight")) return D * H * v;
    if (ends_with(hf, "o_proj.bias")) return D;
  } else {
    if (ends_with(hf, "q_proj.weight")) return H * d * D;
    if (ends_with(hf, "k_proj.weight") || ends_with(hf, "v_proj.weight")) return KV * d * D;
    if (ends_with(hf, "o_proj.weight")) return D * H * d;
    if (ends_with(hf, "q_proj.bias")) return H * d;
    if (ends_with(hf, "k_proj.bias") || ends_with(hf, "v_proj.bias")) return KV * d;
    if (ends_with(hf, "o_proj.bias")) return D;
  }
  if (ends_with(hf, "block_sparse_moe.gate.weight")) return E * D;
  if (ends_with(hf, ".w1.weight") || ends_with(hf, ".w2.weight") || ends_with(hf, ".w3.weight")) return I * D;
  if (ends_with(hf, "gate_proj.weight") || ends_with(hf, "up_proj.weight") || ends_with(hf, "down_proj.weight"))
    return I * D;
  if (ends_with(hf, "gate_proj.bias") || ends_with(hf, "up_proj.bias")) return I;
  if (ends_with(hf, "down_proj.bias")) return D;
  fail("run estimate: no shape rule for weight ", hf, " (a weight-table row added without its estimate)");
}

// Whether a row trains under the recipe's presets; nullopt: a name pattern (counted as trained).
std::optional<bool> row_trains(const std::string& hf, const std::vector<std::string>& trainable) {
  bool any = false;
  for (const auto& item : trainable) {
    if (item == "all") return true;
    if (item == "attention") any = any || hf.find(".self_attn.") != std::string::npos;
    else if (item == "up_proj") any = any || ends_with(hf, "kv_b_proj.weight") || ends_with(hf, "q_b_proj.weight");
    else return std::nullopt;
  }
  return any;
}

struct Counts {
  ParameterCount all, trained;
  double matmul = 0;          // whole-model matrix elements a token goes through (MoE: top_k experts)
  double matmul_trained = 0;  // of which trainable
  bool upper_bound = false;
};

Counts count(const ModelConfig& c, int64_t tp, const std::vector<std::string>& trainable) {
  Counts out;
  const double experts_used = c.is_moe() ? static_cast<double>(c.num_experts_per_tok) / c.num_local_experts : 1.0;
  for (const WeightName& row : weight_table(c)) {
    const bool per_layer = row.hf.find("{i}") != std::string::npos;
    const bool per_expert = row.hf.find("{e}") != std::string::npos;
    double numel = 0;
    if (per_layer) {
      for (int64_t i = 0; i < c.num_hidden_layers; ++i) numel += row_numel(c, row.hf, i);
    } else {
      numel = row_numel(c, row.hf, -1);
    }
    if (per_expert) numel *= static_cast<double>(c.num_local_experts);
    const double share = row.split == TpSplit::replicated ? 1.0 : 1.0 / static_cast<double>(tp);
    const std::optional<bool> trains = row_trains(row.hf, trainable);
    if (!trains) out.upper_bound = true;
    const bool trained = trains.value_or(true);
    out.all.total += numel;
    out.all.rank += numel * share;
    if (trained) {
      out.trained.total += numel;
      out.trained.rank += numel * share;
    }
    // Matrices a token goes through: not the input embedding's lookup (unless it is also the tied LM
    // head), not norms and biases.
    const bool matrix = ends_with(row.hf, ".weight") && row.hf.find("norm") == std::string::npos;
    const bool lookup_only = row.hf == "model.embed_tokens.weight" && !c.tie_word_embeddings;
    if (matrix && !lookup_only) {
      const double used = numel * (per_expert ? experts_used : 1.0);
      out.matmul += used;
      if (trained) out.matmul_trained += used;
    }
  }
  return out;
}

// Causal attention FLOPs of one forward pass per token: scores and values over a mean context of s / 2.
double attention_forward_flops(const ModelConfig& c, double seq) {
  const double qk = c.is_mla() ? static_cast<double>(c.qk_nope_head_dim + c.qk_rope_head_dim) : c.head_dim;
  const double v = c.is_mla() ? static_cast<double>(c.v_head_dim) : c.head_dim;
  return 2.0 * (seq / 2.0) * static_cast<double>(c.num_attention_heads) * (qk + v) *
         static_cast<double>(c.num_hidden_layers);
}

// Values per token one decoder layer keeps for its backward (see the header's "layer" term).
double layer_values_per_token(const ModelConfig& c, double tp) {
  const double D = static_cast<double>(c.hidden_size), I = static_cast<double>(c.intermediate_size);
  const double H = static_cast<double>(c.num_attention_heads), KV = static_cast<double>(c.num_key_value_heads);
  double attention = D;  // the norm's output
  if (c.is_mla()) {
    const double qk = static_cast<double>(c.qk_nope_head_dim + c.qk_rope_head_dim);
    const double R = static_cast<double>(c.kv_lora_rank), r = static_cast<double>(c.qk_rope_head_dim);
    const double nope_v = static_cast<double>(c.qk_nope_head_dim + c.v_head_dim), v = static_cast<double>(c.v_head_dim);
    // q, rotated q, assembled keys, kv_b's output, the attention output / tp; the latent + rope key and
    // the normed latent replicated.
    attention += (3 * H * qk + H * nope_v + H * v) / tp + 2 * R + r;
    if (c.q_lora_rank > 0) attention += 2 * static_cast<double>(c.q_lora_rank);
  } else {
    const double d = static_cast<double>(c.head_dim);
    attention += (3 * H + 3 * KV) * d / tp;  // q, k, v, rotated q and k, attention output
  }
  double mlp = D;  // the norm's output
  if (c.is_moe()) {
    mlp += static_cast<double>(c.num_local_experts) + static_cast<double>(c.num_experts_per_tok) * (D + 4 * I);
  } else {
    mlp += 4 * I / tp;  // gate, up, activation, product
  }
  const double residual = 2 * D + (c.family == Family::gemma2 ? 2 * D : 0);  // sublayer outputs (+ post norms)
  return attention + mlp + residual;
}

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", bytes / kGiB);
  return buf;
}

std::string billions(double n) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  return buf;
}

}  // namespace

ParameterCount count_parameters(const ModelConfig& config, int64_t tp, const std::vector<std::string>& trainable) {
  return count(config, tp, trainable).trained;
}

RunEstimate estimate_run(const Recipe& recipe, const RunPlan& plan, const ModelConfig& student,
                         const std::optional<ModelConfig>& teacher, const EstimateAssumptions& a) {
  const bool distil = !recipe.teacher.path.empty() && recipe.teacher.kl_ratio > 0;
  MLA_CHECK(!distil || teacher, "estimate: the recipe distils from teacher.path (", recipe.teacher.path,
            "): the teacher's config is needed too");
  RunEstimate e;
  e.assumptions = a;
  e.world_size = plan.world_size;
  e.tp = plan.tp;
  e.dp = plan.dp;
  const double tp = static_cast<double>(plan.tp);
  const Counts s = count(student, plan.tp, recipe.model.trainable);
  e.student_parameters = s.all.total;
  e.rank_parameters = s.all.rank;
  e.trainable_parameters = s.trained.total;
  e.rank_trainable = s.trained.rank;
  e.trainable_upper_bound = s.upper_bound;
  std::optional<Counts> t;
  if (distil) {
    t = count(*teacher, plan.tp, {"all"});
    e.teacher_parameters = t->all.total;
    e.rank_teacher = t->all.rank;
  }

  const bool bf16 = recipe.model.dtype == "bf16";
  const double w = bf16 ? 2.0 : 4.0;
  const double z = recipe.parallel.zero == 1 ? static_cast<double>(plan.dp) : 1.0;
  const double b = static_cast<double>(plan.micro_batch_size), seq = static_cast<double>(recipe.data.max_seq_len);
  const double D = static_cast<double>(student.hidden_size), L = static_cast<double>(student.num_hidden_layers);
  const double V_r = static_cast<double>(student.vocab_size) / tp;
  const double T_r = e.rank_trainable;

  auto add = [&](const std::string& name, double bytes) { e.memory.push_back({name, bytes}); };
  add("weights", w * e.rank_parameters);
  add("gradients", (bf16 ? 6.0 : 4.0) * T_r);
  add("optimizer", (bf16 ? 12.0 : 8.0) * T_r / z);
  if (distil) add("teacher", w * e.rank_teacher);
  const double per_layer = b * seq * layer_values_per_token(student, tp) * w;
  if (recipe.model.activation_checkpointing) {
    add("checkpoints", L * b * seq * D * w);
    add("layer", 2 * per_layer);
  } else {
    add("activations", (L + 1) * per_layer);
  }
  double scores = 3 * b * seq * seq;
  if (student.attn_logit_softcapping)
    scores += 8 * b * (static_cast<double>(student.num_attention_heads) / tp) * seq * seq;
  add("attention", scores);
  const double loss_buffers = (distil ? 8.0 : 5.0) * std::min(256 * kMiB, b * seq * V_r * 4);
  add("loss", loss_buffers + (distil ? b * seq * V_r * w : 0.0));
  if (plan.dp > 1) add("buckets", 2 * recipe.parallel.bucket_mb * kMiB);
  add("overhead", a.overhead_gib * kGiB);
  for (const auto& m : e.memory) e.steady_bytes += m.bytes;
  e.startup_bytes = 4 * e.rank_parameters + (bf16 ? 4 * T_r / z : 0) + (distil ? w * e.rank_teacher : 0) +
                    a.overhead_gib * kGiB;
  e.peak_bytes = std::max(e.steady_bytes, e.startup_bytes);

  e.flops_per_token = 4 * s.matmul + 2 * s.matmul_trained + 3 * attention_forward_flops(student, seq);
  if (distil) e.flops_per_token += 2 * t->matmul + attention_forward_flops(*teacher, seq);
  e.tokens_per_second = static_cast<double>(plan.world_size) * a.mfu * a.peak_tflops * 1e12 / e.flops_per_token;
  e.step_seconds = static_cast<double>(plan.global_batch_size) * seq / e.tokens_per_second;
  if (plan.total_steps) e.run_hours = e.step_seconds * static_cast<double>(*plan.total_steps) / 3600.0;
  return e;
}

bool RunEstimate::fits() const { return peak_bytes <= assumptions.gpu_memory_gib * kGiB; }

std::vector<std::string> RunEstimate::describe() const {
  std::vector<std::string> lines;
  char buf[256];
  std::snprintf(buf, sizeof buf, "parameters: student %s (%s per GPU, %s%s trainable per GPU)%s",
                billions(student_parameters).c_str(), billions(rank_parameters).c_str(), billions(rank_trainable).c_str(),
                trainable_upper_bound ? " (patterns counted as all)" : "",
                teacher_parameters > 0 ? (", teacher " + billions(teacher_parameters) + " (" + billions(rank_teacher) +
                                          " per GPU)").c_str()
                                       : "");
  lines.push_back(buf);
  std::string terms;
  for (const auto& m : memory) terms += (terms.empty() ? "" : " + ") + m.name + " " + gib(m.bytes);
  lines.push_back("memory per GPU (estimate): " + gib(steady_bytes) + " GiB = " + terms);
  lines.push_back("start-up peak (student in fp32 before the bf16 cast): " + gib(startup_bytes) + " GiB; peak " +
                  gib(peak_bytes) + " GiB of " + gib(assumptions.gpu_memory_gib * kGiB) + " GiB: " +
                  (fits() ? "fits" : "DOES NOT FIT"));
  std::snprintf(buf, sizeof buf,
                "throughput (estimate): %.0f tokens/s (%.0f per GPU) = %lld GPUs x %.0f%% MFU x %.0f TFLOP/s / %.3g "
                "FLOPs per token",
                tokens_per_second, tokens_per_second / static_cast<double>(world_size),
                static_cast<long long>(world_size), assumptions.mfu * 100, assumptions.peak_tflops, flops_per_token);
  lines.push_back(buf);
  if (run_hours) {
    std::snprintf(buf, sizeof buf, "step %.1f s (full sequences), run %.1f h", step_seconds, *run_hours);
  } else {
    std::snprintf(buf, sizeof buf, "step %.1f s (full sequences); run length known once the data is read", step_seconds);
  }
  lines.push_back(buf);
  return lines;
}

nlohmann::json RunEstimate::to_json() const {
  nlohmann::json memory_json = nlohmann::json::object();
  for (const auto& m : memory) memory_json[m.name + "_gib"] = m.bytes / kGiB;
  nlohmann::json j = {{"world_size", world_size},
                      {"tp", tp},
                      {"dp", dp},
                      {"student_parameters", student_parameters},
                      {"rank_parameters", rank_parameters},
                      {"trainable_parameters", trainable_parameters},
                      {"rank_trainable", rank_trainable},
                      {"teacher_parameters", teacher_parameters},
                      {"rank_teacher", rank_teacher},
                      {"memory", memory_json},
                      {"memory_gib", steady_bytes / kGiB},
                      {"startup_gib", startup_bytes / kGiB},
                      {"peak_gib", peak_bytes / kGiB},
                      {"gpu_memory_gib", assumptions.gpu_memory_gib},
                      {"fits", fits()},
                      {"flops_per_token", flops_per_token},
                      {"tokens_per_second", tokens_per_second},
                      {"tokens_per_second_per_gpu", tokens_per_second / static_cast<double>(world_size)},
                      {"mfu", assumptions.mfu},
                      {"peak_tflops", assumptions.peak_tflops},
                      {"step_seconds", step_seconds}};
  if (run_hours) j["run_hours"] = *run_hours;
  return j;
}

}  // namespace mlaforge
