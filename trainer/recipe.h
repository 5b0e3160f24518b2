#pragma once
// Recipes: the YAML run configuration of `mlaforge train RECIPE.yaml [key.path=value ...]`, torch-free.
//
// A recipe holds run settings only and names a model; the model's dimensions come from its config.json
// (checks that need them are validate_against_model's, run once the model is known). Groups:
//   model  teacher  data  train  eval  optim  schedule  batch  parallel  checkpoint  log
// Every key, its type, default and meaning is one row of the schema table (trainer/recipe_schema.cpp),
// which drives parsing, the "did you mean" suggestions, dump_recipe_yaml and `mlaforge validate --explain`
// (recipes/README.md is that output). The defaults below are the values of a default-constructed Recipe.
//
// Loading (load_recipe / parse_recipe_text), in order:
//   1. the YAML is read keeping line/column marks; unknown keys, wrong types, values outside their range
//      or not among the allowed ones throw "FILE:LINE:COL: group.key: problem" (unknown keys name the
//      closest valid key);
//   2. overrides "a.b=value" (value parsed as a YAML scalar or flow sequence: lr=3e-5, betas=[0.9,0.95])
//      are applied; their errors name the override;
//   3. path values are expanded: ${VAR} and ${VAR:-fallback} from the environment (an unset variable
//      without fallback is an error), a leading ~ is $HOME, and a relative path is taken relative to the
//      recipe file's folder (relative paths in overrides: to the current directory);
//   4. derived defaults are filled (train.output_dir, data.cache_dir, data.seed), so the result is the
//      resolved recipe that dump_recipe_yaml writes with the run;
//   5. validate_recipe checks combinations that need no model and no world size.
// plan_run then derives the parallel layout and batch sizes for a world size.
//
// Multi-stage recipes: an optional top-level list `stages:` makes a recipe a sequence of runs (e.g. a short
// self-distillation "recover" stage, then SFT on R1 traces). Each item is `name: <[a-z0-9_-]+, unique>`
// plus any recipe groups; stage k's recipe is the base recipe (everything outside `stages:`, with the
// command-line overrides) with the stage's mapping read over it by the same schema code (what the stage
// sets replaces the base's value, a list as a whole; groups merge key by key), then the overrides
// `stages.<name>.<key.path>=value`, then its derived defaults:
//   train.output_dir  <base train.output_dir>/<name> unless the stage sets it;
//   data.cache_dir    the base's (shared: the token cache is keyed by content) unless set;
//   model.path        stage k > 0: stage k-1's exported model, <its output_dir>/model, unless the stage
//                     sets model.path itself (the teacher stays the base's: the original model).
// Every stage is validated on its own (errors say "FILE:LINE:COL: stages[1].teacher.kl_ratio: ..." or
// "FILE:LINE:COL: stages[1] (sft): ..."); the base need not be a complete run by itself. Every stage but
// the last must keep train.export_at_end (the next stage starts from the export, and a rerun recognises a
// finished stage by it). A recipe without `stages:` is one run, exactly as above.
#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace mlaforge {

struct ModelRecipe {
  std::string path;       // required: HF folder (config.json + safetensors), .gguf or llama2.c .bin
  std::string tokenizer;  // "" (null): the tokenizer found with the model
  std::string dtype = "bf16";  // compute dtype: bf16 | fp32
  // Which parameters train (trainer/trainable.h): presets up_proj | attention | all, or name patterns
  // (globs, "re:" regexes). A scalar in YAML is split on commas.
  std::vector<std::string> trainable = {"all"};
  bool activation_checkpointing = false;
  std::string freeze_dtype = "auto";  // dtype of frozen parameters: auto (= dtype) | bf16 | fp32
  bool operator==(const ModelRecipe&) const = default;
};

struct TeacherRecipe {
  std::string path;          // "" (null): no distillation, the loss is plain cross-entropy
  double temperature = 1.0;  // softmax temperature of both distributions in the KL term
  double kl_ratio = 0.5;     // alpha: loss = alpha * KL(teacher || student) + (1 - alpha) * CE
  bool operator==(const TeacherRecipe&) const = default;
};

// Column names of the dataset schemas (data/dataset.h SchemaOptions).
struct DataColumns {
  std::string messages = "messages";
  std::string conversations = "conversations";
  std::string system = "system";
  std::string prompt = "prompt";
  std::string response = "response";
  std::string text = "text";
  bool operator==(const DataColumns&) const = default;
};

struct DataRecipe {
  std::vector<std::string> train;  // required: files, folders or globs (data/dataset.h resolve_data_files)
  std::vector<std::string> eval;   // empty (null): no evaluation data
  std::string split = "train";     // split read from Hugging Face dataset folders in `train`
  std::string eval_split = "validation";  // split read from folders in `eval`
  std::string format = "auto";     // auto | messages | sharegpt | prompt_response | text
  DataColumns columns;
  std::string system_prompt;       // "" (null): none; prepended to conversations without a system turn
  std::string chat_template = "auto";  // auto (the model's own, recognised) or a built-in name
  std::string think_policy = "auto";   // auto (the template's rule) | keep_all | strip_history | strip_all
  std::vector<std::string> trained_roles = {"assistant"};
  int64_t max_seq_len = 4096;      // tokens per training sequence (R1 traces are long)
  bool packing = true;             // pack several samples per sequence
  bool skip_malformed = false;     // skip (and count) malformed rows instead of failing
  int64_t max_examples = 0;        // 0: all
  std::string cache_dir;           // tokenised-data cache; filled: <train.output_dir>/data_cache
  int64_t num_workers = 2;         // tokenisation threads
  std::optional<int64_t> seed;     // shuffle seed; filled: train.seed
  bool shuffle = true;
  bool operator==(const DataRecipe&) const = default;
};

struct TrainRecipe {
  // Exactly one of the two: optimizer steps, or passes over the training data (may be fractional).
  std::optional<int64_t> max_steps;
  std::optional<double> epochs;
  int64_t seed = 42;
  std::string device = "auto";  // auto (cuda when available) | cpu | cuda
  int64_t eval_every = 0;       // optimizer steps between evaluations; 0: none during training
  int64_t eval_batches = 0;     // micro-batches per evaluation; 0: the whole eval set
  int64_t log_every = 10;       // optimizer steps between log lines
  std::string output_dir;       // filled: out/<recipe file name> under the current directory
  bool export_at_end = true;    // write a DeepSeek-V3-format model folder at the end
  bool operator==(const TrainRecipe&) const = default;
};

struct EvalRecipe {
  bool at_start = true;  // evaluate before the first step (the converted model's starting point)
  bool at_end = true;    // evaluate after the last step
  bool operator==(const EvalRecipe&) const = default;
};

struct OptimRecipe {
  double lr = 2e-5;                 // peak learning rate
  double weight_decay = 0.0;        // decoupled (AdamW); 0: recovery runs start from good weights
  std::array<double, 2> betas = {0.9, 0.95};
  double eps = 1e-8;
  double grad_clip = 1.0;           // max global gradient L2 norm; 0: no clipping
  std::vector<std::string> no_decay;  // extra name patterns kept out of weight decay
  bool master_weights = true;       // bf16: fp32 master weights and optimizer states
  bool operator==(const OptimRecipe&) const = default;
};

struct ScheduleRecipe {
  // Warmup: a step count when >= 1 (a whole number), a fraction of the total steps when < 1.
  double warmup = 0.03;
  std::string decay = "cosine";  // cosine | linear | constant
  double min_lr_ratio = 0.1;     // final lr = min_lr_ratio * lr
  bool operator==(const ScheduleRecipe&) const = default;

  bool warmup_is_ratio() const { return warmup < 1.0; }
  // Warmup steps for a run of total_steps (a ratio is rounded to the nearest step).
  int64_t warmup_steps(int64_t total_steps) const;
};

struct BatchRecipe {
  // Any two (or one, or none) given; plan_run derives the rest with global = micro x accum x dp.
  std::optional<int64_t> micro_batch_size;   // sequences per rank per forward
  std::optional<int64_t> grad_accumulation;  // micro-batches per optimizer step
  std::optional<int64_t> global_batch_size;  // sequences per optimizer step, all ranks
  bool operator==(const BatchRecipe&) const = default;
};

struct ParallelRecipe {
  int64_t tp = 1;   // tensor-parallel ranks
  int64_t dp = 0;   // data-parallel ranks; 0 is "auto": world size / tp
  std::string backend = "auto";  // auto | mpi | nccl
  int64_t timeout_s = 1800;      // collective timeout
  int64_t zero = 0;              // ZeRO stage: 0 replicated optimizer state; 1 sharded over the DP group
  bool overlap_grad_reduce = true;  // start gradient buckets' collectives during the backward pass
  double bucket_mb = 25;            // gradient bucket size (MiB of fp32 gradients per collective)
  bool operator==(const ParallelRecipe&) const = default;
};

struct CheckpointRecipe {
  int64_t every = 500;    // optimizer steps between checkpoints; 0: only at the end
  int64_t keep_last = 2;  // most recent checkpoints kept; 0: all
  int64_t keep_every = 0;  // also keep every checkpoint whose step is a multiple of this; 0: none
  std::string resume = "auto";  // auto (latest in output_dir, if any) | none | a checkpoint path
  bool async = false;     // write checkpoints in the background
  bool operator==(const CheckpointRecipe&) const = default;
};

struct LogRecipe {
  bool tensorboard = false;
  bool jsonl = true;
  bool png = true;               // loss / lr curves as PNG at the end
  std::string progress = "auto";  // auto (when stderr is a terminal) | always | never
  bool operator==(const LogRecipe&) const = default;
};

struct Recipe {
  ModelRecipe model;
  TeacherRecipe teacher;
  DataRecipe data;
  TrainRecipe train;
  EvalRecipe eval;
  OptimRecipe optim;
  ScheduleRecipe schedule;
  BatchRecipe batch;
  ParallelRecipe parallel;
  CheckpointRecipe checkpoint;
  LogRecipe log;
  bool operator==(const Recipe&) const = default;
};

// One stage of a multi-stage recipe, resolved.
struct RecipeStage {
  std::string name;
  int64_t index = 0;                 // position in `stages:`
  Recipe recipe;                     // resolved and validated, like a single-run recipe
  bool model_from_previous = false;  // model.path is the previous stage's export (written by the run)
  std::string where;                 // "FILE:LINE:COL" of the stage's mapping, for messages
};

// A recipe file: one run (stages empty: `base` is the resolved, validated recipe) or a sequence of stages
// (`base` is the recipe outside `stages:` with the base overrides, derived defaults filled, NOT validated
// on its own).
struct StagedRecipe {
  Recipe base;
  std::vector<RecipeStage> stages;
  bool has_stages() const { return !stages.empty(); }
};

// --- loading -----------------------------------------------------------------------------------------
// Reads, overrides, expands, fills and validates a recipe file (steps 1-5 above). A recipe with stages is
// refused (it is several runs): use load_staged_recipe.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});

// The same from text. `source` names the text in messages (usually the file path); relative paths resolve
// against base_dir; `name` is what the default output folder is called (out/<name>).
Recipe parse_recipe_text(const std::string& yaml, const std::string& source, const std::string& base_dir,
                         const std::vector<std::string>& overrides = {}, const std::string& name = "run");

// Any recipe, with or without stages. Overrides "stages.<name>.<key.path>=value" address one stage (an
// error without stages or for an unknown name); the others apply to the base.
StagedRecipe load_staged_recipe(const std::string& path, const std::vector<std::string>& overrides = {});
StagedRecipe parse_staged_recipe_text(const std::string& yaml, const std::string& source, const std::string& base_dir,
                                      const std::vector<std::string>& overrides = {}, const std::string& name = "run");

// Expands one path value as in step 3 (exposed for the tests and for paths given on the command line).
// `what` names the value in errors ("model.path").
std::string expand_recipe_path(const std::string& value, const std::string& base_dir, const std::string& what);

// --- checks ------------------------------------------------------------------------------------------
// Combinations that need neither the model nor the world size: exactly one of train.max_steps /
// train.epochs, model.path and data.train present, warmup shape, dtype combinations, batch sizes that can
// never agree, device/backend, evaluation without eval data. Throws naming the keys.
void validate_recipe(const Recipe& recipe);

struct RunPlan {
  int64_t world_size = 1;
  int64_t tp = 1, dp = 1;
  int64_t micro_batch_size = 1, grad_accumulation = 1, global_batch_size = 1;
  std::vector<std::string> derived;  // which batch keys were derived (not given)
  int64_t tokens_per_step = 0;       // global_batch_size x data.max_seq_len (an upper bound)
  std::optional<int64_t> total_steps;   // train.max_steps; unknown with epochs until the data is read
  std::optional<int64_t> warmup_steps;  // when total_steps is known
};

// Parallel layout and batch sizes for `world_size` processes: tp must divide the world size, dp is
// world / tp (an explicit dp must match), and the batch sizes follow global = micro x accum x dp with
// the missing ones derived (none given: micro 1, accumulation 1; only global: micro 1). Throws when
// inconsistent or not divisible, naming the keys and numbers.
RunPlan plan_run(const Recipe& recipe, int64_t world_size);

// Lines describing a plan ("tp 2 x dp 4 = 8 ranks", "micro_batch_size 4 x grad_accumulation 8 x dp 4 =
// global_batch_size 128 sequences (derived: grad_accumulation)", ...), for `validate` and the train log.
std::vector<std::string> describe_run_plan(const Recipe& recipe, const RunPlan& plan);

// Checks that need the model's dimensions: tp must divide num_attention_heads, num_key_value_heads (GQA
// models: the KV heads are split too) and the vocabulary (vocab-parallel embedding and LM head);
// model.trainable `up_proj` needs an MLA model. A refused tp names the valid choices for this world size.
void validate_against_model(const Recipe& recipe, int64_t num_heads, int64_t num_kv_heads, int64_t vocab,
                            bool is_mla, int world_size);

// --- output ------------------------------------------------------------------------------------------
// The resolved recipe as YAML, every key in schema order (unset optional values as null). Parsing it back
// gives an equal Recipe.
std::string dump_recipe_yaml(const Recipe& recipe);

// The resolved recipe as JSON, {group: {key: value}} (nested tables nested), for --json output and logs.
nlohmann::json recipe_to_json(const Recipe& recipe);

// The documented schema as Markdown (one table per group: key, type, default, description): what
// `mlaforge validate --explain` prints and recipes/README.md contains.
std::string explain_recipe_schema();

// Every valid key path ("optim.lr"), in schema order.
std::vector<std::string> recipe_key_paths();

}  // namespace mlaforge
