#pragma once
// Loading a model from disk, whatever its format, into one in-memory form: a validated ModelConfig plus
// the weights under their Hugging Face names and in Hugging Face layout (rotate_half RoPE for Q/K rows).
// Formats: a Hugging Face folder (config.json + safetensors), a GGUF file, a llama2.c .bin checkpoint.
#include <map>
#include <memory>
#include <string>

#include "model/config.h"

namespace at { class Tensor; }

namespace mlaforge {

class Tokenizer;
class SafetensorsCheckpoint;

// Hugging Face tensor name -> tensor. Kept ordered so iteration (and anything written from it) is
// deterministic.
using StateDict = std::map<std::string, at::Tensor>;

struct LoadOptions {
  // Tokenizer to use instead of the one found with the model (required for llama2.c .bin files).
  std::string tokenizer_path;
  // Load the tokenizer at all (eval/generate need it; conversion of weights alone does not).
  bool load_tokenizer = true;
  // Hugging Face folders only: leave `weights` empty and keep the mapped checkpoint in
  // ModelSource::checkpoint, to be read tensor by tensor (WeightReader; streaming conversion).
  bool lazy_weights = false;
};

struct ModelSource {
  std::string path;    // what the user named
  std::string format;  // "hf", "gguf", "llama2c"
  ModelConfig config;
  StateDict weights;                     // HF names and layout; dtype as stored (GGUF: float32 after dequant)
  // Set instead of `weights` when loaded with lazy_weights (read through WeightReader).
  std::shared_ptr<const SafetensorsCheckpoint> checkpoint;
  std::shared_ptr<Tokenizer> tokenizer;  // null when none was found or asked for
  std::string chat_template;             // Jinja template text if the model ships one
  // Extra files to copy when exporting (tokenizer.json, tokenizer_config.json, ...): absolute paths.
  std::vector<std::string> tokenizer_files;
  // Tokenizer files made from an embedded vocabulary (GGUF): file name -> contents, written on export
  // where tokenizer_files has no file of that name.
  std::map<std::string, std::string> generated_tokenizer_files;
};

// Detects the format from the path and loads it. Throws mlaforge::Error naming the file on bad input.
ModelSource load_model_source(const std::string& path, const LoadOptions& options = {});

// Per-format loaders (model/checkpoint_hf.cpp, model/import_gguf.cpp, model/import_llama2c.cpp).
ModelSource load_hf_folder(const std::string& dir, const LoadOptions& options);
ModelSource import_gguf(const std::string& path, const LoadOptions& options);
ModelSource import_llama2c(const std::string& path, const LoadOptions& options);

}  // namespace mlaforge
