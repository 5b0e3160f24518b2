// Recipes (trainer/recipe.h): every group parsed, defaults, overrides, every error message (with file,
// line and key), path expansion, dump -> parse round trips, batch derivation, model checks, and the
// recipes/ folder itself (every recipe validates, README is the --explain output).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "core/error.h"
#include "tests/support/test_support.h"
#include "trainer/recipe.h"
#include "trainer/recipe_schema.h"

namespace mlaforge {
namespace {

namespace fs = std::filesystem;

// The message of the mlaforge::Error `body` throws; "" when it throws nothing.
std::string error_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The smallest valid recipe, plus `extra` YAML appended (groups must not repeat the minimal ones).
const char* kMinimal =
    "model:\n"
    "  path: /models/student\n"
    "data:\n"
    "  train: /data/train.jsonl\n"
    "train:\n"
    "  max_steps: 100\n";

Recipe parse(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return parse_recipe_text(yaml, "recipe.yaml", "/base", overrides, "myrun");
}

std::string parse_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return error_of([&] { parse(yaml, overrides); });
}

void write_file(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

// A recipe that sets every group to something other than its default.
const char* kFull = R"(# every group, non-default values
model:
  path: models/student-mla
  tokenizer: /tok/tokenizer.json
  dtype: fp32
  trainable: [up_proj, "re:model\\.layers\\.(0|1)\\..*"]
  activation_checkpointing: true
  freeze_dtype: fp32
teacher:
  path: /models/teacher.gguf
  temperature: 2
  kl_ratio: 0.75
data:
  train: [a.jsonl, /abs/b/*.parquet]
  eval: held_out.jsonl
  split: train_sft
  eval_split: test
  format: prompt_response
  columns:
    messages: msgs
    conversations: convs
    system: sys
    prompt: question
    response: code[0]
    text: body
  system_prompt: "You are: a careful solver."
  chat_template: qwen3
  think_policy: strip_all
  trained_roles: [assistant, tool]
  max_seq_len: 16384
  packing: false
  skip_malformed: yes
  max_examples: 500
  cache_dir: cache
  num_workers: 8
  seed: 7
  shuffle: off
train:
  epochs: 2.5
  seed: 3
  device: cpu
  eval_every: 50
  eval_batches: 4
  log_every: 1
  output_dir: runs/full
  export_at_end: false
eval:
  at_start: false
  at_end: false
optim:
  lr: 1.5e-4
  weight_decay: 0.1
  betas: [0.8, 0.99]
  eps: 1.0e-6
  grad_clip: 0.5
  no_decay: ["*.bias", "*norm*"]
  master_weights: false
schedule:
  warmup: 20
  decay: linear
  min_lr_ratio: 0
batch:
  micro_batch_size: 2
  grad_accumulation: 4
parallel:
  tp: 2
  dp: auto
  backend: mpi
  timeout_s: 60
checkpoint:
  every: 100
  keep_last: 0
  keep_every: 300
  resume: none
  async: true
log:
  tensorboard: true
  jsonl: false
  png: false
  progress: never
)";

TEST(RecipeSchema, RowsAreWellFormed) {
  const auto& schema = recipe_detail::recipe_schema();
  std::set<std::string> paths;
  std::set<std::string> groups;
  for (const auto& g : recipe_detail::recipe_groups()) groups.insert(g.name);
  EXPECT_EQ(groups, (std::set<std::string>{"model", "teacher", "data", "train", "eval", "optim", "schedule", "batch",
                                           "parallel", "checkpoint", "log"}));
  for (const auto& spec : schema) {
    EXPECT_TRUE(paths.insert(spec.path).second) << "duplicate key " << spec.path;
    EXPECT_TRUE(recipe_detail::accessor_matches_kind(spec)) << spec.path << " binds a field of another type";
    EXPECT_TRUE(groups.count(spec.group())) << spec.path << " is in no group";
    EXPECT_FALSE(spec.doc.empty()) << spec.path << " is undocumented";
    if (spec.kind == recipe_detail::FieldKind::enumeration) {
      // The default must be one of the allowed values.
      const Recipe defaults;
      const std::string value = spec.get<std::string>(defaults);
      EXPECT_NE(std::find(spec.allowed.begin(), spec.allowed.end(), value), spec.allowed.end()) << spec.path;
    }
  }
  EXPECT_EQ(recipe_key_paths().size(), schema.size());
  EXPECT_GE(schema.size(), 60u);
}

TEST(Recipe, EveryGroupParsed) {
  const Recipe r = parse_recipe_text(kFull, "full.yaml", "/base", {}, "full");
  EXPECT_EQ(r.model.path, "/base/models/student-mla");
  EXPECT_EQ(r.model.tokenizer, "/tok/tokenizer.json");
  EXPECT_EQ(r.model.dtype, "fp32");
  EXPECT_EQ(r.model.trainable, (std::vector<std::string>{"up_proj", "re:model\\.layers\\.(0|1)\\..*"}));
  EXPECT_TRUE(r.model.activation_checkpointing);
  EXPECT_EQ(r.model.freeze_dtype, "fp32");

  EXPECT_EQ(r.teacher.path, "/models/teacher.gguf");
  EXPECT_EQ(r.teacher.temperature, 2.0);
  EXPECT_EQ(r.teacher.kl_ratio, 0.75);

  EXPECT_EQ(r.data.train, (std::vector<std::string>{"/base/a.jsonl", "/abs/b/*.parquet"}));
  EXPECT_EQ(r.data.eval, (std::vector<std::string>{"/base/held_out.jsonl"}));
  EXPECT_EQ(r.data.split, "train_sft");
  EXPECT_EQ(r.data.eval_split, "test");
  EXPECT_EQ(r.data.format, "prompt_response");
  EXPECT_EQ(r.data.columns, (DataColumns{"msgs", "convs", "sys", "question", "code[0]", "body"}));
  EXPECT_EQ(r.data.system_prompt, "You are: a careful solver.");
  EXPECT_EQ(r.data.chat_template, "qwen3");
  EXPECT_EQ(r.data.think_policy, "strip_all");
  EXPECT_EQ(r.data.trained_roles, (std::vector<std::string>{"assistant", "tool"}));
  EXPECT_EQ(r.data.max_seq_len, 16384);
  EXPECT_FALSE(r.data.packing);
  EXPECT_TRUE(r.data.skip_malformed);
  EXPECT_EQ(r.data.max_examples, 500);
  EXPECT_EQ(r.data.cache_dir, "/base/cache");
  EXPECT_EQ(r.data.num_workers, 8);
  EXPECT_EQ(r.data.seed, 7);
  EXPECT_FALSE(r.data.shuffle);

  EXPECT_FALSE(r.train.max_steps);
  EXPECT_EQ(r.train.epochs, 2.5);
  EXPECT_EQ(r.train.seed, 3);
  EXPECT_EQ(r.train.device, "cpu");
  EXPECT_EQ(r.train.eval_every, 50);
  EXPECT_EQ(r.train.eval_batches, 4);
  EXPECT_EQ(r.train.log_every, 1);
  EXPECT_EQ(r.train.output_dir, "/base/runs/full");
  EXPECT_FALSE(r.train.export_at_end);

  EXPECT_FALSE(r.eval.at_start);
  EXPECT_FALSE(r.eval.at_end);

  EXPECT_EQ(r.optim.lr, 1.5e-4);
  EXPECT_EQ(r.optim.weight_decay, 0.1);
  EXPECT_EQ(r.optim.betas, (std::array<double, 2>{0.8, 0.99}));
  EXPECT_EQ(r.optim.eps, 1e-6);
  EXPECT_EQ(r.optim.grad_clip, 0.5);
  EXPECT_EQ(r.optim.no_decay, (std::vector<std::string>{"*.bias", "*norm*"}));
  EXPECT_FALSE(r.optim.master_weights);

  EXPECT_EQ(r.schedule.warmup, 20.0);
  EXPECT_FALSE(r.schedule.warmup_is_ratio());
  EXPECT_EQ(r.schedule.warmup_steps(1000), 20);
  EXPECT_EQ(r.schedule.decay, "linear");
  EXPECT_EQ(r.schedule.min_lr_ratio, 0.0);

  EXPECT_EQ(r.batch.micro_batch_size, 2);
  EXPECT_EQ(r.batch.grad_accumulation, 4);
  EXPECT_FALSE(r.batch.global_batch_size);

  EXPECT_EQ(r.parallel.tp, 2);
  EXPECT_EQ(r.parallel.dp, 0);
  EXPECT_EQ(r.parallel.backend, "mpi");
  EXPECT_EQ(r.parallel.timeout_s, 60);

  EXPECT_EQ(r.checkpoint.every, 100);
  EXPECT_EQ(r.checkpoint.keep_last, 0);
  EXPECT_EQ(r.checkpoint.keep_every, 300);
  EXPECT_EQ(r.checkpoint.resume, "none");
  EXPECT_TRUE(r.checkpoint.async);

  EXPECT_TRUE(r.log.tensorboard);
  EXPECT_FALSE(r.log.jsonl);
  EXPECT_FALSE(r.log.png);
  EXPECT_EQ(r.log.progress, "never");
}

TEST(Recipe, DefaultsAndDerivedDefaults) {
  const Recipe r = parse(kMinimal);
  Recipe expected;
  expected.model.path = "/models/student";
  expected.data.train = {"/data/train.jsonl"};
  expected.train.max_steps = 100;
  // Filled from other values: out/<name> under the current directory, its data_cache, train.seed.
  expected.train.output_dir = (fs::current_path() / "out" / "myrun").string();
  expected.data.cache_dir = expected.train.output_dir + "/data_cache";
  expected.data.seed = 42;
  EXPECT_EQ(r, expected);
  // The documented defaults (trainer/recipe.h) for an R1-distillation run.
  EXPECT_EQ(r.optim.lr, 2e-5);
  EXPECT_EQ(r.optim.weight_decay, 0.0);
  EXPECT_EQ(r.optim.grad_clip, 1.0);
  EXPECT_EQ(r.optim.betas, (std::array<double, 2>{0.9, 0.95}));
  EXPECT_EQ(r.schedule.decay, "cosine");
  EXPECT_EQ(r.schedule.min_lr_ratio, 0.1);
  EXPECT_EQ(r.schedule.warmup, 0.03);
  EXPECT_TRUE(r.schedule.warmup_is_ratio());
  EXPECT_EQ(r.schedule.warmup_steps(100), 3);
  EXPECT_EQ(r.schedule.warmup_steps(1000), 30);
  EXPECT_EQ(r.schedule.warmup_steps(50), 2);  // 1.5 rounds to nearest (away from zero)
  EXPECT_EQ(r.model.dtype, "bf16");
  EXPECT_EQ(r.model.trainable, std::vector<std::string>{"all"});
  EXPECT_EQ(r.teacher.kl_ratio, 0.5);
  EXPECT_EQ(r.data.max_seq_len, 4096);
  EXPECT_EQ(r.parallel.dp, 0);
  EXPECT_EQ(r.checkpoint.resume, "auto");
  // Groups may be present and empty.
  EXPECT_EQ(parse(std::string(kMinimal) + "teacher:\nlog: {}\n"), r);
}

TEST(Recipe, Overrides) {
  const Recipe r = parse(kMinimal, {"optim.lr=3e-5", "optim.betas=[0.9, 0.98]", "model.trainable=up_proj,*.q_b_proj.weight",
                                    "teacher.path=/t/model", "parallel.dp=auto", "parallel.tp=4", "train.max_steps=null",
                                    "train.epochs=1", "data.system_prompt=You are: terse", "data.packing=false",
                                    "batch.global_batch_size=64", "data.train=[x.jsonl, y.jsonl]"});
  EXPECT_EQ(r.optim.lr, 3e-5);
  EXPECT_EQ(r.optim.betas, (std::array<double, 2>{0.9, 0.98}));
  EXPECT_EQ(r.model.trainable, (std::vector<std::string>{"up_proj", "*.q_b_proj.weight"}));
  EXPECT_EQ(r.teacher.path, "/t/model");
  EXPECT_EQ(r.parallel.dp, 0);
  EXPECT_EQ(r.parallel.tp, 4);
  EXPECT_FALSE(r.train.max_steps);
  EXPECT_EQ(r.train.epochs, 1.0);
  EXPECT_EQ(r.data.system_prompt, "You are: terse");  // not YAML-parsed into a mapping
  EXPECT_FALSE(r.data.packing);
  EXPECT_EQ(r.batch.global_batch_size, 64);
  // Relative paths in overrides are relative to the current directory, not to the recipe's folder.
  const std::string cwd = fs::current_path().string();
  EXPECT_EQ(r.data.train, (std::vector<std::string>{cwd + "/x.jsonl", cwd + "/y.jsonl"}));
  // Later overrides win; an override can unset an optional path.
  EXPECT_EQ(parse(kMinimal, {"optim.lr=1", "optim.lr=2"}).optim.lr, 2.0);
  EXPECT_EQ(parse(kMinimal, {"teacher.path=/t", "teacher.path=null"}).teacher.path, "");
  // A pattern YAML would read as an alias is taken verbatim (and split on commas like any scalar).
  EXPECT_EQ(parse(kMinimal, {"model.trainable=*.wq.weight,*.wk.weight"}).model.trainable,
            (std::vector<std::string>{"*.wq.weight", "*.wk.weight"}));
  // The derived defaults follow overridden values.
  const Recipe o = parse(kMinimal, {"train.output_dir=/runs/a", "train.seed=9"});
  EXPECT_EQ(o.data.cache_dir, "/runs/a/data_cache");
  EXPECT_EQ(o.data.seed, 9);

  EXPECT_EQ(parse_error(kMinimal, {"optim.lr=abc"}), "override 'optim.lr=abc': optim.lr: expected a number, got 'abc'");
  EXPECT_EQ(parse_error(kMinimal, {"optim.lerning_rate=1e-4"}),
            "override 'optim.lerning_rate=1e-4': optim.lerning_rate: unknown key; did you mean optim.lr?");
  EXPECT_EQ(parse_error(kMinimal, {"optim.lr"}), "override 'optim.lr': expected key.path=value");
  EXPECT_EQ(parse_error(kMinimal, {"schedule=1"}),
            "override 'schedule=1': schedule: is a group; name one of its keys (warmup, decay, min_lr_ratio)");
  EXPECT_EQ(parse_error(kMinimal, {"schedule.decay=step"}),
            "override 'schedule.decay=step': schedule.decay: 'step' is not one of cosine, linear, constant");
  // Overrides are applied before validation.
  EXPECT_EQ(parse_error(kMinimal, {"train.epochs=3"}),
            "recipe.yaml: train.max_steps (100) and train.epochs (3.0) are both set: set exactly one");
}

TEST(Recipe, UnknownKeysSuggestTheClosest) {
  const std::string yaml = std::string(kMinimal) + "optim:\n  weight_decay: 0.1\n  lerning_rate: 1e-4\n";
  EXPECT_EQ(parse_error(yaml), "recipe.yaml:9:3: optim.lerning_rate: unknown key; did you mean optim.lr?");
  // A key in the wrong group, a plain typo, a nested key, a top-level key outside its group.
  EXPECT_EQ(parse_error(std::string(kMinimal) + "schedule:\n  lr: 1e-4\n"),
            "recipe.yaml:8:3: schedule.lr: unknown key; did you mean optim.lr?");
  EXPECT_EQ(parse_error(std::string(kMinimal) + "batch:\n  micro_bach_size: 2\n"),
            "recipe.yaml:8:3: batch.micro_bach_size: unknown key; did you mean batch.micro_batch_size?");
  EXPECT_EQ(parse_error(std::string(kMinimal) + "parallel:\n  tensor_parallel: 2\n"),
            "recipe.yaml:8:3: parallel.tensor_parallel: unknown key; did you mean parallel.tp?");
  EXPECT_EQ(parse_error(std::string(kMinimal) + "lr: 1e-4\n"), "recipe.yaml:7:1: lr: unknown key; did you mean optim.lr?");
  EXPECT_EQ(parse_error(std::string(kMinimal) + "optimizer:\n  lr: 1e-4\n"),
            "recipe.yaml:7:1: optimizer: unknown group; did you mean optim?");
  EXPECT_EQ(parse_error("data:\n  train: x\n  columns:\n    promt: q\n"),
            "recipe.yaml:4:5: data.columns.promt: unknown key; did you mean data.columns.prompt?");
  // Nothing close: list what the group has.
  EXPECT_EQ(parse_error(std::string(kMinimal) + "eval:\n  zzzzzzzz: 1\n"),
            "recipe.yaml:8:3: eval.zzzzzzzz: unknown key (keys of eval: at_start, at_end)");
  EXPECT_EQ(parse_error(std::string(kMinimal) + "zzzzzzzzzz: 1\n"),
            "recipe.yaml:7:1: zzzzzzzzzz: unknown group (groups: model, teacher, data, train, eval, optim, schedule, "
            "batch, parallel, checkpoint, log)");
}

TEST(Recipe, WrongTypesNameKeyFileAndLine) {
  EXPECT_EQ(parse_error(std::string(kMinimal) + "optim:\n  lr: fast\n"),
            "recipe.yaml:8:7: optim.lr: expected a number, got 'fast'");
  EXPECT_EQ(parse_error(std::string(kMinimal) + "data2: 1\n").find("recipe.yaml:7:1: data2: unknown"), 0u);
  EXPECT_EQ(parse_error("model:\n  path: /m\n  activation_checkpointing: maybe\n"),
            "recipe.yaml:3:29: model.activation_checkpointing: expected true or false, got 'maybe'");
  EXPECT_EQ(parse_error("train:\n  max_steps: 2.5\n"), "recipe.yaml:2:14: train.max_steps: expected an integer, got '2.5'");
  EXPECT_EQ(parse_error("train:\n  max_steps: [1, 2]\n"), "recipe.yaml:2:14: train.max_steps: expected an integer, got a list");
  EXPECT_EQ(parse_error("optim:\n  betas: 0.9\n"), "recipe.yaml:2:10: optim.betas: expected a list of two numbers [a, b], got '0.9'");
  EXPECT_EQ(parse_error("optim:\n  betas: [0.9, 1.0]\n"), "recipe.yaml:2:16: optim.betas: must be in [0, 1), got 1.0");
  EXPECT_EQ(parse_error("model: /models/x\n"),
            "recipe.yaml:1:8: model: expected a mapping of keys (path, tokenizer, dtype, trainable, "
            "activation_checkpointing, freeze_dtype), got '/models/x'");
  EXPECT_EQ(parse_error("data:\n  split: {a: 1}\n"), "recipe.yaml:2:10: data.split: expected a string, got a mapping");
  EXPECT_EQ(parse_error("data:\n  split:\n"), "recipe.yaml:2:3: data.split: expected a string, got null");
  EXPECT_EQ(parse_error("parallel:\n  dp: many\n"), "recipe.yaml:2:7: parallel.dp: expected an integer or auto, got 'many'");
  // Ranges.
  EXPECT_EQ(parse_error("optim:\n  lr: -1e-4\n"), "recipe.yaml:2:7: optim.lr: must be > 0, got -1e-4");
  EXPECT_EQ(parse_error("teacher:\n  kl_ratio: 1.5\n"), "recipe.yaml:2:13: teacher.kl_ratio: must be in [0, 1], got 1.5");
  EXPECT_EQ(parse_error("parallel:\n  tp: 0\n"), "recipe.yaml:2:7: parallel.tp: must be >= 1, got 0");
  // Whole numbers written as floats are accepted for integer keys.
  EXPECT_EQ(parse(std::string("model: {path: /m}\ndata: {train: /d}\ntrain:\n  max_steps: 1e3\n")).train.max_steps, 1000);
  // Not YAML at all; not a mapping; duplicate keys.
  EXPECT_EQ(parse_error("model:\n  path: [unclosed\n").rfind("recipe.yaml:", 0), 0u);
  EXPECT_NE(parse_error("model:\n  path: [unclosed\n").find("invalid YAML"), std::string::npos);
  EXPECT_EQ(parse_error("- a\n- b\n"),
            "recipe.yaml:1:1: a recipe is a mapping of groups (model:, data:, train:, ...), got a list");
  EXPECT_EQ(parse_error("optim:\n  lr: 1\n  lr: 2\n"), "recipe.yaml:3:3: optim.lr: duplicate key");
}

TEST(Recipe, BadEnumValuesListTheAllowedOnes) {
  EXPECT_EQ(parse_error("schedule:\n  decay: cosin\n"),
            "recipe.yaml:2:10: schedule.decay: 'cosin' is not one of cosine, linear, constant (did you mean cosine?)");
  EXPECT_EQ(parse_error("model:\n  dtype: float16\n"), "recipe.yaml:2:10: model.dtype: 'float16' is not one of bf16, fp32");
  EXPECT_EQ(parse_error("data:\n  trained_roles: [assistant, asistant]\n"),
            "recipe.yaml:2:30: data.trained_roles: 'asistant' is not one of system, user, assistant, tool "
            "(did you mean assistant?)");
  const std::string e = parse_error("data:\n  chat_template: vicuna\n");
  EXPECT_EQ(e.rfind("recipe.yaml:2:18: data.chat_template: 'vicuna' is not one of auto, ", 0), 0u) << e;
  EXPECT_NE(e.find("deepseek_r1"), std::string::npos) << e;
}

TEST(Recipe, TrainablePatternsChecked) {
  // Presets, globs, full names and regexes pass; a bare word can only be a misspelt preset.
  EXPECT_EQ(parse(kMinimal, {"model.trainable=up_proj,attention,*.kv_b_proj.weight,lm_head.weight,re:layers\\.0\\..*"})
                .model.trainable,
            (std::vector<std::string>{"up_proj", "attention", "*.kv_b_proj.weight", "lm_head.weight", "re:layers\\.0\\..*"}));
  EXPECT_EQ(parse_error("model:\n  trainable: up_prj\n"),
            "recipe.yaml:2:14: model.trainable: 'up_prj' is neither a preset (up_proj, attention, all) nor a name pattern "
            "(did you mean up_proj?)");
  EXPECT_EQ(parse_error("model:\n  trainable: [all, \"re:(unclosed\"]\n").rfind(
                "recipe.yaml:2:20: model.trainable: 're:(unclosed': invalid regular expression (", 0),
            0u);
  EXPECT_EQ(parse_error("optim:\n  no_decay: [lm_head]\n"),
            "recipe.yaml:2:14: optim.no_decay: 'lm_head' is not a name pattern: it matches no parameter name (write "
            "*lm_head* or a full name)");
}

TEST(Recipe, ImpossibleCombinations) {
  auto with = [](const std::string& extra) { return parse_error(std::string(kMinimal) + extra); };
  // Missing required values.
  EXPECT_EQ(parse_error("data:\n  train: x\ntrain:\n  max_steps: 1\n"),
            "recipe.yaml: model.path: not set: name the model to train (a Hugging Face folder, a .gguf file or a "
            "llama2.c .bin)");
  EXPECT_EQ(parse_error("model:\n  path: m\ntrain:\n  max_steps: 1\n"),
            "recipe.yaml: data.train: not set: name the training data (a file, folder, glob or a list of them)");
  EXPECT_EQ(parse_error(""), "recipe.yaml: model.path: not set: name the model to train (a Hugging Face folder, a "
                             ".gguf file or a llama2.c .bin)");
  // Steps and epochs.
  EXPECT_EQ(parse_error("model: {path: m}\ndata: {train: d}\ntrain:\n  max_steps: 10\n  epochs: 1\n"),
            "recipe.yaml: train.max_steps (10) and train.epochs (1.0) are both set: set exactly one");
  EXPECT_EQ(parse_error("model: {path: m}\ndata: {train: d}\n"),
            "recipe.yaml: train: set one of max_steps and epochs (neither is set)");
  // Warmup.
  EXPECT_EQ(with("schedule:\n  warmup: 2.5\n"),
            "recipe.yaml: schedule.warmup: 2.5 is neither a whole number of steps (>= 1) nor a fraction of the run (< 1)");
  EXPECT_EQ(with("schedule:\n  warmup: 200\n"), "recipe.yaml: schedule.warmup: 200 steps is more than train.max_steps (100)");
  // Precision.
  EXPECT_EQ(with("model:\n  path: m\n  dtype: fp32\n  freeze_dtype: bf16\n"),
            "recipe.yaml:7:1: model: duplicate key");  // (kMinimal has a model group already)
  EXPECT_EQ(parse_error("model: {path: m, dtype: fp32, freeze_dtype: bf16}\ndata: {train: d}\ntrain: {max_steps: 1}\n"),
            "recipe.yaml: model.freeze_dtype: bf16 with model.dtype fp32: a layer cannot mix fp32 and bf16 weights "
            "(use auto, or change model.dtype)");
  EXPECT_EQ(with("optim:\n  master_weights: false\n"),
            "recipe.yaml: optim.master_weights: false with model.dtype bf16 is not supported (bf16 weights lose "
            "updates smaller than their precision; training in bf16 keeps fp32 masters)");
  EXPECT_EQ(parse_error(kMinimal, {"model.dtype=fp32", "optim.master_weights=false"}), "");  // ignored with fp32
  // Device and backend; evaluation without data; checkpoints; empty selections.
  EXPECT_EQ(with("parallel:\n  backend: nccl\n"), "");
  EXPECT_EQ(parse_error(kMinimal, {"parallel.backend=nccl", "train.device=cpu"}),
            "recipe.yaml: parallel.backend: nccl needs GPUs but train.device is cpu (use mpi or auto)");
  EXPECT_EQ(parse_error(kMinimal, {"train.eval_every=10"}),
            "recipe.yaml: train.eval_every: 10 but data.eval is not set (no evaluation data)");
  EXPECT_EQ(parse_error(kMinimal, {"checkpoint.every=200", "checkpoint.keep_every=300"}),
            "recipe.yaml: checkpoint.keep_every (300) is not a multiple of checkpoint.every (200): no checkpoint "
            "would be kept by it");
  EXPECT_EQ(parse_error(kMinimal, {"model.trainable=[]"}),
            "recipe.yaml: model.trainable: empty: name what trains (up_proj, attention, all or patterns)");
  EXPECT_EQ(parse_error(kMinimal, {"data.trained_roles=[]"}), "recipe.yaml: data.trained_roles: empty: nothing would be trained");
}

TEST(Recipe, BatchSizesDerivedAndChecked) {
  struct Case {
    std::vector<std::string> overrides;
    int64_t world;
    int64_t micro, accum, global, dp;
    std::vector<std::string> derived;
  };
  const std::vector<Case> cases = {
      {{}, 1, 1, 1, 1, 1, {"micro_batch_size", "grad_accumulation", "global_batch_size"}},
      {{}, 8, 1, 1, 8, 8, {"micro_batch_size", "grad_accumulation", "global_batch_size"}},
      {{"batch.micro_batch_size=4", "batch.grad_accumulation=8"}, 8, 4, 8, 256, 8, {"global_batch_size"}},
      {{"batch.micro_batch_size=4", "batch.grad_accumulation=8", "parallel.tp=2"}, 8, 4, 8, 128, 4, {"global_batch_size"}},
      {{"batch.micro_batch_size=4", "batch.global_batch_size=128", "parallel.tp=2"}, 8, 4, 8, 128, 4, {"grad_accumulation"}},
      {{"batch.grad_accumulation=8", "batch.global_batch_size=128", "parallel.tp=2"}, 8, 4, 8, 128, 4, {"micro_batch_size"}},
      {{"batch.global_batch_size=64"}, 4, 1, 16, 64, 4, {"micro_batch_size", "grad_accumulation"}},
      {{"batch.micro_batch_size=2"}, 2, 2, 1, 4, 2, {"grad_accumulation", "global_batch_size"}},
      {{"batch.micro_batch_size=2", "batch.grad_accumulation=2", "batch.global_batch_size=16"}, 4, 2, 2, 16, 4, {}},
      {{"parallel.tp=2", "parallel.dp=2"}, 4, 1, 1, 2, 2, {"micro_batch_size", "grad_accumulation", "global_batch_size"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::PrintToString(c.overrides));
    const Recipe r = parse(kMinimal, c.overrides);
    const RunPlan p = plan_run(r, c.world);
    EXPECT_EQ(p.micro_batch_size, c.micro);
    EXPECT_EQ(p.grad_accumulation, c.accum);
    EXPECT_EQ(p.global_batch_size, c.global);
    EXPECT_EQ(p.dp, c.dp);
    EXPECT_EQ(p.tp * p.dp, c.world);
    EXPECT_EQ(p.derived, c.derived);
    EXPECT_EQ(p.tokens_per_step, c.global * 4096);
    EXPECT_EQ(p.total_steps, 100);
    EXPECT_EQ(p.warmup_steps, 3);
  }
  auto plan_error = [](const std::vector<std::string>& overrides, int64_t world) {
    return error_of([&] { plan_run(parse(kMinimal, overrides), world); });
  };
  EXPECT_EQ(plan_error({"batch.micro_batch_size=4", "batch.grad_accumulation=8", "batch.global_batch_size=96"}, 4),
            "batch: micro_batch_size 4 x grad_accumulation 8 x dp 4 = 128 but global_batch_size is 96 (give two of the "
            "three and the third is derived)");
  EXPECT_EQ(plan_error({"batch.micro_batch_size=4", "batch.global_batch_size=100"}, 8),
            "batch: global_batch_size 100 is not divisible by micro_batch_size 4 x dp 8 = 32 (nearest that are: 96, 128)");
  EXPECT_EQ(plan_error({"batch.grad_accumulation=3", "batch.global_batch_size=64"}, 2),
            "batch: global_batch_size 64 is not divisible by grad_accumulation 3 x dp 2 = 6 (nearest that are: 60, 66)");
  EXPECT_EQ(plan_error({"batch.global_batch_size=6"}, 4),
            "batch: global_batch_size 6 is not divisible by micro_batch_size 1 (default) x dp 4 = 4 (nearest that are: 4, 8)");
  EXPECT_EQ(plan_error({"parallel.tp=3"}, 8), "parallel.tp: 3 does not divide the world size 8 (valid: 1, 2, 4, 8)");
  EXPECT_EQ(plan_error({"parallel.tp=2"}, 0), "world size must be at least 1, got 0");
  // With an explicit dp the world size is known, so parsing already checks the batch.
  EXPECT_EQ(parse_error(kMinimal, {"parallel.dp=2", "batch.micro_batch_size=4", "batch.global_batch_size=12"}),
            "recipe.yaml: batch: global_batch_size 12 is not divisible by micro_batch_size 4 x dp 2 = 8 (nearest that "
            "are: 8, 16)");
  EXPECT_EQ(plan_error({"parallel.dp=2"}, 4),
            "parallel: tp 1 x dp 2 = 2 ranks but the world size is 4 (set parallel.dp to auto or 4)");
  // Without dp, three inconsistent values are caught when no world size could reconcile them.
  EXPECT_EQ(parse_error(kMinimal, {"batch.micro_batch_size=4", "batch.grad_accumulation=3", "batch.global_batch_size=100"}),
            "recipe.yaml: batch: global_batch_size 100 is not a multiple of micro_batch_size 4 x grad_accumulation 3 = "
            "12 (nearest: 96, 108)");
}

TEST(Recipe, DescribesThePlan) {
  const Recipe r = parse(kMinimal, {"batch.micro_batch_size=4", "batch.global_batch_size=128", "parallel.tp=2",
                                    "data.max_seq_len=2048"});
  EXPECT_EQ(describe_run_plan(r, plan_run(r, 8)),
            (std::vector<std::string>{"world size 8: tp 2 x dp 4",
                                      "batch: micro_batch_size 4 x grad_accumulation 8 x dp 4 = global_batch_size 128 "
                                      "sequences (derived: grad_accumulation)",
                                      "tokens per step: up to 262144 (128 x data.max_seq_len 2048)",
                                      "steps: 100 (warmup 3, cosine decay to 0.1 x lr)"}));
  const Recipe e = parse(kMinimal, {"train.max_steps=null", "train.epochs=2", "schedule.decay=constant"});
  EXPECT_EQ(describe_run_plan(e, plan_run(e, 1)).back(),
            "steps: 2.0 epochs, counted once the data is read (warmup 3.0% of them, then constant)");
}

TEST(Recipe, ValidateAgainstModel) {
  // SmolLM2-135M: 9 query heads, 3 KV heads, vocabulary 49152.
  auto check = [](const std::vector<std::string>& overrides, int64_t heads, int64_t kv, int64_t vocab, bool mla, int world) {
    return error_of([&] { validate_against_model(parse(kMinimal, overrides), heads, kv, vocab, mla, world); });
  };
  EXPECT_EQ(check({}, 9, 3, 49152, false, 8), "");
  EXPECT_EQ(check({"parallel.tp=3"}, 9, 3, 49152, false, 3), "");
  EXPECT_EQ(check({"parallel.tp=2"}, 9, 3, 49152, false, 8),
            "parallel.tp: 2 does not divide the model's 9 attention heads (num_attention_heads) (valid parallel.tp for "
            "world size 8: 1)");
  EXPECT_EQ(check({"parallel.tp=3"}, 9, 3, 49152, false, 6), "");
  EXPECT_EQ(check({"parallel.tp=4"}, 32, 2, 32000, false, 8),
            "parallel.tp: 4 does not divide the model's 2 KV heads (num_key_value_heads) (valid parallel.tp for world "
            "size 8: 1, 2)");
  // MLA: the latent is replicated, only query heads split.
  EXPECT_EQ(check({"parallel.tp=4"}, 32, 2, 32000, true, 8), "");
  EXPECT_EQ(check({"parallel.tp=8"}, 32, 32, 32001, true, 8),
            "parallel.tp: 8 does not divide the vocabulary size 32001 (the embedding and LM head are split over the "
            "vocabulary) (valid parallel.tp for world size 8: 1)");
  EXPECT_EQ(check({"parallel.tp=16"}, 32, 8, 32000, false, 8),
            "parallel.tp: 16 does not divide the world size 8 (valid parallel.tp for world size 8: 1, 2, 4, 8)");
  EXPECT_EQ(check({"model.trainable=up_proj"}, 9, 3, 49152, false, 1),
            "model.trainable: up_proj selects the MLA up-projections, but /models/student is a GQA model (convert it "
            "first with `mlaforge convert`, or train attention/all)");
  EXPECT_EQ(check({"model.trainable=up_proj"}, 9, 9, 49152, true, 1), "");
}

TEST(Recipe, PathExpansion) {
  ::setenv("MLA_RECIPE_TEST_DIR", "/from/env", 1);
  ::unsetenv("MLA_RECIPE_TEST_UNSET");
  const std::string home = std::getenv("HOME") ? std::getenv("HOME") : "";
  EXPECT_EQ(expand_recipe_path("models/x", "/base/dir", "k"), "/base/dir/models/x");
  EXPECT_EQ(expand_recipe_path("../data/*.jsonl", "/base/dir", "k"), "/base/data/*.jsonl");
  EXPECT_EQ(expand_recipe_path("/abs/./x", "/base", "k"), "/abs/x");
  EXPECT_EQ(expand_recipe_path("${MLA_RECIPE_TEST_DIR}/m.gguf", "/base", "k"), "/from/env/m.gguf");
  EXPECT_EQ(expand_recipe_path("${MLA_RECIPE_TEST_UNSET:-fallback}/m", "/base", "k"), "/base/fallback/m");
  EXPECT_EQ(expand_recipe_path("${MLA_RECIPE_TEST_DIR:-fallback}", "/base", "k"), "/from/env");
  EXPECT_EQ(expand_recipe_path("cost$5", "/base", "k"), "/base/cost$5");
  if (!home.empty() && home[0] == '/') {
    EXPECT_EQ(expand_recipe_path("~/models", "/base", "k"), fs::path(home + "/models").lexically_normal().string());
    EXPECT_EQ(expand_recipe_path("~", "/base", "k"), fs::path(home).lexically_normal().string());
  }
  EXPECT_EQ(error_of([] { expand_recipe_path("${MLA_RECIPE_TEST_UNSET}/m", "/b", "model.path"); }),
            "model.path: environment variable MLA_RECIPE_TEST_UNSET is not set (in '${MLA_RECIPE_TEST_UNSET}/m'; write "
            "${MLA_RECIPE_TEST_UNSET:-fallback} for a default)");
  EXPECT_EQ(error_of([] { expand_recipe_path("${OOPS", "/b", "k"); }), "k: unclosed ${ in '${OOPS'");
  EXPECT_EQ(error_of([] { expand_recipe_path("${1X}", "/b", "k"); }),
            "k: '${1X}' is not a variable reference (${NAME} or ${NAME:-fallback})");
  EXPECT_EQ(error_of([] { expand_recipe_path("${MLA_RECIPE_TEST_UNSET:-}", "/b", "k"); }),
            "k: '${MLA_RECIPE_TEST_UNSET:-}' expands to an empty path");
  // In a recipe the error has the line.
  EXPECT_EQ(parse_error("model:\n  path: ${MLA_RECIPE_TEST_UNSET}/m\n"),
            "recipe.yaml:2:9: model.path: environment variable MLA_RECIPE_TEST_UNSET is not set (in "
            "'${MLA_RECIPE_TEST_UNSET}/m'; write ${MLA_RECIPE_TEST_UNSET:-fallback} for a default)");
  // Keywords of checkpoint.resume stay keywords; anything else is a path.
  EXPECT_EQ(parse(kMinimal, {"checkpoint.resume=none"}).checkpoint.resume, "none");
  EXPECT_EQ(parse(std::string(kMinimal) + "checkpoint:\n  resume: runs/a/step_100\n").checkpoint.resume,
            "/base/runs/a/step_100");
  ::unsetenv("MLA_RECIPE_TEST_DIR");
}

TEST(Recipe, LoadResolvesRelativeToTheRecipeFolder) {
  const std::string dir = testing::make_temp_dir("recipe");
  write_file(dir + "/recipes/sub/r1.yaml",
             "model:\n  path: ../../models/student\n  tokenizer: tok.json\n"
             "teacher:\n  path: /abs/teacher\n"
             "data:\n  train: [data/a.jsonl, ../b.txt]\n"
             "train:\n  max_steps: 5\n  output_dir: runs/r1\n");
  const Recipe r = load_recipe(dir + "/recipes/sub/r1.yaml");
  EXPECT_EQ(r.model.path, dir + "/models/student");
  EXPECT_EQ(r.model.tokenizer, dir + "/recipes/sub/tok.json");
  EXPECT_EQ(r.teacher.path, "/abs/teacher");
  EXPECT_EQ(r.data.train, (std::vector<std::string>{dir + "/recipes/sub/data/a.jsonl", dir + "/recipes/b.txt"}));
  EXPECT_EQ(r.train.output_dir, dir + "/recipes/sub/runs/r1");
  EXPECT_EQ(r.data.cache_dir, dir + "/recipes/sub/runs/r1/data_cache");
  // Without output_dir: out/<file name> under the current directory.
  write_file(dir + "/r2.yaml", "model: {path: m}\ndata: {train: d}\ntrain: {epochs: 1}\n");
  EXPECT_EQ(load_recipe(dir + "/r2.yaml").train.output_dir, (fs::current_path() / "out" / "r2").string());
  // Errors from a file name the file as given.
  write_file(dir + "/bad.yaml", "model: {path: m}\ndata: {train: d}\ntrain: {epochs: 1}\noptim:\n  lerning_rate: 1\n");
  EXPECT_EQ(error_of([&] { load_recipe(dir + "/bad.yaml"); }),
            dir + "/bad.yaml:5:3: optim.lerning_rate: unknown key; did you mean optim.lr?");
  EXPECT_EQ(error_of([&] { load_recipe(dir + "/missing.yaml"); }),
            dir + "/missing.yaml: cannot open recipe (no such file or directory?)");
}

TEST(Recipe, DumpParseRoundTrip) {
  std::vector<Recipe> recipes = {parse(kMinimal), parse_recipe_text(kFull, "full.yaml", "/base", {}, "full")};
  // Strings that YAML would read as something else, or that need quoting.
  recipes.push_back(parse(kMinimal, {"data.system_prompt=null", "data.split=yes", "data.columns.text=123",
                                     "data.columns.prompt=a: b # not a comment", "data.eval_split=\"~\"",
                                     "model.trainable=[\"re:model\\\\.layers\\\\.(0|1)\\\\..*\", \"*lm_head*\"]",
                                     "optim.lr=0.1", "optim.eps=1e-300", "teacher.temperature=0.7",
                                     "schedule.warmup=0.333333333333", "train.max_steps=123456789012"}));
  recipes.back().data.system_prompt = "Think step by step.\n\tThen answer: \"quoted\", 'single', ünïcødé, 日本語";
  recipes.back().data.columns.response = "";
  for (const auto& r : recipes) {
    const std::string yaml = dump_recipe_yaml(r);
    SCOPED_TRACE(yaml);
    const Recipe back = parse_recipe_text(yaml, "dump.yaml", "/elsewhere", {}, "other");
    EXPECT_EQ(back, r);
    EXPECT_EQ(dump_recipe_yaml(back), yaml);
  }
  // What the dump looks like: every group, in order, with every key.
  const std::string yaml = dump_recipe_yaml(recipes[0]);
  EXPECT_EQ(yaml.rfind("model:\n  path: /models/student\n  tokenizer: null\n  dtype: bf16\n  trainable: [all]\n", 0), 0u)
      << yaml;
  EXPECT_NE(yaml.find("\noptim:\n  lr: 2.0e-05\n  weight_decay: 0.0\n  betas: [0.9, 0.95]\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("\n  columns:\n    messages: messages\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("\n  dp: auto\n"), std::string::npos) << yaml;
  for (const auto& key : recipe_key_paths()) {
    const std::string leaf = key.substr(key.rfind('.') + 1);
    const std::string indent(2 * static_cast<size_t>(std::count(key.begin(), key.end(), '.')), ' ');
    EXPECT_NE(yaml.find("\n" + indent + leaf + ":"), std::string::npos) << key;
  }
}

TEST(Recipe, ExplainDocumentsEveryKey) {
  const std::string md = explain_recipe_schema();
  for (const auto& key : recipe_key_paths()) EXPECT_NE(md.find("| `" + key + "` |"), std::string::npos) << key;
  EXPECT_NE(md.find("| `optim.lr` | number | `2.0e-05` | Peak learning rate"), std::string::npos);
  EXPECT_NE(md.find("| `schedule.decay` | one of cosine, linear, constant | `cosine` |"), std::string::npos);
  EXPECT_NE(md.find("| `parallel.dp` | integer or auto | `auto` |"), std::string::npos);
  EXPECT_NE(md.find("\n## checkpoint\n"), std::string::npos);
}

// Every recipe shipped in recipes/ (and its subfolders; each stage of a recipe with stages) parses, validates
// and plans for its smallest world, and recipes/README.md is
// exactly the --explain output (regenerate it with `mlaforge validate --explain > recipes/README.md`).
TEST(Recipe, ShippedRecipesValidate) {
  // The demo recipe names the default model through this variable (scripts/demo.sh exports it).
  ::setenv("MLAFORGE_DEFAULT_MODEL", "/models/default.gguf", 0);
  const fs::path folder = fs::path(testing::source_dir()) / "recipes";
  std::vector<fs::path> files;  // recipes/ and its subfolders (recipes/r1/...)
  for (const auto& entry : fs::recursive_directory_iterator(folder)) {
    if (entry.path().extension() == ".yaml" || entry.path().extension() == ".yml") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  ASSERT_FALSE(files.empty());
  EXPECT_TRUE(std::count(files.begin(), files.end(), folder / "demo-cpu.yaml"));
  // The runs of a recipe: itself, or each of its stages.
  auto runs_of = [](const StagedRecipe& staged) {
    std::vector<Recipe> runs;
    for (const auto& stage : staged.stages) runs.push_back(stage.recipe);
    if (runs.empty()) runs.push_back(staged.base);
    return runs;
  };
  for (const auto& file : files) {
    SCOPED_TRACE(file.string());
    StagedRecipe staged;
    ASSERT_NO_THROW(staged = load_staged_recipe(file.string())) << error_of([&] { load_staged_recipe(file.string()); });
    for (const Recipe& r : runs_of(staged)) {
      const int64_t world = r.parallel.dp > 0 ? r.parallel.tp * r.parallel.dp : r.parallel.tp;
      EXPECT_NO_THROW(plan_run(r, world)) << error_of([&] { plan_run(r, world); });
      EXPECT_EQ(parse_recipe_text(dump_recipe_yaml(r), "dump", "/", {}, "x"), r);
    }
  }
  for (const Recipe& demo : runs_of(load_staged_recipe((folder / "demo-cpu.yaml").string()))) {
    EXPECT_EQ(demo.train.device, "cpu");
    EXPECT_EQ(demo.teacher.path, std::getenv("MLAFORGE_DEFAULT_MODEL"));
    for (const auto& path : demo.data.train) EXPECT_TRUE(fs::exists(path)) << path;
    for (const auto& path : demo.data.eval) EXPECT_TRUE(fs::exists(path)) << path;
  }

  std::ifstream readme(folder / "README.md");
  ASSERT_TRUE(readme) << "recipes/README.md is missing";
  std::stringstream text;
  text << readme.rdbuf();
  EXPECT_EQ(text.str(), explain_recipe_schema())
      << "recipes/README.md is out of date: regenerate it with `mlaforge validate --explain > recipes/README.md`";
}

}  // namespace
}  // namespace mlaforge
