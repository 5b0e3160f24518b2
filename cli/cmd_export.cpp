// mlaforge export CHECKPOINT OUT: a training checkpoint consolidated into a Hugging Face folder
// (trainer/checkpoint_export.h).
#include <cstdio>
#include <iostream>

#include "cli/common.h"
#include "core/error.h"
#include "trainer/checkpoint_export.h"

namespace mlaforge::cli {
namespace {

struct ExportCommandOptions {
  CheckpointExportOptions exp;
  std::string shard_size = "5GB";
};

void print_text(const CheckpointExportSummary& s, const std::string& asked) {
  auto& o = std::cout;
  o << "checkpoint   " << s.checkpoint << " (step " << s.step << ")";
  if (s.checkpoint != asked) o << ", the newest intact one in " << asked;
  o << "\n";
  for (const std::string& w : s.warnings) o << "  skipped    " << w << "\n";
  o << "base model   " << s.model_path << " (" << s.model_format << ", " << s.family << (s.mla ? ", MLA" : ", GQA")
    << ")\n";
  o << "fingerprint  " << (s.fingerprint_checked ? "matches the model" : "MISMATCH ignored (--ignore-fingerprint)")
    << "\n";
  o << "tensors      " << s.tensors << ": " << s.from_checkpoint << " from the checkpoint ("
    << human_count(static_cast<double>(s.trained_parameters)) << " parameters), " << s.from_model
    << " from the base model; " << s.dtype << ", " << human_bytes(static_cast<double>(s.tensor_bytes)) << " in "
    << s.weight_files.size() << (s.weight_files.size() == 1 ? " file" : " shards") << "\n";
  o << "wrote        " << s.out << ": ";
  for (size_t i = 0; i < s.files.size(); ++i) o << (i ? ", " : "") << s.files[i];
  char seconds[32];
  std::snprintf(seconds, sizeof(seconds), "%.2f s", s.seconds);
  o << " (" << human_bytes(static_cast<double>(s.file_bytes)) << ", " << seconds << ")" << std::endl;
}

}  // namespace

void register_export(CLI::App& app) {
  auto o = std::make_shared<ExportCommandOptions>();
  auto* cmd = app.add_subcommand(
      "export",
      "Write a training checkpoint (step folder, or a run folder: its newest intact checkpoint) as a Hugging Face "
      "folder: sharded safetensors, config.json, generation_config.json, tokenizer files, chat template");
  cmd->add_option("checkpoint", o->exp.checkpoint, "step folder (holds manifest.json) or a run's output folder")
      ->required();
  cmd->add_option("out", o->exp.out, "output folder (Hugging Face layout)")->required();
  cmd->add_option("--model", o->exp.model_path,
                  "base model (default: the run's model.path, from training_state.json); for a checkpoint moved "
                  "to another machine");
  cmd->add_option("--tokenizer", o->exp.tokenizer, "tokenizer file or folder (default: the run's model.tokenizer)");
  cmd->add_option("--dtype", o->exp.dtype, "weights dtype: auto (the base model's torch_dtype), float32, bfloat16, float16")
      ->capture_default_str();
  cmd->add_option("--shard-size", o->shard_size, "largest safetensors shard: 5GB, 500MB, 2GiB, ... (bytes if no unit)")
      ->capture_default_str();
  cmd->add_flag("--ignore-fingerprint", o->exp.ignore_fingerprint,
                "export even when the model fingerprint differs (the base model re-saved in another format); "
                "tensor shapes are still checked");
  cmd->add_flag("--json", global_options().json, "machine-readable output");
  cmd->callback([o] {
    run_command([&] {
      o->exp.max_shard_bytes = parse_byte_size(o->shard_size, "--shard-size");
      const CheckpointExportSummary s = export_checkpoint(o->exp);
      if (global_options().json) {
        print_json(s.to_json());
      } else {
        print_text(s, o->exp.checkpoint);
      }
    });
  });
}

}  // namespace mlaforge::cli
