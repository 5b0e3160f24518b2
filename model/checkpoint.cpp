#include "model/checkpoint.h"

#include <torch/torch.h>

#include <filesystem>

#include "core/error.h"
#include "core/log.h"
#include "core/mmap_file.h"
#include "data/tokenizer.h"
#include "model/tensor_io.h"

namespace fs = std::filesystem;

namespace mlaforge {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

}  // namespace

ModelSource load_hf_folder(const std::string& dir, const LoadOptions& options) {
  ModelSource src;
  src.path = dir;
  src.format = "hf";
  const std::string config_path = (fs::path(dir) / "config.json").string();
  MLA_CHECK(file_exists(config_path), dir, ": no config.json (expected a Hugging Face model folder)");
  src.config = ModelConfig::from_file(config_path);

  const bool has_safetensors = file_exists((fs::path(dir) / "model.safetensors").string()) ||
                               file_exists((fs::path(dir) / "model.safetensors.index.json").string());
  if (!has_safetensors && file_exists((fs::path(dir) / "pytorch_model.bin").string()))
    fail(dir, ": only pytorch_model.bin found; mlaforge reads safetensors (convert with "
              "`model.save_pretrained(dir, safe_serialization=True)`)");
  auto checkpoint = std::make_shared<SafetensorsCheckpoint>(SafetensorsCheckpoint::open(dir));
  if (options.lazy_weights) {
    src.checkpoint = checkpoint;
  } else {
    src.weights = load_safetensors_state(*checkpoint);
  }

  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                           "generation_config.json", "chat_template.jinja"}) {
    const std::string p = (fs::path(dir) / name).string();
    if (file_exists(p)) src.tokenizer_files.push_back(p);
  }
  const std::string tok_config = (fs::path(dir) / "tokenizer_config.json").string();
  if (file_exists(tok_config)) {
    try {
      auto j = nlohmann::json::parse(read_text_file(tok_config));
      if (j.contains("chat_template") && j["chat_template"].is_string()) src.chat_template = j["chat_template"];
    } catch (const nlohmann::json::exception& e) {
      fail(tok_config, ": not valid JSON (", e.what(), ")");
    }
  }
  const std::string template_file = (fs::path(dir) / "chat_template.jinja").string();
  if (src.chat_template.empty() && file_exists(template_file)) src.chat_template = read_text_file(template_file);

  if (options.load_tokenizer) {
    const std::string tok = options.tokenizer_path.empty() ? dir : options.tokenizer_path;
    if (!options.tokenizer_path.empty() || file_exists((fs::path(dir) / "tokenizer.json").string()) ||
        file_exists((fs::path(dir) / "tokenizer.model").string())) {
      src.tokenizer = load_tokenizer(tok);
    }
  }
  return src;
}

ModelSource load_model_source(const std::string& path, const LoadOptions& options) {
  MLA_CHECK(fs::exists(path), path, ": no such file or directory");
  ModelSource src;
  if (is_directory(path)) {
    src = load_hf_folder(path, options);
  } else if (ends_with(lower(path), ".gguf")) {
    src = import_gguf(path, options);
  } else if (ends_with(lower(path), ".bin")) {
    src = import_llama2c(path, options);
  } else if (ends_with(lower(path), ".safetensors")) {
    fail(path, ": a bare safetensors file has no config; pass the folder holding config.json");
  } else {
    fail(path, ": unrecognised model format (expected a Hugging Face folder, a .gguf file or a llama2.c .bin)");
  }
  log::debug("loaded ", src.weights.size(), " tensors from ", path, " (", src.format, ")");
  return src;
}

}  // namespace mlaforge
