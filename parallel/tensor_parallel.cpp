#include "parallel/tensor_parallel.h"

#include <map>

#include <algorithm>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "model/weight_names.h"
#include "trainer/activation_checkpoint.h"

namespace mlaforge::parallel {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The communicator travels through saved_data as an integer (IValue has no raw-pointer type).
void save_comm(AutogradContext* ctx, Communicator* comm) {
  ctx->saved_data["comm"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(comm));
}
Communicator* load_comm(AutogradContext* ctx) {
  return reinterpret_cast<Communicator*>(static_cast<intptr_t>(ctx->saved_data["comm"].toInt()));
}

torch::Tensor all_reduced(const torch::Tensor& x, Communicator& comm, ReduceOp op = ReduceOp::sum) {
  torch::Tensor out = x.contiguous().clone();  // never reduce into a tensor autograd still holds
  comm.all_reduce(out, op);
  return out;
}

// f: identity forward, all-reduce backward.
struct CopyToTp : public torch::autograd::Function<CopyToTp> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, Communicator* comm, bool reduce) {
    save_comm(ctx, comm);
    ctx->saved_data["reduce"] = reduce;
    return x;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    torch::Tensor g = grad[0];
    if (ctx->saved_data["reduce"].toBool()) g = all_reduced(g, *load_comm(ctx));
    return {g, torch::Tensor(), torch::Tensor()};
  }
};

// g: all-reduce forward, identity backward.
struct ReduceFromTp : public torch::autograd::Function<ReduceFromTp> {
  static torch::Tensor forward(AutogradContext*, const torch::Tensor& x, Communicator* comm) {
    return all_reduced(x, *comm);
  }
  static variable_list backward(AutogradContext*, variable_list grad) { return {grad[0], torch::Tensor()}; }
};

// Cross-entropy sum over vocabulary-parallel logits (n, Vl) float32. Saves the local softmax (n, Vl).
struct VocabParallelCE : public torch::autograd::Function<VocabParallelCE> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& targets,
                               int64_t vocab_start, int64_t vocab, Communicator* comm) {
    const int64_t Vl = logits.size(1);
    auto z = logits.to(torch::kFloat32);  // (n, Vl)
    const int64_t real = std::clamp<int64_t>(vocab - vocab_start, 0, Vl);  // columns that are real ids
    if (real < Vl) {
      z = z.clone();
      z.narrow(1, real, Vl - real).fill_(-std::numeric_limits<float>::infinity());
    }
    // Global max per row (for stability only: no gradient flows through it).
    torch::Tensor m = real > 0 ? std::get<0>(z.narrow(1, 0, real).max(1))
                               : torch::full({z.size(0)}, -std::numeric_limits<float>::infinity(), z.options());
    comm->all_reduce(m, ReduceOp::max);                 // (n)
    auto e = torch::exp(z - m.unsqueeze(1));            // (n, Vl), padding columns 0
    torch::Tensor s = e.sum(1);
    comm->all_reduce(s);                                 // (n): global sum of exp
    const auto valid = targets != kIgnoreIndex;          // (n)
    const auto local = targets - vocab_start;
    const auto mine = valid & (local >= 0) & (local < real);
    const auto idx = local.masked_fill(mine.logical_not(), 0).unsqueeze(1);  // (n, 1)
    torch::Tensor t = z.gather(1, idx).squeeze(1).masked_fill(mine.logical_not(), 0.0);
    comm->all_reduce(t);                                 // (n): the target logit, from its owning rank
    auto per_row = (torch::log(s) + m - t).masked_fill(valid.logical_not(), 0.0);
    auto softmax = e / s.unsqueeze(1);
    ctx->save_for_backward({softmax, idx, mine, valid});
    ctx->saved_data["dtype"] = static_cast<int64_t>(logits.scalar_type());
    return per_row.sum();
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto saved = ctx->get_saved_variables();
    const auto& softmax = saved[0];
    const auto& idx = saved[1];
    const auto& mine = saved[2];
    const auto& valid = saved[3];
    // d(sum CE)/dz = softmax - onehot(target), for valid rows only; the one-hot only on the owning rank.
    auto g = softmax.clone();
    g.scatter_add_(1, idx, -mine.to(g.dtype()).unsqueeze(1));
    g.mul_(valid.to(g.dtype()).unsqueeze(1));
    g = g * grad[0];
    g = g.to(static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt()));
    return {g, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// Global log-softmax of vocabulary-parallel rows x (n, Vl) float32 whose first `real` columns are real ids
// (the others padding): (log-probabilities with -inf padding, probabilities with 0 padding).
std::pair<torch::Tensor, torch::Tensor> vocab_parallel_log_softmax(torch::Tensor x, int64_t real, Communicator* comm) {
  const int64_t Vl = x.size(1);
  if (real < Vl) {
    x = x.clone();
    x.narrow(1, real, Vl - real).fill_(-std::numeric_limits<float>::infinity());
  }
  torch::Tensor m = real > 0 ? std::get<0>(x.narrow(1, 0, real).max(1))
                             : torch::full({x.size(0)}, -std::numeric_limits<float>::infinity(), x.options());
  comm->all_reduce(m, ReduceOp::max);  // (n)
  torch::Tensor s = torch::exp(x - m.unsqueeze(1)).sum(1);
  comm->all_reduce(s);  // (n)
  torch::Tensor logp = x - (m + torch::log(s)).unsqueeze(1);
  return {logp, torch::exp(logp)};
}

// tau^2 * sum over rows of KL(softmax(teacher / tau) || softmax(student / tau)) over vocabulary-parallel
// logits (n, Vl). Gradient w.r.t. the student logits: tau * (p_student - p_teacher).
struct VocabParallelKL : public torch::autograd::Function<VocabParallelKL> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& teacher,
                               int64_t vocab_start, int64_t vocab, double tau, Communicator* comm) {
    const int64_t real = std::clamp<int64_t>(vocab - vocab_start, 0, logits.size(1));
    auto [logp_s, p_s] = vocab_parallel_log_softmax(logits.to(torch::kFloat32) / tau, real, comm);
    auto [logp_t, p_t] = vocab_parallel_log_softmax(teacher.to(torch::kFloat32) / tau, real, comm);
    // Padding columns are excluded (0 * (-inf - -inf) would be NaN).
    torch::Tensor per_row = (p_t.narrow(1, 0, real) * (logp_t.narrow(1, 0, real) - logp_s.narrow(1, 0, real))).sum(1);
    comm->all_reduce(per_row);  // (n)
    ctx->save_for_backward({p_s, p_t});
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["dtype"] = static_cast<int64_t>(logits.scalar_type());
    return per_row.sum() * (tau * tau);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto saved = ctx->get_saved_variables();
    const double tau = ctx->saved_data["tau"].toDouble();
    auto g = (saved[0] - saved[1]) * (grad[0] * tau);
    g = g.to(static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt()));
    return {g, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

class Hooks : public TensorParallelHooks {
 public:
  Hooks(const ModelConfig& config, Communicator& comm, TpOptions options)
      : comm_(&comm), options_(std::move(options)) {
    const int64_t local = padded_vocab(config.vocab_size, comm.size()) / comm.size();
    vocab_start_ = comm.rank() * local;
    vocab_local_ = local;
  }
  torch::Tensor copy_to_tp(const torch::Tensor& x, TpPoint point) override {
    const bool skip = std::find(options_.skip_backward_reduce.begin(), options_.skip_backward_reduce.end(),
                                point) != options_.skip_backward_reduce.end();
    return CopyToTp::apply(x, comm_, !skip);
  }
  torch::Tensor reduce_from_tp(const torch::Tensor& x, TpPoint) override { return ReduceFromTp::apply(x, comm_); }
  torch::Tensor embed(const torch::Tensor& weight, const torch::Tensor& tokens) override {
    MLA_CHECK(weight.size(0) == vocab_local_, "tensor parallel embedding: the model holds ", weight.size(0),
              " vocabulary rows, the plan ", vocab_local_);
    const auto local = tokens - vocab_start_;
    const auto mine = (local >= 0) & (local < vocab_local_);  // (B, T)
    auto rows = torch::embedding(weight, local.masked_fill(mine.logical_not(), 0));  // (B, T, D)
    rows = rows * mine.unsqueeze(-1).to(rows.dtype());  // ids of other ranks: zeros (and no gradient)
    return ReduceFromTp::apply(rows, comm_);
  }

 private:
  Communicator* comm_;
  TpOptions options_;
  int64_t vocab_start_ = 0, vocab_local_ = 0;
};

// What must divide by tp, with the config field that says so.
std::vector<std::pair<std::string, int64_t>> divisibility(const ModelConfig& c) {
  std::vector<std::pair<std::string, int64_t>> out = {{"num_attention_heads", c.num_attention_heads}};
  if (!c.is_mla()) out.push_back({"num_key_value_heads", c.num_key_value_heads});
  if (!c.is_moe()) out.push_back({"intermediate_size", c.intermediate_size});
  return out;
}

}  // namespace

int64_t padded_vocab(int64_t vocab, int tp) { return (vocab + tp - 1) / tp * tp; }

std::vector<int> valid_tp_sizes(const ModelConfig& c) {
  std::vector<int> out;
  for (int tp = 1; tp <= c.num_attention_heads; ++tp) {
    bool ok = true;
    for (const auto& [name, value] : divisibility(c)) ok = ok && value % tp == 0;
    if (ok) out.push_back(tp);
  }
  return out;
}

ModelConfig tp_rank_config(const ModelConfig& c, int tp) {
  MLA_CHECK(tp >= 1, "parallel.tp must be >= 1, got ", tp);
  for (const auto& [name, value] : divisibility(c)) {
    if (value % tp == 0) continue;
    std::ostringstream valid;
    for (int v : valid_tp_sizes(c)) valid << (valid.tellp() > 0 ? ", " : "") << v;
    fail("parallel.tp = ", tp, " does not divide the model's ", name, " (", value, "); valid tp values for this ",
         family_name(c.family), " model: ", valid.str());
  }
  if (tp > 1) {
    // A row-parallel bias would be added by every rank before the sum (tp times): not supported yet.
    MLA_CHECK(!c.o_proj_bias && !c.mlp_bias && !(c.is_mla() && c.attention_bias),
              "tensor parallelism does not support biases on row-parallel layers yet (o_proj / down_proj "
              "bias: o_proj_bias, mlp_bias, or MLA attention_bias); use parallel.tp = 1");
  }
  ModelConfig r = c;
  r.num_attention_heads = c.num_attention_heads / tp;
  r.num_key_value_heads = c.num_key_value_heads / tp;
  if (!c.is_moe()) r.intermediate_size = c.intermediate_size / tp;
  r.vocab_size = padded_vocab(c.vocab_size, tp) / tp;
  return r;
}

namespace {

// This rank's slice of one full tensor (see model/weight_names.h for the splits).
torch::Tensor shard_tensor(const ModelConfig& c, const WeightName& w, const torch::Tensor& t, int tp, int rank) {
  switch (w.split) {
    case TpSplit::replicated: return t;
    case TpSplit::column:
      // Head-major row blocks (q/k/v, q_b, kv_b) or the intermediate: a contiguous slice keeps whole heads.
      MLA_CHECK(t.size(0) % tp == 0, "tensor parallel: '", w.hf, "' has ", t.size(0), " rows, not divisible by ", tp);
      return t.chunk(tp, 0)[rank].contiguous();
    case TpSplit::row:
      MLA_CHECK(t.dim() == 2 && t.size(1) % tp == 0, "tensor parallel: '", w.hf, "' ", t.sizes(),
                ": input features not divisible by ", tp);
      return t.chunk(tp, 1)[rank].contiguous();
    case TpSplit::vocab: {
      const int64_t V = t.size(0), Vp = padded_vocab(V, tp), n = Vp / tp;
      MLA_CHECK(V == c.vocab_size, "tensor parallel: '", w.hf, "' has ", V, " rows, the config's vocabulary ",
                c.vocab_size);
      auto shard = torch::zeros({n, t.size(1)}, t.options());  // padding rows are zeros
      const int64_t start = rank * n, have = std::clamp<int64_t>(V - start, 0, n);
      if (have > 0) shard.narrow(0, 0, have).copy_(t.narrow(0, start, have));
      return shard;
    }
  }
  fail("internal: unknown tensor-parallel split of '", w.hf, "'");
}

}  // namespace

StateDict shard_state_dict(const ModelConfig& c, const StateDict& full, int tp, int rank) {
  MLA_CHECK(tp >= 1 && rank >= 0 && rank < tp, "shard_state_dict: rank ", rank, " outside [0, ", tp, ")");
  tp_rank_config(c, tp);  // validates
  StateDict out;
  for (const WeightName& w : expand_weight_names(c)) {
    auto it = full.find(w.hf);
    MLA_CHECK(it != full.end(), "shard_state_dict: missing tensor '", w.hf, "'");
    out[w.hf] = shard_tensor(c, w, it->second, tp, rank);
  }
  return out;
}

WeightTransform tp_weight_slicer(const ModelConfig& c, int tp, int rank) {
  MLA_CHECK(tp >= 1 && rank >= 0 && rank < tp, "tp_weight_slicer: rank ", rank, " outside [0, ", tp, ")");
  tp_rank_config(c, tp);  // validates
  auto table = std::make_shared<std::map<std::string, WeightName>>();
  for (const WeightName& w : expand_weight_names(c)) (*table)[w.hf] = w;
  return [c, table, tp, rank](const std::string& hf, const torch::Tensor& t) {
    const auto it = table->find(hf);
    MLA_CHECK(it != table->end(), "tensor parallel: '", hf, "' is not in the weight table");
    return shard_tensor(c, it->second, t, tp, rank);
  };
}

GlobalRegion tp_global_region(const ModelConfig& c, TpSplit split, c10::IntArrayRef local_shape, int tp, int rank) {
  GlobalRegion r;
  r.global_shape = local_shape.vec();
  r.offsets.assign(local_shape.size(), 0);
  r.sizes = local_shape.vec();
  auto split_dim = [&](size_t d) {
    MLA_CHECK(local_shape.size() > d, "tp_global_region: a ", tp_split_name(split), " tensor of shape ", local_shape);
    r.global_shape[d] = local_shape[d] * tp;
    r.offsets[d] = local_shape[d] * rank;
  };
  switch (split) {
    case TpSplit::replicated: break;
    case TpSplit::column: split_dim(0); break;
    case TpSplit::row: split_dim(1); break;
    case TpSplit::vocab: {
      split_dim(0);
      r.global_shape[0] = c.vocab_size;
      r.sizes[0] = std::clamp<int64_t>(c.vocab_size - r.offsets[0], 0, local_shape[0]);
      r.offsets[0] = std::min<int64_t>(r.offsets[0], c.vocab_size);
      break;
    }
  }
  return r;
}

StateDict gather_state_dict(const ModelConfig& c, const std::vector<StateDict>& shards) {
  const int tp = static_cast<int>(shards.size());
  MLA_CHECK(tp >= 1, "gather_state_dict: no shards");
  StateDict out;
  for (const WeightName& w : expand_weight_names(c)) {
    std::vector<torch::Tensor> parts;
    for (const StateDict& s : shards) {
      auto it = s.find(w.hf);
      MLA_CHECK(it != s.end(), "gather_state_dict: a shard lacks '", w.hf, "'");
      parts.push_back(it->second);
    }
    switch (w.split) {
      case TpSplit::replicated: out[w.hf] = parts[0]; break;
      case TpSplit::column: out[w.hf] = torch::cat(parts, 0); break;
      case TpSplit::row: out[w.hf] = torch::cat(parts, 1); break;
      case TpSplit::vocab: out[w.hf] = torch::cat(parts, 0).narrow(0, 0, c.vocab_size).contiguous(); break;
    }
  }
  return out;
}

StateDict gather_state_dict(const ModelConfig& c, const StateDict& local, Communicator& tp) {
  const int n = tp.size();
  std::vector<StateDict> shards(static_cast<size_t>(n));
  for (const WeightName& w : expand_weight_names(c)) {
    auto it = local.find(w.hf);
    MLA_CHECK(it != local.end(), "gather_state_dict: the local shard lacks '", w.hf, "'");
    const torch::Tensor mine = it->second.contiguous();
    if (w.split == TpSplit::replicated) {
      for (auto& s : shards) s[w.hf] = mine;
      continue;
    }
    torch::Tensor all = torch::empty({n * mine.numel()}, mine.options());
    tp.all_gather(mine.reshape({-1}), all);
    auto pieces = all.view({n, mine.numel()});
    for (int r = 0; r < n; ++r) shards[static_cast<size_t>(r)][w.hf] = pieces[r].view(mine.sizes());
  }
  return gather_state_dict(c, shards);
}

std::shared_ptr<TensorParallelHooks> make_tp_hooks(const ModelConfig& config, Communicator& tp, TpOptions options) {
  return std::make_shared<Hooks>(config, tp, std::move(options));
}

torch::Tensor vocab_parallel_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets,
                                           int64_t vocab_start, int64_t vocab, Communicator& tp) {
  MLA_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
            "vocab_parallel_cross_entropy: logits (n, V/tp) and targets (n), got ", logits.sizes(), " and ",
            targets.sizes());
  return VocabParallelCE::apply(logits, targets, vocab_start, vocab, &tp);
}

LossSums vocab_parallel_loss_sums(DecoderImpl& model, const torch::Tensor& hidden, const torch::Tensor& targets,
                                  int64_t full_vocab, Communicator& tp, const LossOptions& options,
                                  const torch::Tensor& teacher_logits) {
  MLA_CHECK(model.tp_hooks() != nullptr, "vocab_parallel_loss_sums: the model has no tensor-parallel hooks");
  MLA_CHECK(hidden.dim() == 3, "loss: hidden states must be (batch, time, dim), got ", hidden.sizes());
  const int64_t B = hidden.size(0), T = hidden.size(1), D = hidden.size(2), N = B * T;
  MLA_CHECK(targets.dim() == 2 && targets.size(0) == B && targets.size(1) == T, "loss: targets must be (", B, ", ",
            T, "), got ", targets.sizes());
  const int64_t Vl = model.config().vocab_size, start = tp.rank() * Vl;
  const auto tgt = targets.reshape({N}).to(hidden.device());
  const auto ce_mask = tgt != kIgnoreIndex;
  MLA_CHECK(!((ce_mask & ((tgt < 0) | (tgt >= full_vocab))).any().item<bool>()),
            "loss: a target id is outside the vocabulary [0, ", full_vocab, ") and is not the ignore index -100");
  const auto rows = ce_mask.nonzero().flatten();  // (M)
  const int64_t M = rows.size(0);
  LossSums sums;
  sums.ce_tokens = M;
  const bool distill = teacher_logits.defined();
  if (distill) {
    MLA_CHECK(teacher_logits.dim() == 3 && teacher_logits.size(0) == B && teacher_logits.size(1) == T &&
                  teacher_logits.size(2) == Vl,
              "loss: the teacher's logits must be (", B, ", ", T, ", ", Vl, ") on this TP rank, got ", teacher_logits.sizes());
    MLA_CHECK(options.temperature > 0, "loss: temperature must be > 0, got ", options.temperature);
    sums.kl_tokens = M;
  }
  const auto h = hidden.reshape({N, D});
  if (M == 0) {
    sums.ce_sum = h.narrow(0, 0, 0).sum().to(torch::kFloat32);
    if (distill) sums.kl_sum = sums.ce_sum;
    return sums;
  }
  int64_t chunk = options.chunk_tokens;
  if (chunk < 0) chunk = std::max<int64_t>(1, (int64_t{256} << 20) / (4 * Vl));
  const auto h_sel = h.index_select(0, rows);
  const auto t_sel = tgt.index_select(0, rows);
  const auto teacher_sel = distill ? teacher_logits.reshape({N, Vl}).to(hidden.device()).index_select(0, rows)
                                   : torch::Tensor();  // (M, Vl)
  DecoderImpl* m = &model;
  Communicator* comm = &tp;
  const double tau = options.temperature;
  // {CE sum, KL sum (distillation only)} of a chunk of rows; the student's logits are computed once.
  auto losses = [m, comm, start, full_vocab, tau](const torch::Tensor& hh, const torch::Tensor& t,
                                                   const torch::Tensor& teacher) {
    const torch::Tensor z = m->logits_from_hidden(hh);
    std::vector<torch::Tensor> out = {VocabParallelCE::apply(z, t, start, full_vocab, comm)};
    if (teacher.defined()) out.push_back(VocabParallelKL::apply(z, teacher, start, full_vocab, tau, comm));
    return out;
  };
  auto add = [&](const std::vector<torch::Tensor>& out) {
    sums.ce_sum = sums.ce_sum.defined() ? sums.ce_sum + out[0] : out[0];
    if (out.size() > 1) sums.kl_sum = sums.kl_sum.defined() ? sums.kl_sum + out[1] : out[1];
  };
  auto teacher_rows = [&](int64_t s, int64_t n) { return distill ? teacher_sel.narrow(0, s, n) : torch::Tensor(); };
  if (chunk == 0 || chunk >= M || !torch::GradMode::is_enabled()) {
    const int64_t step = (chunk == 0 || chunk >= M) ? M : chunk;
    for (int64_t s = 0; s < M; s += step) {
      const int64_t n = std::min(step, M - s);
      add(losses(h_sel.narrow(0, s, n), t_sel.narrow(0, s, n), teacher_rows(s, n)));
    }
    return sums;
  }
  // Chunked with recomputation (trainer/activation_checkpoint.h); every rank recomputes the same chunks in
  // the same order, so the collectives inside stay matched.
  const std::vector<torch::Tensor> params = {model.lm_head ? model.lm_head->weight : model.embed->weight};
  int64_t s = 0;
  for (const auto& piece : h_sel.split(chunk, 0)) {
    const auto t_c = t_sel.narrow(0, s, piece.size(0));
    const auto teacher_c = teacher_rows(s, piece.size(0));
    CheckpointFn fn = [losses, t_c, teacher_c](const std::vector<torch::Tensor>& in) { return losses(in[0], t_c, teacher_c); };
    add(checkpoint(fn, {piece}, params));
    s += piece.size(0);
  }
  return sums;
}

}  // namespace mlaforge::parallel
