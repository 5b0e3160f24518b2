#pragma once
// `mlaforge export CHECKPOINT OUT`: a training checkpoint (trainer/train_checkpoint.h) consolidated into a
// Hugging Face folder that transformers loads: DeepSeek-V3 format for an MLA model (what `convert` writes),
// the model's own format for a GQA one.
//
// A checkpoint stores only the TRAINABLE weights (param/<mlaforge name>, float32 global tensors: fp32
// masters in bf16 runs, no vocabulary padding); frozen weights are those of the run's base model, named by
// training_state.json's "model_path" (and "model_tokenizer"). The export reads that model lazily (Hugging
// Face folders tensor by tensor; GGUF and llama2.c files are loaded whole), checks that the checkpoint
// belongs to it, and streams every weight of the weight table (model/weight_names.h), in table order, to
// sharded safetensors: the checkpoint's tensor where it has one, else the base model's, cast to the output
// dtype. Then config.json (as loaded; its dtype entry follows --dtype), the tokenizer files (copied, or
// generated for llama2.c/GGUF sources), the chat template, and a generation_config.json when the source
// has none. With the base model's dtype the result is bitwise what the run's own end-of-run export
// (OUT/model) holds, except that frozen weights of a bf16 run on an fp32 model come out unrounded here.
//
// The checkpoint belongs to the model when (1) every param/ tensor names a weight of the model's table with
// the same global shape (else an error naming the tensor), and (2) the manifest's model fingerprint equals
// model_fingerprint(config, trained names in the optimizer's order), which is the model's parameter order
// restricted to the trained names (model_parameter_order). (2) also catches a config.json edited since
// (rope, eps...); ignore_fingerprint skips it for a base model re-saved in another format.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"

namespace mlaforge {

struct CheckpointExportOptions {
  std::string checkpoint;   // a step folder (holds manifest.json) or a run's output folder
  std::string out;          // the Hugging Face folder to write (created; must not be the base model's)
  std::string model_path;   // overrides training_state.json "model_path" (a checkpoint moved elsewhere)
  std::string tokenizer;    // overrides training_state.json "model_tokenizer"
  std::string dtype = "auto";  // auto (the base config's torch_dtype), float32, bfloat16, float16
  uint64_t max_shard_bytes = 5'000'000'000;  // transformers' default "5GB"
  bool ignore_fingerprint = false;
};

struct CheckpointExportSummary {
  std::string checkpoint;     // the step folder exported
  int64_t step = 0;
  std::vector<std::string> warnings;  // skipped step folders of a run folder (find_resume_checkpoint)
  std::string model_path;     // the base model read
  std::string model_format;   // hf, gguf, llama2c
  std::string family;         // deepseek_v3, llama, ...
  bool mla = false;
  std::string out;
  std::string dtype;          // float32, bfloat16, float16
  bool fingerprint_checked = false;
  std::vector<std::string> files;  // names inside `out`, in writing order
  std::vector<std::string> weight_files;  // the safetensors shards (names)
  uint64_t file_bytes = 0;    // bytes of every file written
  uint64_t tensor_bytes = 0;  // tensor data bytes (the index's total_size)
  int64_t tensors = 0;
  int64_t from_checkpoint = 0;  // tensors taken from the checkpoint (the trained ones)
  int64_t from_model = 0;       // tensors taken from the base model (frozen)
  int64_t trained_parameters = 0;
  double seconds = 0;

  nlohmann::json to_json() const;
};

// Writes the folder as described above. Throws mlaforge::Error naming the file or tensor at fault: not a
// checkpoint, incomplete or corrupt (checksum), no usable checkpoint in a run folder, base model missing,
// a trained tensor the model lacks or with another shape, a fingerprint mismatch.
CheckpointExportSummary export_checkpoint(const CheckpointExportOptions& options);

// The step folder CHECKPOINT stands for, every file's size and checksum verified: CHECKPOINT itself when it
// holds manifest.json, else (a run folder) its newest complete, valid step folder; skipped folders are
// appended to `warnings`. Throws naming the folder/file when there is none or the named one is damaged.
std::string resolve_checkpoint_dir(const std::string& checkpoint, std::vector<std::string>* warnings = nullptr);

// The names of a Decoder's parameters for this config in registration order (what named_parameters()
// and therefore the optimizer list), found by building the same module tree with tiny widths.
std::vector<std::string> model_parameter_order(const ModelConfig& config);

// "5GB", "500MB", "100KB" (powers of 1000, as transformers' max_shard_size), "2GiB", "512MiB" (powers of
// 1024), "1.5GB", or a plain number of bytes; case-insensitive. Throws naming `what` on anything else.
uint64_t parse_byte_size(const std::string& text, const std::string& what = "--shard-size");

}  // namespace mlaforge
