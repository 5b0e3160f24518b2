// The recipe schema table (see trainer/recipe_schema.h). Defaults are not written here: they are the
// member initialisers of trainer/recipe.h, read back through the accessors, so the two cannot disagree.
#include "trainer/recipe_schema.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <regex>

#include "data/chat_template.h"

namespace mlaforge::recipe_detail {
namespace {

#define MLA_FIELD(T, member) FieldRef(Accessor<T>([](Recipe& r) -> T* { return &r.member; }))

using K = FieldKind;
using I64 = int64_t;
using OptI64 = std::optional<int64_t>;
using OptF64 = std::optional<double>;
using Str = std::string;
using Strs = std::vector<std::string>;
using Pair = std::array<double, 2>;

Range at_least(double min) { return Range{min, std::nullopt, false, false}; }
Range above(double min) { return Range{min, std::nullopt, true, false}; }
Range between(double min, double max) { return Range{min, max, false, false}; }
Range unit_interval_open_above() { return Range{0.0, 1.0, false, true}; }

std::vector<std::string> chat_template_names() {
  std::vector<std::string> names = {"auto"};
  for (const auto& n : ChatTemplate::builtin_names()) names.push_back(n);
  return names;
}

// A parameter-name pattern (trainer/trainable.h) must be able to match a whole name, and every name has a
// dot: so an item without a dot, a wildcard or "re:" can only be a misspelt preset.
std::string check_pattern(const std::string& item, const std::vector<std::string>& presets) {
  if (std::find(presets.begin(), presets.end(), item) != presets.end()) return "";
  if (item.rfind("re:", 0) == 0) {
    try {
      std::regex re(item.substr(3), std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      return "'" + item + "': invalid regular expression (" + e.what() + ")";
    }
    return "";
  }
  if (item.find_first_of(".*?") != std::string::npos) return "";
  std::string message = "'" + item + "' is ";
  if (presets.empty()) return message + "not a name pattern: it matches no parameter name (write *" + item + "* or a full name)";
  message += "neither a preset (";
  for (size_t i = 0; i < presets.size(); ++i) message += (i ? ", " : "") + presets[i];
  message += ") nor a name pattern";
  size_t best = SIZE_MAX;
  std::string near;
  for (const auto& p : presets) {
    const size_t d = edit_distance(item, p);
    if (d < best) {
      best = d;
      near = p;
    }
  }
  if (best <= 2) message += " (did you mean " + near + "?)";
  return message;
}
std::string check_trainable_item(const std::string& item) { return check_pattern(item, {"up_proj", "attention", "all"}); }
std::string check_no_decay_item(const std::string& item) { return check_pattern(item, {}); }

std::vector<FieldSpec> build_schema() {
  std::vector<FieldSpec> s;
  auto add = [&](FieldSpec spec) { s.push_back(std::move(spec)); };

  // --- model --------------------------------------------------------------------------------------
  add({"model.path", K::path, MLA_FIELD(Str, model.path),
       "The model to train (required): a Hugging Face folder (config.json + safetensors; a converted MLA "
       "model for TransMLA recovery), a .gguf file or a llama2.c .bin. Its dimensions come from its own "
       "config, never from the recipe.",
       {}, {}, {"model", "model_path", "checkpoint", "student"}});
  add({"model.tokenizer", K::path, MLA_FIELD(Str, model.tokenizer),
       "Tokenizer file or folder; null: the one found with the model (required for llama2.c .bin).",
       {}, {}, {"tokenizer_path"}});
  add({"model.dtype", K::enumeration, MLA_FIELD(Str, model.dtype),
       "Compute dtype of forward and backward. bf16 keeps fp32 master weights in the optimizer "
       "(optim.master_weights).",
       {"bf16", "fp32"}, {}, {"precision", "torch_dtype", "compute_dtype"}});
  add({"model.trainable", K::string_list, MLA_FIELD(Strs, model.trainable),
       "Parameters that train: presets `up_proj` (MLA up-projections kv_b/q_b: cheapest recovery), "
       "`attention`, `all`, and/or name patterns (globs over HF or mlaforge names, `re:` regexes). A string "
       "is split at commas; use a list for a regex with a comma.",
       {}, {}, {"train_params", "trainable_params", "freeze", "parameters"}, true, check_trainable_item});
  add({"model.activation_checkpointing", K::boolean, MLA_FIELD(bool, model.activation_checkpointing),
       "Recompute each decoder layer's activations in backward instead of storing them (less memory, "
       "about a third more compute).",
       {}, {}, {"gradient_checkpointing", "checkpointing", "recompute"}});
  add({"model.freeze_dtype", K::enumeration, MLA_FIELD(Str, model.freeze_dtype),
       "dtype of the frozen parameters; auto: the compute dtype. A layer cannot mix fp32 and bf16 "
       "weights, so only auto or the compute dtype itself is accepted today.",
       {"auto", "bf16", "fp32"}, {}, {"frozen_dtype"}});

  // --- teacher ------------------------------------------------------------------------------------
  add({"teacher.path", K::path, MLA_FIELD(Str, teacher.path),
       "Teacher for logit distillation, typically the original GQA model the student was converted from; "
       "null: no distillation (plain cross-entropy). Its vocabulary must be the student's.",
       {}, {}, {"teacher", "teacher_model"}});
  add({"teacher.temperature", K::number, MLA_FIELD(double, teacher.temperature),
       "Softmax temperature applied to teacher and student logits in the KL term (the KL is scaled by "
       "temperature^2 so its gradient size does not depend on it).",
       {}, above(0), {"temp"}});
  add({"teacher.kl_ratio", K::number, MLA_FIELD(double, teacher.kl_ratio),
       "alpha in loss = alpha * KL(teacher || student) + (1 - alpha) * CE on the data's targets. Ignored "
       "without teacher.path.",
       {}, between(0, 1), {"alpha", "kl_weight", "distill_ratio", "kl_alpha"}});

  // --- data ---------------------------------------------------------------------------------------
  add({"data.train", K::path_list, MLA_FIELD(Strs, data.train),
       "Training data (required): a file (.jsonl, .json, .parquet, .txt), a Hugging Face dataset folder, "
       "a glob, or a list of these.",
       {}, {}, {"train_files", "path", "paths", "dataset", "train_data"}});
  add({"data.eval", K::path_list, MLA_FIELD(Strs, data.eval),
       "Evaluation data, same forms as data.train; null: no evaluation.",
       {}, {}, {"eval_files", "validation", "eval_data", "valid"}});
  add({"data.split", K::string, MLA_FIELD(Str, data.split),
       "Split read from Hugging Face dataset folders in data.train.", {}, {}, {"train_split"}});
  add({"data.eval_split", K::string, MLA_FIELD(Str, data.eval_split),
       "Split read from Hugging Face dataset folders in data.eval.", {}, {}, {"validation_split"}});
  add({"data.format", K::enumeration, MLA_FIELD(Str, data.format),
       "Row schema: messages [{role, content}], sharegpt [{from, value}], prompt_response (two fields), "
       "text (continued pre-training); auto: the first whose column a file has. .txt files are always text.",
       {"auto", "messages", "sharegpt", "prompt_response", "text"}, {}, {"schema", "type"}});
  add({"data.columns.messages", K::string, MLA_FIELD(Str, data.columns.messages),
       "messages format: the column holding the list of {role, content}.", {}, {}, {}});
  add({"data.columns.conversations", K::string, MLA_FIELD(Str, data.columns.conversations),
       "sharegpt format: the column holding the list of {from, value}.", {}, {}, {}});
  add({"data.columns.system", K::string, MLA_FIELD(Str, data.columns.system),
       "sharegpt format: optional top-level system prompt column.", {}, {}, {}});
  add({"data.columns.prompt", K::string, MLA_FIELD(Str, data.columns.prompt),
       "prompt_response format: field path of the user turn (`question`, `meta.prompt`, `a[0].b`).",
       {}, {}, {"question", "input", "instruction"}});
  add({"data.columns.response", K::string, MLA_FIELD(Str, data.columns.response),
       "prompt_response format: field path of the assistant turn.", {}, {}, {"answer", "output", "completion"}});
  add({"data.columns.text", K::string, MLA_FIELD(Str, data.columns.text),
       "text format: field path of the document.", {}, {}, {"content"}});
  add({"data.system_prompt", K::opt_string, MLA_FIELD(Str, data.system_prompt),
       "Prepended as a system turn to conversations that have none; null: none.", {}, {}, {"system"}});
  add({"data.chat_template", K::enumeration, MLA_FIELD(Str, data.chat_template),
       "How conversations are rendered; auto: the built-in recognised from the model's own Jinja template.",
       chat_template_names(), {}, {"template"}});
  add({"data.think_policy", K::enumeration, MLA_FIELD(Str, data.think_policy),
       "<think> reasoning in assistant turns: keep_all, strip_history (turns before the last user message "
       "lose it: DeepSeek-R1/Qwen3 behaviour), strip_all; auto: the chat template's own rule.",
       {"auto", "keep_all", "strip_history", "strip_all"}, {}, {"think", "reasoning"}});
  add({"data.trained_roles", K::string_list, MLA_FIELD(Strs, data.trained_roles),
       "Roles whose message text (and end-of-turn token) is trained.",
       {"system", "user", "assistant", "tool"}, {}, {"roles", "train_roles", "train_on"}, true});
  add({"data.max_seq_len", K::integer, MLA_FIELD(I64, data.max_seq_len),
       "Tokens per training sequence; longer conversations are cut after their last assistant turn that "
       "fits, longer texts split into windows.",
       {}, at_least(2), {"seq_len", "max_length", "context_length", "sequence_length", "block_size", "max_len"}});
  add({"data.packing", K::boolean, MLA_FIELD(bool, data.packing),
       "Pack several samples into each sequence (attention stays within a sample); false: one padded "
       "sample per sequence.",
       {}, {}, {"pack"}});
  add({"data.skip_malformed", K::boolean, MLA_FIELD(bool, data.skip_malformed),
       "Skip (and count) malformed rows instead of stopping at the first.", {}, {}, {"skip_bad_rows", "skip_invalid"}});
  add({"data.max_examples", K::integer, MLA_FIELD(I64, data.max_examples),
       "Read at most this many training examples; 0: all.", {}, at_least(0), {"limit", "max_samples", "num_examples"}});
  add({"data.cache_dir", K::path, MLA_FIELD(Str, data.cache_dir),
       "Where tokenised data is cached between runs; null: <train.output_dir>/data_cache.", {}, {}, {"cache"}});
  add({"data.num_workers", K::integer, MLA_FIELD(I64, data.num_workers),
       "Threads that read and tokenise data.", {}, at_least(1), {"workers", "threads"}});
  add({"data.seed", K::opt_integer, MLA_FIELD(OptI64, data.seed),
       "Shuffle seed; null: train.seed.", {}, at_least(0), {}});
  add({"data.shuffle", K::boolean, MLA_FIELD(bool, data.shuffle),
       "Shuffle the training samples each epoch.", {}, {}, {}});

  // --- train --------------------------------------------------------------------------------------
  add({"train.max_steps", K::opt_integer, MLA_FIELD(OptI64, train.max_steps),
       "Optimizer steps to run. Set exactly one of max_steps and epochs.",
       {}, at_least(1), {"steps", "num_steps", "total_steps", "iterations", "max_iters"}});
  add({"train.epochs", K::opt_number, MLA_FIELD(OptF64, train.epochs),
       "Passes over the training data (may be fractional). Set exactly one of max_steps and epochs.",
       {}, above(0), {"num_epochs", "num_train_epochs", "epoch"}});
  add({"train.seed", K::integer, MLA_FIELD(I64, train.seed),
       "Seed of everything random in the run.", {}, at_least(0), {"random_seed"}});
  add({"train.device", K::enumeration, MLA_FIELD(Str, train.device),
       "Where the model runs; auto: CUDA when available (each rank its own GPU), else CPU.",
       {"auto", "cpu", "cuda"}, {}, {"gpu", "accelerator"}});
  add({"train.eval_every", K::integer, MLA_FIELD(I64, train.eval_every),
       "Optimizer steps between evaluations on data.eval; 0: none during training (see eval.*).",
       {}, at_least(0), {"eval_interval", "eval_steps", "evaluate_every"}});
  add({"train.eval_batches", K::integer, MLA_FIELD(I64, train.eval_batches),
       "Micro-batches per evaluation; 0: the whole eval set.", {}, at_least(0), {"eval_iters", "eval_steps_count"}});
  add({"train.log_every", K::integer, MLA_FIELD(I64, train.log_every),
       "Optimizer steps between log lines (loss, lr, gradient norm, throughput).",
       {}, at_least(1), {"log_interval", "logging_steps", "print_every"}});
  add({"train.output_dir", K::path, MLA_FIELD(Str, train.output_dir),
       "Run folder: resolved recipe, logs, checkpoints, the exported model; null: out/<recipe file name> "
       "under the current directory.",
       {}, {}, {"output", "out_dir", "out", "run_dir", "save_dir"}});
  add({"train.export_at_end", K::boolean, MLA_FIELD(bool, train.export_at_end),
       "Write the trained model as a DeepSeek-V3-format folder (<output_dir>/final) at the end.",
       {}, {}, {"export", "save_at_end"}});

  // --- eval ---------------------------------------------------------------------------------------
  add({"eval.at_start", K::boolean, MLA_FIELD(bool, eval.at_start),
       "Evaluate on data.eval before the first step (where the converted model starts from).",
       {}, {}, {"before", "initial"}});
  add({"eval.at_end", K::boolean, MLA_FIELD(bool, eval.at_end),
       "Evaluate on data.eval after the last step.", {}, {}, {"after", "final"}});

  // --- optim --------------------------------------------------------------------------------------
  add({"optim.lr", K::number, MLA_FIELD(double, optim.lr),
       "Peak learning rate (AdamW). 2e-5 suits full fine-tuning of a 1-8B model on R1 traces; small models "
       "and up_proj-only runs take more (1e-4 to 1e-3).",
       {}, above(0), {"learning_rate", "lr_max", "max_lr", "peak_lr", "rate"}});
  add({"optim.weight_decay", K::number, MLA_FIELD(double, optim.weight_decay),
       "Decoupled weight decay on matrices (never norms, biases, embeddings). 0 by default: recovery runs "
       "start from good weights and are short; 0.1 is the usual pre-training value.",
       {}, at_least(0), {"wd", "decay", "l2"}});
  add({"optim.betas", K::number_pair, MLA_FIELD(Pair, optim.betas),
       "AdamW [beta1, beta2]; each in [0, 1).", {}, unit_interval_open_above(), {"beta", "adam_betas", "beta1", "beta2"}});
  add({"optim.eps", K::number, MLA_FIELD(double, optim.eps),
       "AdamW epsilon.", {}, above(0), {"epsilon", "adam_eps"}});
  add({"optim.grad_clip", K::number, MLA_FIELD(double, optim.grad_clip),
       "Clip the global gradient L2 norm to this; 0: no clipping.",
       {}, at_least(0), {"clip", "max_grad_norm", "clip_grad", "gradient_clipping", "grad_norm"}});
  add({"optim.no_decay", K::string_list, MLA_FIELD(Strs, optim.no_decay),
       "Extra name patterns (globs, `re:` regexes) kept out of weight decay, on top of the built-in rule "
       "(norms, biases, input embedding).",
       {}, {}, {"no_weight_decay", "exclude_from_decay"}, false, check_no_decay_item});
  add({"optim.master_weights", K::boolean, MLA_FIELD(bool, optim.master_weights),
       "With model.dtype bf16: keep fp32 master weights and fp32 Adam states (required today). Ignored "
       "with fp32.",
       {}, {}, {"fp32_master", "master", "mixed_precision"}});

  // --- schedule -----------------------------------------------------------------------------------
  add({"schedule.warmup", K::number, MLA_FIELD(double, schedule.warmup),
       "Linear warmup: a step count when >= 1 (a whole number), else a fraction of the total steps "
       "(warmup_ratio; 0.03 = 3%).",
       {}, at_least(0), {"warmup_steps", "warmup_ratio", "warm_up"}});
  add({"schedule.decay", K::enumeration, MLA_FIELD(Str, schedule.decay),
       "Decay after warmup, down to min_lr_ratio * lr at the last step.",
       {"cosine", "linear", "constant"}, {}, {"scheduler", "lr_scheduler", "type", "lr_schedule"}});
  add({"schedule.min_lr_ratio", K::number, MLA_FIELD(double, schedule.min_lr_ratio),
       "Final learning rate as a fraction of optim.lr.", {}, between(0, 1), {"min_lr", "final_lr_ratio"}});

  // --- batch --------------------------------------------------------------------------------------
  add({"batch.micro_batch_size", K::opt_integer, MLA_FIELD(OptI64, batch.micro_batch_size),
       "Sequences (of data.max_seq_len tokens when packing) per data-parallel rank per forward pass.",
       {}, at_least(1), {"micro_batch", "per_device_batch_size", "batch_size", "mbs"}});
  add({"batch.grad_accumulation", K::opt_integer, MLA_FIELD(OptI64, batch.grad_accumulation),
       "Micro-batches accumulated per optimizer step.",
       {}, at_least(1), {"gradient_accumulation_steps", "accumulation", "grad_accum", "accum"}});
  add({"batch.global_batch_size", K::opt_integer, MLA_FIELD(OptI64, batch.global_batch_size),
       "Sequences per optimizer step over all ranks = micro_batch_size x grad_accumulation x parallel.dp. "
       "Give any two of the three (the third is derived) or all three consistent.",
       {}, at_least(1), {"global_batch", "total_batch_size", "batch", "gbs"}});

  // --- parallel -----------------------------------------------------------------------------------
  add({"parallel.tp", K::integer, MLA_FIELD(I64, parallel.tp),
       "Tensor-parallel ranks; must divide the world size and the model's attention heads.",
       {}, at_least(1), {"tensor_parallel", "tensor_parallel_size", "tp_size"}});
  add({"parallel.dp", K::integer_or_auto, MLA_FIELD(I64, parallel.dp),
       "Data-parallel ranks; auto: world size / tp. tp x dp must equal the world size.",
       {}, at_least(1), {"data_parallel", "data_parallel_size", "dp_size"}});
  add({"parallel.backend", K::enumeration, MLA_FIELD(Str, parallel.backend),
       "Collectives: nccl (CUDA), mpi; auto: nccl on CUDA, else mpi.", {"auto", "mpi", "nccl"}, {}, {"comm", "dist_backend"}});
  add({"parallel.timeout_s", K::integer, MLA_FIELD(I64, parallel.timeout_s),
       "Seconds a collective may wait before the run fails (a hung rank).", {}, at_least(1), {"timeout"}});
  add({"parallel.zero", K::integer, MLA_FIELD(I64, parallel.zero),
       "ZeRO stage. 0: every data-parallel rank holds the whole optimizer state; 1: AdamW moments and fp32 "
       "master weights are split across the data-parallel ranks (1/dp of that memory each; gradients "
       "reduce-scattered, updated weights all-gathered: the traffic of one all-reduce).",
       {}, between(0, 1), {"zero_stage", "zero1", "shard_optimizer"}});
  add({"parallel.overlap_grad_reduce", K::boolean, MLA_FIELD(bool, parallel.overlap_grad_reduce),
       "Data parallel: start each gradient bucket's all-reduce (reduce-scatter under ZeRO) from the backward "
       "pass as soon as its gradients are final, so communication overlaps the remaining backward; false: "
       "reduce everything after the backward. Same sums either way.",
       {}, {}, {"overlap_comm", "overlap_grad_sync", "overlap"}});
  add({"parallel.bucket_mb", K::number, MLA_FIELD(double, parallel.bucket_mb),
       "Data parallel: MiB of fp32 gradients per collective. Smaller buckets start earlier in the backward "
       "(more overlap) but cost more messages.",
       {}, above(0), {"bucket_cap_mb", "bucket_size", "bucket_size_mb"}});

  // --- checkpoint ---------------------------------------------------------------------------------
  add({"checkpoint.every", K::integer, MLA_FIELD(I64, checkpoint.every),
       "Optimizer steps between checkpoints; 0: only at the end.",
       {}, at_least(0), {"save_every", "interval", "save_steps", "steps"}});
  add({"checkpoint.keep_last", K::integer, MLA_FIELD(I64, checkpoint.keep_last),
       "Most recent checkpoints kept; 0: all.", {}, at_least(0), {"keep", "save_total_limit", "max_keep"}});
  add({"checkpoint.keep_every", K::integer, MLA_FIELD(I64, checkpoint.keep_every),
       "Also keep every checkpoint whose step is a multiple of this; 0: none.", {}, at_least(0), {}});
  add({"checkpoint.resume", K::path_or_keyword, MLA_FIELD(Str, checkpoint.resume),
       "auto: continue from the latest checkpoint in train.output_dir if there is one; none: start fresh; "
       "or a checkpoint folder.",
       {"auto", "none"}, {}, {"resume_from", "resume_from_checkpoint", "restore"}});
  add({"checkpoint.async", K::boolean, MLA_FIELD(bool, checkpoint.async),
       "Write checkpoints in the background while training continues.", {}, {}, {"background", "async_save"}});

  // --- log ----------------------------------------------------------------------------------------
  add({"log.tensorboard", K::boolean, MLA_FIELD(bool, log.tensorboard),
       "Write TensorBoard event files to <output_dir>/tensorboard.", {}, {}, {"tb", "tensorboard_dir"}});
  add({"log.jsonl", K::boolean, MLA_FIELD(bool, log.jsonl),
       "Write one JSON line per logged step to <output_dir>/metrics.jsonl.", {}, {}, {"json", "metrics"}});
  add({"log.png", K::boolean, MLA_FIELD(bool, log.png),
       "Plot loss and learning-rate curves to <output_dir>/*.png at the end.", {}, {}, {"plot", "plots"}});
  add({"log.progress", K::enumeration, MLA_FIELD(Str, log.progress),
       "Progress bar: auto (when stderr is a terminal), always, never.",
       {"auto", "always", "never"}, {}, {"progress_bar", "tqdm"}});
  return s;
}

#undef MLA_FIELD

}  // namespace

const std::vector<FieldSpec>& recipe_schema() {
  static const std::vector<FieldSpec> schema = build_schema();
  return schema;
}

const std::vector<GroupSpec>& recipe_groups() {
  static const std::vector<GroupSpec> groups = {
      {"model", "The model being trained and what of it trains."},
      {"teacher", "Optional logit distillation from a teacher (the original GQA model)."},
      {"data", "Training and evaluation data, how rows become token sequences."},
      {"train", "Run length, seeds, evaluation and logging cadence, output folder."},
      {"eval", "Evaluations outside the periodic ones."},
      {"optim", "AdamW settings."},
      {"schedule", "Learning-rate schedule: linear warmup, then decay."},
      {"batch", "Batch sizes: global = micro x accumulation x data-parallel ranks."},
      {"parallel", "Tensor and data parallelism over the processes mlarun starts."},
      {"checkpoint", "Saving and resuming."},
      {"log", "What is written besides the console log."},
  };
  return groups;
}

const FieldSpec* find_field_spec(const std::string& path) {
  for (const auto& spec : recipe_schema()) {
    if (spec.path == path) return &spec;
  }
  return nullptr;
}

namespace {
std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += items[i];
  }
  return out;
}
}  // namespace

std::string kind_description(const FieldSpec& spec) {
  switch (spec.kind) {
    case FieldKind::boolean: return "bool";
    case FieldKind::integer: return "integer";
    case FieldKind::opt_integer: return "integer or null";
    case FieldKind::integer_or_auto: return "integer or auto";
    case FieldKind::number: return "number";
    case FieldKind::opt_number: return "number or null";
    case FieldKind::string: return "string";
    case FieldKind::opt_string: return "string or null";
    case FieldKind::enumeration: return "one of " + join(spec.allowed, ", ");
    case FieldKind::path: return "path or null";
    case FieldKind::path_or_keyword: return join(spec.allowed, ", ") + " or a path";
    case FieldKind::path_list: return "path or list of paths";
    case FieldKind::string_list:
      return spec.allowed.empty() ? "string or list of strings" : "list of " + join(spec.allowed, ", ");
    case FieldKind::number_pair: return "[number, number]";
  }
  return "?";
}

nlohmann::json field_value(const FieldSpec& spec, const Recipe& recipe) {
  switch (spec.kind) {
    case FieldKind::boolean: return spec.get<bool>(recipe);
    case FieldKind::integer: return spec.get<int64_t>(recipe);
    case FieldKind::integer_or_auto: {
      const int64_t v = spec.get<int64_t>(recipe);
      return v == 0 ? nlohmann::json("auto") : nlohmann::json(v);
    }
    case FieldKind::opt_integer: {
      const auto& v = spec.get<std::optional<int64_t>>(recipe);
      return v ? nlohmann::json(*v) : nlohmann::json();
    }
    case FieldKind::number: return spec.get<double>(recipe);
    case FieldKind::opt_number: {
      const auto& v = spec.get<std::optional<double>>(recipe);
      return v ? nlohmann::json(*v) : nlohmann::json();
    }
    case FieldKind::string:
    case FieldKind::enumeration:
    case FieldKind::path_or_keyword: return spec.get<std::string>(recipe);
    case FieldKind::opt_string:
    case FieldKind::path: {
      const auto& v = spec.get<std::string>(recipe);
      return v.empty() ? nlohmann::json() : nlohmann::json(v);
    }
    case FieldKind::path_list: {
      const auto& v = spec.get<std::vector<std::string>>(recipe);
      return v.empty() ? nlohmann::json() : nlohmann::json(v);
    }
    case FieldKind::string_list: return spec.get<std::vector<std::string>>(recipe);
    case FieldKind::number_pair: {
      const auto& v = spec.get<std::array<double, 2>>(recipe);
      return nlohmann::json::array({v[0], v[1]});
    }
  }
  return nullptr;
}

std::string format_number(double value) {
  if (!std::isfinite(value)) return std::isnan(value) ? ".nan" : (value > 0 ? ".inf" : "-.inf");
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  std::string text(buf, end);
  if (text.find_first_of(".e") == std::string::npos) return text + ".0";
  const size_t e = text.find('e');
  if (e != std::string::npos && text.find('.') == std::string::npos) text.insert(e, ".0");
  return text;
}

std::vector<std::string> recipe_key_paths_impl() {
  std::vector<std::string> paths;
  for (const auto& spec : recipe_schema()) paths.push_back(spec.path);
  return paths;
}

bool accessor_matches_kind(const FieldSpec& spec) {
  switch (spec.kind) {
    case FieldKind::boolean: return std::holds_alternative<Accessor<bool>>(spec.ref);
    case FieldKind::integer:
    case FieldKind::integer_or_auto: return std::holds_alternative<Accessor<int64_t>>(spec.ref);
    case FieldKind::opt_integer: return std::holds_alternative<Accessor<std::optional<int64_t>>>(spec.ref);
    case FieldKind::number: return std::holds_alternative<Accessor<double>>(spec.ref);
    case FieldKind::opt_number: return std::holds_alternative<Accessor<std::optional<double>>>(spec.ref);
    case FieldKind::string:
    case FieldKind::opt_string:
    case FieldKind::enumeration:
    case FieldKind::path:
    case FieldKind::path_or_keyword: return std::holds_alternative<Accessor<std::string>>(spec.ref);
    case FieldKind::path_list:
    case FieldKind::string_list: return std::holds_alternative<Accessor<std::vector<std::string>>>(spec.ref);
    case FieldKind::number_pair: return std::holds_alternative<Accessor<std::array<double, 2>>>(spec.ref);
  }
  return false;
}

}  // namespace mlaforge::recipe_detail

namespace mlaforge {
std::vector<std::string> recipe_key_paths() { return recipe_detail::recipe_key_paths_impl(); }
}  // namespace mlaforge
