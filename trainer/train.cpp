// The training loop of `mlaforge train` (trainer/train.h has the contract): read top to bottom, it is
// the run's order of events.
#include "trainer/train.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "convert/transmla.h"
#include "core/error.h"
#include "core/log.h"
#include "model/checkpoint.h"
#include "model/decoder.h"
#include "model/safetensors.h"
#include "model/tensor_io.h"
#include "model/weight_names.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"
#include "parallel/tensor_parallel.h"
#include "parallel/grad_sync.h"
#include "parallel/zero.h"
#include "trainer/activation_checkpoint.h"
#include "trainer/losses.h"
#include "trainer/lr_schedule.h"
#include "trainer/metrics_log.h"
#include "trainer/optimizer.h"
#include "trainer/train_checkpoint.h"
#include "trainer/train_data.h"
#include "trainer/trainable.h"

namespace mlaforge {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// CUDA processes use GPU `local_rank` (one process per GPU, as the launchers place them).
torch::Device pick_device(const std::string& name, int local_rank) {
  if (name == "cpu" || (name == "auto" && !torch::cuda::is_available())) return torch::kCPU;
  MLA_CHECK(torch::cuda::is_available(), "train.device: cuda: CUDA is not available on this machine");
  const auto gpus = static_cast<int>(torch::cuda::device_count());
  MLA_CHECK(local_rank < gpus, "train.device: process with local rank ", local_rank, " has no GPU of its own (",
            gpus, " visible): start at most ", gpus, " processes per node");
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  MLA_CHECK(out.good(), path.string(), ": cannot write");
}

// Peak resident memory of this process (VmHWM), GiB; 0 where /proc is missing.
double peak_rss_gib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / (1024.0 * 1024.0);
  return 0;
}

// The layout for this job's world size.
RunPlan parallel_plan(const Recipe& recipe, int world_size) {
  const std::string dp = recipe.parallel.dp == 0 ? "auto" : std::to_string(recipe.parallel.dp);
  if (world_size == 1) {
    const int64_t ranks = recipe.parallel.tp * std::max<int64_t>(1, recipe.parallel.dp);
    MLA_CHECK(ranks == 1, "parallel: tp ", recipe.parallel.tp, " x dp ", dp, " asks for at least ", ranks,
              " processes but this is a single process: start ", ranks, " (mpirun -np ", ranks, " mlaforge train ...)");
  }
  return plan_run(recipe, world_size);
}

// lazy: a Hugging Face folder stays mapped and build_model reads it tensor by tensor (the peak holds the
// model, not the model plus a loaded copy).
ModelSource load_source(const std::string& path, const std::string& tokenizer, const char* key, bool lazy) {
  LoadOptions load;
  load.tokenizer_path = tokenizer;
  load.lazy_weights = lazy;
  try {
    return load_model_source(path, load);
  } catch (const Error& e) {
    fail(key, ": ", e.what());
  }
}

// Parameters (mlaforge names) matched by optim.no_decay patterns, under either naming scheme.
std::vector<std::string> no_decay_names(const DecoderImpl& model, const std::vector<std::string>& patterns) {
  std::vector<std::string> names;
  for (const std::string& pattern : patterns) {
    bool matched = false;
    for (const auto& p : model.named_parameters()) {
      if (!trainable_pattern_matches(pattern, p.key())) continue;
      names.push_back(p.key());
      matched = true;
    }
    MLA_CHECK(matched, "optim.no_decay: pattern '", pattern, "' matches no parameter of the model");
  }
  return names;
}

// Model FLOPs per trained token (forward + backward, no recomputation): 2 per weight element in the
// forward, 2 more for the activation gradients, 2 more per TRAINABLE element for its weight gradient;
// attention scores and values add 2 x 2 x (avg context) x heads x (qk + v dims) per layer and pass.
double flops_per_token(const DecoderImpl& model, int64_t avg_context, const ModelConfig& full, int64_t tp) {
  // Under tensor parallelism this rank holds 1/tp of every split matrix: count the whole model's.
  std::map<std::string, TpSplit> split;
  for (const WeightName& w : expand_weight_names(full)) split[w.ours] = w.split;
  double matmul = 0, trainable = 0;
  for (const auto& p : model.named_parameters()) {
    if (p.value().dim() != 2) continue;
    if (p.key() == "embed.weight" && !full.tie_word_embeddings) continue;  // a lookup, not a matmul
    const auto it = split.find(p.key());
    const double copies = it != split.end() && it->second != TpSplit::replicated ? static_cast<double>(tp) : 1.0;
    matmul += copies * static_cast<double>(p.value().numel());
    if (p.value().requires_grad()) trainable += copies * static_cast<double>(p.value().numel());
  }
  const ModelConfig& c = full;
  const double qk = c.is_mla() ? static_cast<double>(c.qk_nope_head_dim + c.qk_rope_head_dim) : c.head_dim;
  const double v = c.is_mla() ? static_cast<double>(c.v_head_dim) : c.head_dim;
  const double attention = 4.0 * static_cast<double>(avg_context) * static_cast<double>(c.num_attention_heads) *
                           (qk + v) * static_cast<double>(c.num_hidden_layers);
  return 4 * matmul + 2 * trainable + 2 * attention;
}

// Mean CE (and KL to the teacher) over an evaluation split, no gradient.
// The loss sums of a model's final hidden states: the plain chunked loss, or under tensor parallelism
// the vocabulary-parallel one (each rank holds a slice of the LM head; the full logits never exist).
struct LossFunction {
  DecoderImpl* model = nullptr;
  parallel::Communicator* tp = nullptr;  // null: one device
  int64_t full_vocab = 0;
  LossSums operator()(const torch::Tensor& hidden, const torch::Tensor& targets, const torch::Tensor& teacher_logits,
                      const LossOptions& options) const {
    if (tp == nullptr) return lm_loss_sums(model_head(*model), hidden, targets, teacher_logits, {}, options);
    return parallel::vocab_parallel_loss_sums(*model, hidden, targets, full_vocab, *tp, options, teacher_logits);
  }
};

// Each data-parallel rank evaluates its share of the micro-batches; the sums are added over `dp`.
EvalReport evaluate_split(DecoderImpl& model, const LossFunction& loss, DecoderImpl* teacher, const TokenCache& cache,
                          const DataLoaderOptions& train_loader, int64_t max_batches, double temperature,
                          torch::Device device, parallel::Communicator& dp) {
  const auto start = Clock::now();
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  DataLoader loader(cache, eval_loader_options(train_loader));
  double ce = 0, kl = 0;
  int64_t ce_tokens = 0, kl_tokens = 0, batches = 0;
  while (auto step = loader.next_step()) {
    for (const PackedBatch& mb : step->micro_batches) {
      if (max_batches > 0 && batches >= max_batches) break;
      ++batches;
      const BatchTensors b = to_tensors(mb, device);
      if (b.trained_tokens == 0) continue;
      const ForwardOptions fo{.positions = b.positions, .segment_ids = b.segments};
      torch::Tensor teacher_logits;
      if (teacher) teacher_logits = teacher->forward(b.input_ids, fo);
      const LossSums sums = loss(model.hidden(b.input_ids, fo), b.targets, teacher_logits,
                                 LossOptions{.temperature = temperature});
      ce += sums.ce_sum.item<double>();
      ce_tokens += sums.ce_tokens;
      if (teacher) {
        kl += sums.kl_sum.item<double>();
        kl_tokens += sums.kl_tokens;
      }
    }
    if (max_batches > 0 && batches >= max_batches) break;
  }
  if (was_training) model.train();
  const auto total = parallel::all_reduce_scalars(
      {ce, kl, static_cast<double>(ce_tokens), static_cast<double>(kl_tokens)}, dp, device);
  ce = total[0];
  kl = total[1];
  ce_tokens = static_cast<int64_t>(total[2]);
  kl_tokens = static_cast<int64_t>(total[3]);
  MLA_CHECK(ce_tokens > 0, "evaluation: the eval split has no trained token");
  EvalReport r;
  r.ce = ce / static_cast<double>(ce_tokens);
  r.perplexity = std::exp(r.ce);
  r.kl = kl_tokens > 0 ? kl / static_cast<double>(kl_tokens) : 0.0;
  r.tokens = ce_tokens;
  r.seconds = seconds_since(start);
  return r;
}

// Optimizer steps a run of `epochs` passes takes (packing decides how many samples a step holds, so
// each epoch's steps are counted from its own order; a fractional last epoch is rounded up).
int64_t steps_for_epochs(const DataLoader& loader, double epochs) {
  int64_t steps = 0;
  const auto whole = static_cast<int64_t>(std::floor(epochs));
  for (int64_t e = 0; e < whole; ++e) steps += loader.steps_in_epoch(e);
  const double fraction = epochs - static_cast<double>(whole);
  if (fraction > 0) steps += static_cast<int64_t>(std::ceil(fraction * static_cast<double>(loader.steps_in_epoch(whole))));
  return std::max<int64_t>(1, steps);
}

// The trained model as a Hugging Face folder: config.json as loaded, weights in the checkpoint's dtype.
// In bf16 mode the trainable weights are taken from the optimizer's fp32 masters (the model holds their
// bf16 rounding), so a float32 checkpoint keeps the small updates bf16 would round away.
// The model's weights under their HF names, fp32 masters in place of bf16 trainable weights; under tensor
// parallelism gathered from the TP group. Collective: under ZeRO every rank calls it (the masters' rows
// are gathered over the DP group), else every rank of the TP group; only the result on DP rank 0 is whole.
StateDict trained_weights(DecoderImpl& model, const AdamW& optimizer, const ModelConfig& full_config,
                          parallel::ParallelGroups& groups) {
  StateDict weights = export_weights(model);
  if (optimizer.options().precision == Precision::bf16_master) {
    std::vector<torch::Tensor> masters;
    for (size_t i = 0; i < optimizer.size(); ++i) {
      const auto hf = ours_to_hf(model.config(), optimizer.name(i));
      MLA_CHECK(hf.has_value() && weights.count(*hf), "export: no Hugging Face name for ", optimizer.name(i));
      torch::Tensor master = optimizer.master(i);
      if (optimizer.sharded()) {  // own rows only: the others come from the DP group
        const auto [begin, end] = optimizer.shard_rows(i);
        torch::Tensor whole = torch::empty(weights[*hf].sizes(), master.options());
        whole.narrow(0, begin, end - begin).copy_(master);
        master = whole;
      }
      weights[*hf] = masters.emplace_back(master);
    }
    if (optimizer.sharded()) parallel::all_gather_rows(masters, *groups.dp);
  }
  if (groups.dp_rank() != 0) return {};
  if (groups.tp->size() > 1) weights = parallel::gather_state_dict(full_config, weights, *groups.tp);
  return weights;
}

void export_model(const std::string& dir, StateDict weights, const ModelSource& source) {
  fs::create_directories(dir);
  torch::Dtype dtype = torch::kFloat32;
  try {
    dtype = parse_torch_dtype(source.config.torch_dtype);
  } catch (const Error&) {
    log::warn("export: unknown torch_dtype '", source.config.torch_dtype, "' in ", source.path, "; writing float32");
  }
  for (auto& [name, tensor] : weights) tensor = tensor.detach().to(torch::kCPU, dtype).contiguous();
  write_model_metadata(dir, source.config.raw, source);  // config.json as loaded, tokenizer files
  save_state_dict(dir, weights);
}

}  // namespace

nlohmann::json EvalReport::to_json() const {
  return {{"step", step}, {"ce", ce}, {"perplexity", perplexity}, {"kl", kl}, {"tokens", tokens}, {"seconds", seconds}};
}

nlohmann::json TrainSummary::to_json() const {
  nlohmann::json j = {{"output_dir", output_dir},
                      {"model_dir", model_dir},
                      {"steps", steps},
                      {"skipped_steps", skipped_steps},
                      {"tokens", tokens},
                      {"trained_tokens", trained_tokens},
                      {"train_seconds", train_seconds},
                      {"tokens_per_second", tokens_per_second},
                      {"trainable_parameters", trainable_parameters},
                      {"total_parameters", total_parameters},
                      {"world_size", world_size},
                      {"tp", tp},
                      {"dp", dp},
                      {"evals", nlohmann::json::array()}};
  for (const auto& e : evals) j["evals"].push_back(e.to_json());
  if (teacher) j["teacher"] = teacher->to_json();
  if (replicas_identical) j["replicas_identical"] = *replicas_identical;
  if (dp > 1 && !steps_log.empty()) {  // the last step's (the first one calibrates, see parallel/grad_sync.h)
    j["grad_buckets"] = steps_log.back().grad_buckets;
    j["grad_buckets_overlapped"] = steps_log.back().overlapped_buckets;
  }
  if (!resumed_from.empty()) j["resumed_from"] = resumed_from, j["start_step"] = start_step;
  if (!last_checkpoint.empty()) j["last_checkpoint"] = last_checkpoint;
  if (!steps_log.empty()) {
    j["first_loss"] = steps_log.front().loss;
    j["last_loss"] = steps_log.back().loss;
  }
  return j;
}

TrainSummary run_training(const Recipe& recipe, const TrainOptions& options) {
  if (options.threads > 0) torch::set_num_threads(options.threads);
  torch::manual_seed(static_cast<uint64_t>(recipe.train.seed));
  const parallel::ProcessEnv env = parallel::detect_process_env();
  const torch::Device device = pick_device(recipe.train.device, env.local_rank);
  if (device.is_cuda()) torch::cuda::manual_seed_all(static_cast<uint64_t>(recipe.train.seed));
  auto world = parallel::make_world_communicator(recipe.parallel.backend, device.is_cuda());
  const RunPlan plan = parallel_plan(recipe, world->size());
  parallel::ParallelGroups groups = parallel::make_parallel_groups(std::move(world), static_cast<int>(plan.tp));
  for (auto* c : {groups.world.get(), groups.tp.get(), groups.dp.get()})
    c->set_timeout(std::chrono::seconds(recipe.parallel.timeout_s));
  // One process writes: the run folder, metrics, logs above warnings, the export.
  const bool lead = groups.world->rank() == 0;
  if (!lead && log::level() < log::Level::warn) log::set_level(log::Level::warn);
  const torch::Dtype compute = recipe.model.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  const double alpha = recipe.teacher.path.empty() ? 0.0 : recipe.teacher.kl_ratio;

  // --- 1. the run's folder and the recipe as resolved ---------------------------------------------
  TrainSummary summary;
  summary.world_size = groups.world->size();
  summary.tp = plan.tp;
  summary.dp = plan.dp;
  summary.output_dir = recipe.train.output_dir;
  if (lead) {
    fs::create_directories(summary.output_dir);
    const std::string resolved = dump_recipe_yaml(recipe);
    write_file(fs::path(summary.output_dir) / "recipe.yaml", resolved);
    log::info("resolved recipe saved as ", (fs::path(summary.output_dir) / "recipe.yaml").string());
  }

  // --- 2. models -------------------------------------------------------------------------------------
  const bool tensor_parallel = plan.tp > 1;
  ModelSource source = load_source(recipe.model.path, recipe.model.tokenizer, "model.path", /*lazy=*/true);
  const ModelConfig& config = source.config;
  validate_against_model(recipe, config.num_attention_heads, config.num_key_value_heads, config.vocab_size,
                         config.is_mla(), groups.world->size());
  // This rank's slice of every column/row/vocab-split tensor (model/weight_names.h), in a model whose
  // config has heads / tp, intermediate / tp and the padded vocabulary / tp; the hooks insert the
  // Megatron all-reduces (parallel/tensor_parallel.h). A Hugging Face folder is read tensor by tensor from
  // its mapping, each rank keeping only its slices: no rank holds the whole model.
  auto tp_model = [&](const ModelSource& s, torch::Dtype dtype) {
    Decoder m(parallel::tp_rank_config(s.config, static_cast<int>(plan.tp)));
    load_weights(*m, WeightReader(s), parallel::tp_weight_slicer(s.config, static_cast<int>(plan.tp), groups.tp_rank()));
    m->to(device, dtype);
    m->set_tp_hooks(parallel::make_tp_hooks(s.config, *groups.tp));
    return m;
  };
  Decoder model{nullptr};
  if (tensor_parallel) {
    model = tp_model(source, torch::kFloat32);
  } else {
    model = build_model(source, torch::kFloat32, device);
  }
  model->train();
  const LossFunction loss_fn{model.get(), tensor_parallel ? groups.tp.get() : nullptr, config.vocab_size};
  // The weights are in the model now (the in-memory formats, GGUF and llama2.c, held them whole): drop
  // the source's copy and mapping. The export needs only the config and tokenizer files from the source.
  source.weights.clear();
  source.checkpoint.reset();
  Decoder teacher{nullptr};
  if (!recipe.teacher.path.empty()) {
    // The teacher shares the student's vocabulary; a llama2.c teacher (no tokenizer inside) takes the
    // student's tokenizer file.
    std::string teacher_tokenizer = recipe.model.tokenizer;
    if (teacher_tokenizer.empty() && !fs::is_directory(recipe.teacher.path) && !source.tokenizer_files.empty())
      teacher_tokenizer = source.tokenizer_files.front();
    const ModelSource t = load_source(recipe.teacher.path, teacher_tokenizer, "teacher.path", /*lazy=*/true);
    MLA_CHECK(t.config.vocab_size == config.vocab_size, "teacher.path: the teacher's vocabulary (",
              t.config.vocab_size, ") differs from the model's (", config.vocab_size,
              "): logit distillation needs the same tokens");
    // Under TP the teacher is sharded like the student: its logits are vocabulary-parallel too, and the
    // KL term is computed from the two slices with all-reduced normalisers (parallel/tensor_parallel.h).
    if (tensor_parallel) {
      try {
        teacher = tp_model(t, compute);
      } catch (const Error& e) {
        fail("teacher.path: ", e.what());
      }
    } else {
      teacher = build_model(t, compute, device);
    }
    for (auto& p : teacher->parameters()) p.set_requires_grad(false);
  }
  log::info("model: ", source.path, " (", family_name(config.family), config.is_mla() ? ", MLA" : ", GQA", ") on ",
            device.str(), ", compute ", recipe.model.dtype, teacher ? "; teacher: " + recipe.teacher.path : "");

  // --- 3. what trains, the optimizer, precision ------------------------------------------------------
  const TrainableSelection selection = select_trainable(*model, recipe.model.trainable);
  summary.trainable_parameters = selection.trainable_numel;
  summary.total_parameters = selection.trainable_numel + selection.frozen_numel;
  AdamWOptions adamw;
  adamw.beta1 = recipe.optim.betas[0];
  adamw.beta2 = recipe.optim.betas[1];
  adamw.eps = recipe.optim.eps;
  adamw.weight_decay = recipe.optim.weight_decay;
  adamw.no_decay_names = no_decay_names(*model, recipe.optim.no_decay);
  adamw.precision = compute == torch::kBFloat16 ? Precision::bf16_master : Precision::fp32;
  const bool zero = recipe.parallel.zero == 1 && plan.dp > 1;
  if (zero) {
    adamw.shard_rank = groups.dp_rank();
    adamw.shard_count = static_cast<int>(plan.dp);
  }
  AdamW optimizer(trainable_parameters(*model), adamw);  // bf16: takes fp32 masters, casts the params
  std::vector<torch::Tensor> trained_tensors;  // in the optimizer's order (what ZeRO gathers)
  for (auto& [name, param] : trainable_parameters(*model)) trained_tensors.push_back(param);
  if (tensor_parallel || zero) {
    // The global gradient norm. ZeRO: each DP rank holds the squares of its own rows: sum them over the
    // DP group. TP: the sharded tensors' squares summed over the TP group, the replicated ones (norms,
    // MLA kv_a / q_a, MoE experts: identical on every TP rank) counted once.
    std::map<std::string, TpSplit> split;
    for (const WeightName& w : expand_weight_names(config)) split[w.ours] = w.split;
    std::vector<size_t> replicated;
    for (size_t i = 0; i < optimizer.size() && tensor_parallel; ++i) {
      const auto it = split.find(optimizer.name(i));
      MLA_CHECK(it != split.end(), "tensor parallel: parameter ", optimizer.name(i), " is not in the weight table");
      if (it->second == TpSplit::replicated) replicated.push_back(i);
    }
    const auto tp_size = static_cast<double>(plan.tp);
    optimizer.set_norm_reducer([&groups, replicated, tp_size, zero](torch::Tensor& squared_norm,
                                                                     const std::vector<torch::Tensor>& grads) {
      torch::Tensor once = torch::zeros_like(squared_norm);
      for (size_t i : replicated)
        if (grads[i].defined()) once += grads[i].to(squared_norm.scalar_type()).pow(2).sum();
      if (zero) {
        torch::Tensor both = torch::stack({squared_norm, once});
        groups.dp->all_reduce(both, parallel::ReduceOp::sum);
        squared_norm.copy_(both[0]);
        once = both[1];
      }
      if (tp_size > 1) {
        groups.tp->all_reduce(squared_norm, parallel::ReduceOp::sum);
        squared_norm.sub_(once * (tp_size - 1));
      }
    });
  }
  // Data parallel: the gradients are summed over the DP group bucket by bucket, each bucket started from
  // an autograd hook during the last micro-batch's backward as soon as its gradients are final.
  std::unique_ptr<parallel::GradientSync> grad_sync;
  if (groups.dp->size() > 1) {
    grad_sync = std::make_unique<parallel::GradientSync>(
        trained_tensors, *groups.dp,
        parallel::GradSyncOptions{.bucket_bytes = static_cast<size_t>(recipe.parallel.bucket_mb * (1 << 20)),
                                  .zero = zero,
                                  .overlap = recipe.parallel.overlap_grad_reduce},
        [&optimizer](size_t i, bool zeros_for_missing) { return optimizer.gradient(i, zeros_for_missing); });
  }
  if (compute == torch::kBFloat16) cast_frozen_parameters(*model, torch::kBFloat16);
  set_activation_checkpointing(*model, recipe.model.activation_checkpointing);
  log::info("trainable: ", selection.trainable.size(), " tensors, ", selection.trainable_numel, " of ",
            summary.total_parameters, " parameters (", recipe.model.trainable.size() == 1 ? recipe.model.trainable[0] : "patterns",
            "); optimizer AdamW ", precision_name(adamw.precision),
            zero ? ", ZeRO-1 over " + std::to_string(plan.dp) + " data-parallel ranks" : "");

  // --- 4. data -----------------------------------------------------------------------------------------
  const RunData data = prepare_run_data(recipe, source);
  DataLoaderOptions loader_opts = loader_options(recipe, plan, data.train);
  loader_opts.dp_rank = groups.dp_rank();
  DataLoader loader(data.train, loader_opts);
  const int64_t total_steps =
      recipe.train.max_steps ? *recipe.train.max_steps : steps_for_epochs(loader, *recipe.train.epochs);
  LRScheduleOptions sched;
  sched.lr = recipe.optim.lr;
  sched.total_steps = total_steps;
  if (recipe.schedule.warmup_is_ratio()) {
    sched.warmup_ratio = recipe.schedule.warmup;
  } else {
    sched.warmup_steps = std::min<int64_t>(static_cast<int64_t>(recipe.schedule.warmup), total_steps);
  }
  sched.min_lr_ratio = recipe.schedule.min_lr_ratio;
  sched.decay = parse_lr_decay(recipe.schedule.decay);
  const LRSchedule schedule(sched);
  for (const auto& line : describe_run_plan(recipe, plan)) log::info(line);
  log::info("schedule: ", total_steps, " steps, warmup ", schedule.warmup_steps(), ", ", recipe.schedule.decay,
            " decay to ", recipe.schedule.min_lr_ratio, " x lr ", recipe.optim.lr);

  // --- 5. checkpoints: resume where a previous run of this recipe stopped -----------------------------
  std::vector<std::string> trained_names;
  for (size_t i = 0; i < optimizer.size(); ++i) trained_names.push_back(optimizer.name(i));
  TrainCheckpointOptions ckpt_opts;
  ckpt_opts.root = summary.output_dir;
  ckpt_opts.keep_last = recipe.checkpoint.keep_last;
  ckpt_opts.keep_every = recipe.checkpoint.keep_every;
  ckpt_opts.async = recipe.checkpoint.async;
  ckpt_opts.fingerprint = model_fingerprint(config, trained_names);
  TrainCheckpointer checkpointer(ckpt_opts, config, optimizer, trained_tensors, groups, device);
  if (const auto state = checkpointer.resume(recipe.checkpoint.resume)) {
    summary.resumed_from = state->at("path").get<std::string>();
    summary.start_step = state->at("step").get<int64_t>();
    loader.seek(DataPosition::from_json(state->at("data_position")));
    summary.tokens = state->value("tokens", int64_t{0});
    summary.trained_tokens = state->value("trained_tokens", int64_t{0});
    summary.skipped_steps = state->value("skipped_steps", int64_t{0});
    const int64_t saved_total = state->value("total_steps", total_steps);
    if (saved_total != total_steps)
      log::warn("resume: the checkpoint's run had ", saved_total, " steps, this one has ", total_steps,
                ": the learning-rate schedule is this run's from step ", summary.start_step + 1);
  }
  summary.steps = summary.start_step;
  const int64_t tokens_before = summary.tokens;
  // What a checkpoint records besides the tensors (rank 0's copy is the one saved).
  auto training_state = [&](int64_t step) {
    return nlohmann::json{{"step", step},
                          {"optimizer_step", optimizer.step_count()},
                          {"total_steps", total_steps},
                          {"tokens", summary.tokens},
                          {"trained_tokens", summary.trained_tokens},
                          {"skipped_steps", summary.skipped_steps},
                          {"data_position", loader.position().to_json()},
                          {"layout", {{"world_size", groups.world->size()}, {"tp", plan.tp}, {"dp", plan.dp},
                                      {"zero", zero ? 1 : 0}, {"precision", precision_name(adamw.precision)}}},
                          {"model_path", recipe.model.path},
                          {"model_tokenizer", recipe.model.tokenizer},
                          {"recipe", dump_recipe_yaml(recipe)}};
  };
  auto save_checkpoint = [&](int64_t step) {
    checkpointer.save(step, training_state(step));
    summary.last_checkpoint = (fs::path(summary.output_dir) / step_dir_name(step)).string();
  };

  metrics::MetricsOptions mopts = metrics::MetricsOptions::in_dir(summary.output_dir);
  if (!recipe.log.tensorboard) mopts.tensorboard_dir.clear();
  if (!recipe.log.png) mopts.plot_path.clear();
  mopts.total_steps = total_steps;
  mopts.log_every = recipe.train.log_every;
  mopts.progress = metrics::parse_progress_mode(recipe.log.progress);
  if (!summary.resumed_from.empty()) mopts.resume_step = summary.start_step;
  // Only the lead process writes metrics (the numbers are the same on every rank).
  std::unique_ptr<metrics::MetricsLogger> metrics_log;
  if (lead) metrics_log = std::make_unique<metrics::MetricsLogger>(mopts);

  auto evaluate = [&](int64_t step) {
    EvalReport r = evaluate_split(*model, loss_fn, teacher ? teacher.get() : nullptr, *data.eval, loader_opts, recipe.train.eval_batches,
                                  recipe.teacher.temperature, device, *groups.dp);
    r.step = step;
    metrics::Scalars values = {{"loss", r.ce}, {"ppl", r.perplexity}};
    if (teacher) values.emplace_back("kl", r.kl);
    if (metrics_log) metrics_log->log_eval(step, values);
    log::debug("eval @ step ", step, ": ", r.tokens, " tokens in ", r.seconds, " s");
    summary.evals.push_back(r);
  };

  // --- 6. the starting point (and the teacher's, the original model's) --------------------------------
  if (data.eval && teacher) {
    const LossFunction teacher_loss{teacher.get(), tensor_parallel ? groups.tp.get() : nullptr, config.vocab_size};
    summary.teacher = evaluate_split(*teacher, teacher_loss, nullptr, *data.eval, loader_opts, recipe.train.eval_batches,
                                     1.0, device, *groups.dp);
    log::info("eval teacher: ce ", summary.teacher->ce, ", perplexity ", summary.teacher->perplexity);
  }
  if (data.eval && recipe.eval.at_start && summary.start_step == 0) evaluate(0);

  // --- 7. the loop ---------------------------------------------------------------------------------------
  const LossOptions loss_options{.temperature = recipe.teacher.temperature};
  const double aux_coef = config.is_moe() ? config.router_aux_loss_coef : 0.0;
  const double flops_token = flops_per_token(*model, recipe.data.max_seq_len / 2, config, plan.tp);
  const char* peak_env = std::getenv("MLAFORGE_PEAK_TFLOPS");
  const double peak_flops = peak_env ? std::strtod(peak_env, nullptr) * 1e12 : 0.0;
  const auto loop_start = Clock::now();
  for (int64_t step = summary.start_step; step < total_steps; ++step) {
    const auto step_start = Clock::now();
    std::optional<LoaderStep> batch = loader.next_step();
    MLA_CHECK(batch.has_value(), "data: the training stream ended early");  // endless stream (epochs = 0)
    // The loss divisor is the whole global step's token count (every rank, every micro-batch), known
    // from the loader before any forward; KL terms are taken on the trained tokens.
    const StepTokens step_tokens{batch->global_trained_tokens, teacher ? batch->global_trained_tokens : 0};
    std::vector<BatchTensors> micro;
    for (const PackedBatch& mb : batch->micro_batches) micro.push_back(to_tensors(mb, device));
    LossMeter meter;
    double aux_sum = 0;
    for (size_t k = 0; k < micro.size(); ++k) {
      const BatchTensors& b = micro[k];
      const ForwardOptions fo{.positions = b.positions, .segment_ids = b.segments};
      torch::Tensor teacher_logits;
      if (teacher) {
        torch::NoGradGuard no_grad;
        teacher_logits = teacher->forward(b.input_ids, fo);
      }
      const LossSums sums = loss_fn(model->hidden(b.input_ids, fo), b.targets, teacher_logits, loss_options);
      torch::Tensor loss = micro_batch_loss(sums, step_tokens, alpha);
      if (aux_coef > 0) {
        const torch::Tensor aux = model->aux_loss();
        aux_sum += aux.item<double>();
        loss = loss + aux * (aux_coef / static_cast<double>(micro.size()));
      }
      if (grad_sync && k + 1 == micro.size()) grad_sync->arm();
      if (loss.requires_grad()) loss.backward();
      optimizer.accumulate_grads();
      meter.add(sums);
    }
    // Data parallel: sum the gradients over the DP group (each rank's share of the global objective);
    // under ZeRO each rank receives the sum of its own rows only, updates them, and gathers the others.
    parallel::GradSyncStats comm;
    if (grad_sync) comm = grad_sync->finish();
    const double lr = schedule.lr(step);
    const StepResult result = optimizer.step(lr, recipe.optim.grad_clip);
    optimizer.zero_grad();
    if (zero && !result.skipped) comm.seconds += parallel::all_gather_rows(trained_tensors, *groups.dp).seconds;

    LossMeter::Report losses = meter.report(alpha);
    if (groups.dp->size() > 1) {
      const auto total = parallel::all_reduce_scalars(
          {losses.ce * static_cast<double>(losses.ce_tokens), losses.kl * static_cast<double>(losses.kl_tokens),
           static_cast<double>(losses.ce_tokens), static_cast<double>(losses.kl_tokens), aux_sum},
          *groups.dp, device);
      losses.ce_tokens = static_cast<int64_t>(total[2]);
      losses.kl_tokens = static_cast<int64_t>(total[3]);
      losses.ce = losses.ce_tokens > 0 ? total[0] / total[2] : 0.0;
      losses.kl = losses.kl_tokens > 0 ? total[1] / total[3] : 0.0;
      losses.total = alpha * losses.kl + (1 - alpha) * losses.ce;
      aux_sum = total[4] / static_cast<double>(groups.dp->size());
    }
    StepReport r;
    r.step = step + 1;
    r.ce = losses.ce;
    r.kl = losses.kl;
    r.aux = aux_sum / static_cast<double>(micro.size());
    r.loss = losses.total + aux_coef * r.aux;
    r.grad_norm = result.grad_norm;
    r.clipped = result.clipped;
    r.skipped = result.skipped;
    r.lr = lr;
    r.trained_tokens = batch->global_trained_tokens;
    r.tokens = batch->global_tokens;
    r.seconds = seconds_since(step_start);
    r.comm_seconds = comm.seconds;
    r.grad_buckets = static_cast<int64_t>(comm.buckets);
    r.overlapped_buckets = static_cast<int64_t>(comm.overlapped_buckets);
    summary.steps = r.step;
    summary.skipped_steps += r.skipped;
    summary.tokens += r.tokens;
    summary.trained_tokens += r.trained_tokens;
    summary.steps_log.push_back(r);
    if (r.skipped) log::warn("step ", r.step, ": non-finite gradient norm; the update was skipped");

    const double tokens_per_s = static_cast<double>(r.tokens) / std::max(r.seconds, 1e-9);
    metrics::Scalars values = {{"loss", r.loss}, {"ce", r.ce}, {"grad_norm", r.grad_norm}, {"lr", r.lr},
                               {"tokens_per_s", tokens_per_s}, {"tflops", flops_token * tokens_per_s / 1e12},
                               {"tokens", static_cast<double>(r.tokens)},
                               {"trained_tokens", static_cast<double>(r.trained_tokens)}};
    if (teacher) values.emplace_back("kl", r.kl);
    if (aux_coef > 0) values.emplace_back("aux", r.aux);
    if (groups.dp->size() > 1) {
      values.emplace_back("comm_frac", r.comm_seconds / std::max(r.seconds, 1e-9));
      values.emplace_back("overlapped_buckets", static_cast<double>(r.overlapped_buckets));
    }
    if (peak_flops > 0) values.emplace_back("mfu", flops_token * tokens_per_s / peak_flops);
    if (device.is_cpu()) values.emplace_back("mem_gb", peak_rss_gib());
    if (metrics_log) metrics_log->log_train(r.step, values);

    const bool last = r.step == total_steps;
    if (data.eval && recipe.train.eval_every > 0 && r.step % recipe.train.eval_every == 0 &&
        !(last && recipe.eval.at_end))
      evaluate(r.step);
    checkpoint_fault_point("step", r.step, groups.world->rank());
    if (recipe.checkpoint.every > 0 && r.step % recipe.checkpoint.every == 0 && !last) save_checkpoint(r.step);
    checkpointer.poll();
    if (options.on_step && !options.on_step(r)) break;
  }
  // The final state is always saved (checkpoint.every 0: only then), so a finished run can be extended.
  if (summary.steps > summary.start_step &&
      summary.last_checkpoint != (fs::path(summary.output_dir) / step_dir_name(summary.steps)).string())
    save_checkpoint(summary.steps);
  checkpointer.finish();
  summary.train_seconds = seconds_since(loop_start);
  summary.tokens_per_second = static_cast<double>(summary.tokens - tokens_before) / std::max(summary.train_seconds, 1e-9);

  // Data parallel replicas applied identical updates to identical weights: check it (cheap, once).
  if (groups.dp->size() > 1) {
    std::vector<torch::Tensor> weights;
    for (const auto& p : model->parameters()) weights.push_back(p);
    if (!zero)  // ZeRO masters are each rank's own rows; the weights gathered from them are checked
      for (size_t i = 0; i < optimizer.size(); ++i) weights.push_back(optimizer.master(i));
    summary.replicas_identical = parallel::replicas_identical(weights, *groups.dp);
    MLA_CHECK(*summary.replicas_identical, "data parallel: the replicas' weights differ after ", summary.steps,
              " steps (rank ", groups.world->rank(), "): a bug, please report it");
    log::info("data parallel: the ", groups.dp->size(), " replicas hold bitwise identical weights");
  }

  // --- 8. the end: final evaluation, export, report -------------------------------------------------------
  if (data.eval && recipe.eval.at_end) evaluate(summary.steps);
  if (metrics_log) metrics_log->finish();
  if (recipe.train.export_at_end) {
    summary.model_dir = (fs::path(summary.output_dir) / "model").string();
    if (zero || groups.dp_rank() == 0) {  // the TP group holding world rank 0 gathers; rank 0 writes
      StateDict weights = trained_weights(*model, optimizer, config, groups);
      if (lead) {
        export_model(summary.model_dir, std::move(weights), source);
        log::info("exported the trained model to ", summary.model_dir);
      }
    }
  }
  if (lead) write_file(fs::path(summary.output_dir) / "report.json", summary.to_json().dump(2) + "\n");
  groups.world->barrier();  // nobody leaves before the export is complete
  return summary;
}

}  // namespace mlaforge
