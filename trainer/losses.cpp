#include "trainer/losses.h"

#include <algorithm>

#include "core/error.h"
#include "trainer/activation_checkpoint.h"

namespace mlaforge {
namespace {

namespace F = torch::nn::functional;

constexpr int64_t kAutoChunkBytes = int64_t{256} << 20;  // one float32 (rows, V) buffer

struct ChunkSums {
  torch::Tensor ce, kl;  // () float32; kl undefined without teacher
};

// The sums over n rows: logits (n, V) any float dtype, targets (n) int64 with -100, teacher (n, V) or
// undefined, kl_mask (n) bool (with a teacher). Everything in float32.
ChunkSums chunk_sums(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& teacher,
                     const torch::Tensor& kl_mask, double tau) {
  ChunkSums out;
  const auto z = logits.to(torch::kFloat32);
  const auto logp = torch::log_softmax(z, -1);  // (n, V)
  // What F.cross_entropy(reduction="sum", ignore_index=-100) does: log_softmax, then nll_loss.
  out.ce = F::nll_loss(logp, targets, F::NLLLossFuncOptions().ignore_index(kIgnoreIndex).reduction(torch::kSum));
  if (teacher.defined()) {
    const auto student = tau == 1.0 ? logp : torch::log_softmax(z / tau, -1);
    torch::Tensor t = teacher.to(torch::kFloat32);
    if (tau != 1.0) t = t / tau;
    const auto log_teacher = torch::log_softmax(t, -1);
    // F.kl_div(student, log_teacher, log_target=True): exp(lt) * (lt - ls), elementwise.
    const auto rows = torch::kl_div(student, log_teacher, at::Reduction::None, /*log_target=*/true).sum(-1);  // (n)
    out.kl = rows.masked_fill(kl_mask.logical_not(), 0.0).sum() * (tau * tau);
  }
  return out;
}

void check_inputs(const torch::Tensor& targets, const torch::Tensor& teacher, const torch::Tensor& kl_mask,
                  int64_t B, int64_t T, int64_t vocab, double tau) {
  MLA_CHECK(targets.dim() == 2 && targets.size(0) == B && targets.size(1) == T, "loss: targets must be (", B, ", ",
            T, "), got ", targets.sizes());
  MLA_CHECK(targets.scalar_type() == torch::kInt64, "loss: targets must be int64, got ",
            c10::toString(targets.scalar_type()));
  if (vocab > 0 && targets.numel() > 0) {
    const auto bad = (targets != kIgnoreIndex) & ((targets < 0) | (targets >= vocab));
    MLA_CHECK(!bad.any().item<bool>(), "loss: a target id is outside the vocabulary [0, ", vocab,
              ") and is not the ignore index -100");
  }
  if (teacher.defined()) {
    MLA_CHECK(teacher.dim() == 3 && teacher.size(0) == B && teacher.size(1) == T &&
                  (vocab <= 0 || teacher.size(2) == vocab),
              "loss: teacher logits must be (", B, ", ", T, ", ", vocab > 0 ? std::to_string(vocab) : "V",
              "), got ", teacher.sizes());
    MLA_CHECK(teacher.is_floating_point(), "loss: teacher logits must be floating point");
    MLA_CHECK(tau > 0, "loss: distillation temperature must be > 0, got ", tau);
  }
  if (kl_mask.defined()) {
    MLA_CHECK(teacher.defined(), "loss: a KL mask was given without teacher logits");
    MLA_CHECK(kl_mask.dim() == 2 && kl_mask.size(0) == B && kl_mask.size(1) == T, "loss: kl_mask must be (", B,
              ", ", T, "), got ", kl_mask.sizes());
  }
}

}  // namespace

torch::Tensor shift_labels(const torch::Tensor& labels) {
  MLA_CHECK(labels.dim() == 2, "shift_labels: labels must be (batch, time), got ", labels.sizes());
  auto out = torch::full_like(labels, kIgnoreIndex);
  const int64_t T = labels.size(1);
  if (T > 1) out.narrow(1, 0, T - 1).copy_(labels.narrow(1, 1, T - 1));
  return out;
}

LogitsHead model_head(DecoderImpl& model) {
  LogitsHead head;
  DecoderImpl* m = &model;
  head.fn = [m](const torch::Tensor& h) { return m->logits_from_hidden(h); };
  head.params = {model.lm_head ? model.lm_head->weight : model.embed->weight};
  head.vocab = model.config().vocab_size;
  return head;
}

LossSums lm_loss_sums(const LogitsHead& head, const torch::Tensor& hidden, const torch::Tensor& targets,
                      const torch::Tensor& teacher_logits, const torch::Tensor& kl_mask, const LossOptions& options) {
  MLA_CHECK(hidden.dim() == 3, "loss: hidden states must be (batch, time, dim), got ", hidden.sizes());
  const int64_t B = hidden.size(0), T = hidden.size(1), D = hidden.size(2), N = B * T;
  const double tau = options.temperature;
  check_inputs(targets, teacher_logits, kl_mask, B, T, head.vocab, tau);
  const bool distill = teacher_logits.defined();

  const auto device = hidden.device();
  const auto h = hidden.reshape({N, D});
  const auto tgt = targets.reshape({N}).to(device);
  const auto ce_mask = tgt != kIgnoreIndex;
  torch::Tensor klm, teacher;
  if (distill) {
    klm = kl_mask.defined() ? kl_mask.reshape({N}).to(device, torch::kBool) : ce_mask;
    teacher = teacher_logits.reshape({N, teacher_logits.size(2)}).to(device);
  }
  // Only rows with a CE or KL term are computed.
  const auto rows = (distill ? (ce_mask | klm) : ce_mask).nonzero().flatten();  // (M)
  const int64_t M = rows.size(0);

  LossSums sums;
  sums.ce_tokens = ce_mask.sum().item<int64_t>();
  sums.kl_tokens = distill ? klm.sum().item<int64_t>() : 0;
  if (M == 0) {
    // Zero, but connected to the graph so that backward still works (and every parameter gets a gradient).
    const auto zero = h.narrow(0, 0, 0).sum().to(torch::kFloat32);
    sums.ce_sum = zero;
    if (distill) sums.kl_sum = zero.clone();
    return sums;
  }

  int64_t chunk = options.chunk_tokens;
  if (chunk < 0) {
    const int64_t V = head.vocab > 0 ? head.vocab : (distill ? teacher.size(1) : 0);
    MLA_CHECK(V > 0, "loss: automatic chunking needs the vocabulary size (LogitsHead::vocab)");
    chunk = std::max<int64_t>(1, kAutoChunkBytes / (4 * V));
  }
  const auto h_sel = h.index_select(0, rows);    // (M, D)
  const auto t_sel = tgt.index_select(0, rows);  // (M)
  const auto klm_sel = distill ? klm.index_select(0, rows) : torch::Tensor();

  if (chunk == 0 || chunk >= M || !torch::GradMode::is_enabled()) {
    // One piece (or no backward to save memory for: evaluate chunk by chunk without recomputation).
    const int64_t step = (chunk == 0 || chunk >= M) ? M : chunk;
    for (int64_t s = 0; s < M; s += step) {
      const int64_t n = std::min(step, M - s);
      const auto teacher_rows = distill ? teacher.index_select(0, rows.narrow(0, s, n)) : torch::Tensor();
      ChunkSums c = chunk_sums(head.fn(h_sel.narrow(0, s, n)), t_sel.narrow(0, s, n), teacher_rows,
                               distill ? klm_sel.narrow(0, s, n) : torch::Tensor(), tau);
      sums.ce_sum = sums.ce_sum.defined() ? sums.ce_sum + c.ce : c.ce;
      if (distill) sums.kl_sum = sums.kl_sum.defined() ? sums.kl_sum + c.kl : c.kl;
    }
    return sums;
  }

  // Chunked with recomputation: split's backward concatenates the chunks' hidden gradients.
  const auto pieces = h_sel.split(chunk, 0);
  int64_t start = 0;
  for (const auto& piece : pieces) {
    const int64_t n = piece.size(0);
    const auto t_c = t_sel.narrow(0, start, n);
    const auto rows_c = rows.narrow(0, start, n);
    const auto klm_c = distill ? klm_sel.narrow(0, start, n) : torch::Tensor();
    // The teacher rows are gathered inside (and again in the recompute) rather than captured, so no
    // per-chunk copy of teacher logits outlives its chunk.
    const auto head_fn = head.fn;
    CheckpointFn fn = [head_fn, t_c, rows_c, klm_c, teacher, tau](const std::vector<torch::Tensor>& in) {
      const auto teacher_rows = teacher.defined() ? teacher.index_select(0, rows_c) : torch::Tensor();
      ChunkSums c = chunk_sums(head_fn(in[0]), t_c, teacher_rows, klm_c, tau);
      return c.kl.defined() ? std::vector<torch::Tensor>{c.ce, c.kl} : std::vector<torch::Tensor>{c.ce};
    };
    auto out = checkpoint(fn, {piece}, head.params);
    sums.ce_sum = sums.ce_sum.defined() ? sums.ce_sum + out[0] : out[0];
    if (distill) sums.kl_sum = sums.kl_sum.defined() ? sums.kl_sum + out[1] : out[1];
    start += n;
  }
  return sums;
}

LossSums loss_sums_from_logits(const torch::Tensor& logits, const torch::Tensor& targets,
                               const torch::Tensor& teacher_logits, const torch::Tensor& kl_mask, double temperature) {
  MLA_CHECK(logits.dim() == 3, "loss: logits must be (batch, time, vocab), got ", logits.sizes());
  const int64_t B = logits.size(0), T = logits.size(1), V = logits.size(2), N = B * T;
  check_inputs(targets, teacher_logits, kl_mask, B, T, V, temperature);
  const auto tgt = targets.reshape({N}).to(logits.device());
  const auto ce_mask = tgt != kIgnoreIndex;
  LossSums sums;
  sums.ce_tokens = ce_mask.sum().item<int64_t>();
  torch::Tensor teacher, klm;
  if (teacher_logits.defined()) {
    teacher = teacher_logits.reshape({N, V}).to(logits.device());
    klm = kl_mask.defined() ? kl_mask.reshape({N}).to(logits.device(), torch::kBool) : ce_mask;
    sums.kl_tokens = klm.sum().item<int64_t>();
  }
  ChunkSums c = chunk_sums(logits.reshape({N, V}), tgt, teacher, klm, temperature);
  sums.ce_sum = c.ce;
  sums.kl_sum = c.kl;
  return sums;
}

StepTokens count_tokens(const torch::Tensor& targets, bool distill, const torch::Tensor& kl_mask) {
  StepTokens t;
  const auto trained = targets != kIgnoreIndex;
  t.ce = trained.sum().item<int64_t>();
  if (distill) t.kl = kl_mask.defined() ? kl_mask.to(torch::kBool).sum().item<int64_t>() : t.ce;
  return t;
}

StepTokens& operator+=(StepTokens& a, const StepTokens& b) {
  a.ce += b.ce;
  a.kl += b.kl;
  return a;
}

torch::Tensor micro_batch_loss(const LossSums& sums, const StepTokens& step, double alpha) {
  MLA_CHECK(alpha >= 0 && alpha <= 1, "loss: distillation weight alpha must be in [0, 1], got ", alpha);
  torch::Tensor loss;
  if (alpha < 1) {
    MLA_CHECK(step.ce > 0, "loss: the step has no trained tokens (every target is -100)");
    // sum / count first (what a reference `(loss_sum / n).backward()` does), then the weight.
    loss = sums.ce_sum / static_cast<double>(step.ce);
    if (alpha > 0) loss = loss * (1 - alpha);
  }
  if (alpha > 0) {
    MLA_CHECK(sums.kl_sum.defined(), "loss: alpha = ", alpha, " needs teacher logits (distillation)");
    MLA_CHECK(step.kl > 0, "loss: the step has no distillation tokens");
    auto kl = sums.kl_sum / static_cast<double>(step.kl);
    if (alpha < 1) kl = kl * alpha;
    loss = loss.defined() ? loss + kl : kl;
  }
  return loss;
}

void LossMeter::add(const LossSums& sums) {
  auto ce = sums.ce_sum.detach().to(torch::kFloat64);
  ce_ = ce_.defined() ? ce_ + ce : ce;
  ce_tokens_ += sums.ce_tokens;
  if (sums.kl_sum.defined()) {
    auto kl = sums.kl_sum.detach().to(torch::kFloat64);
    kl_ = kl_.defined() ? kl_ + kl : kl;
    kl_tokens_ += sums.kl_tokens;
  }
}

LossMeter::Report LossMeter::report(double alpha) const {
  Report r;
  r.ce_tokens = ce_tokens_;
  r.kl_tokens = kl_tokens_;
  if (ce_.defined() && ce_tokens_ > 0) r.ce = ce_.item<double>() / static_cast<double>(ce_tokens_);
  if (kl_.defined() && kl_tokens_ > 0) r.kl = kl_.item<double>() / static_cast<double>(kl_tokens_);
  r.total = alpha * r.kl + (1 - alpha) * r.ce;
  return r;
}

}  // namespace mlaforge
