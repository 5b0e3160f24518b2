// `mlaforge export`: a training checkpoint plus its base model -> one Hugging Face folder (see the header).
#include "trainer/checkpoint_export.h"

#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "convert/transmla.h"
#include "core/error.h"
#include "core/log.h"
#include "core/mmap_file.h"
#include "data/tokenizer.h"
#include "model/checkpoint.h"
#include "model/decoder.h"
#include "model/safetensors.h"
#include "model/tensor_io.h"
#include "model/weight_names.h"
#include "model/weight_reader.h"
#include "trainer/checkpoint_store.h"
#include "trainer/train_checkpoint.h"

namespace mlaforge {
namespace fs = std::filesystem;

namespace {

constexpr const char* kParamPrefix = "param/";

std::string shape_text(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

std::string base_name(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // "run/step-0000012/" -> "step-0000012"
  return p.filename().string();
}

bool same_path(const std::string& a, const std::string& b) {
  std::error_code ec;
  return fs::exists(a, ec) && fs::exists(b, ec) && fs::equivalent(a, b, ec);
}

// A base-model tensor's shape without reading its data (lazy folders: from the safetensors header).
std::vector<int64_t> base_shape(const ModelSource& source, const std::string& hf) {
  if (source.checkpoint) return source.checkpoint->get(hf).info->shape;
  const auto it = source.weights.find(hf);
  MLA_CHECK(it != source.weights.end(), source.path, ": the model has no tensor '", hf, "'");
  return it->second.sizes().vec();
}

// transformers' GenerationConfig as save_pretrained writes it for a model without one of its own
// (_from_model_config: the token ids come from the model's config, here completed from the tokenizer).
nlohmann::json generation_config(const ModelSource& source) {
  const ModelConfig& c = source.config;
  nlohmann::json j = {{"_from_model_config", true}};
  std::optional<int64_t> bos = c.bos_token_id;
  if (!bos && source.tokenizer && source.tokenizer->bos_id) bos = *source.tokenizer->bos_id;
  std::vector<int64_t> eos = c.eos_token_ids;
  if (eos.empty() && source.tokenizer && source.tokenizer->eos_id) eos.push_back(*source.tokenizer->eos_id);
  if (bos) j["bos_token_id"] = *bos;
  if (eos.size() == 1) j["eos_token_id"] = eos.front();
  if (eos.size() > 1) j["eos_token_id"] = eos;
  if (c.pad_token_id) j["pad_token_id"] = *c.pad_token_id;
  return j;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.close();
  MLA_CHECK(out.good(), path.string(), ": cannot write");
}

// Whether the written folder already carries the chat template (tokenizer_config.json or its own file).
bool folder_has_chat_template(const fs::path& dir) {
  if (fs::exists(dir / "chat_template.jinja")) return true;
  const fs::path tok_config = dir / "tokenizer_config.json";
  if (!fs::exists(tok_config)) return false;
  try {
    const auto j = nlohmann::json::parse(read_text_file(tok_config.string()));
    return j.contains("chat_template") && !j["chat_template"].is_null();
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

}  // namespace

uint64_t parse_byte_size(const std::string& text, const std::string& what) {
  std::string s;
  for (char ch : text)
    if (!std::isspace(static_cast<unsigned char>(ch))) s += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  size_t digits = 0;
  while (digits < s.size() && (std::isdigit(static_cast<unsigned char>(s[digits])) || s[digits] == '.')) ++digits;
  const std::string number = s.substr(0, digits), unit = s.substr(digits);
  static const std::map<std::string, double> units = {
      {"", 1},           {"b", 1},           {"kb", 1e3},        {"mb", 1e6},        {"gb", 1e9},
      {"tb", 1e12},      {"kib", 1024.0},    {"mib", 1048576.0}, {"gib", 1073741824.0}, {"tib", 1099511627776.0}};
  const auto u = units.find(unit);
  double value = 0;
  bool parsed = !number.empty() && std::count(number.begin(), number.end(), '.') <= 1 && number != ".";
  if (parsed) value = std::strtod(number.c_str(), nullptr);
  MLA_CHECK(parsed && u != units.end() && value > 0 && std::isfinite(value * u->second), what, ": '", text,
            "' is not a size (examples: 5GB, 500MB, 2GiB, 100KB, or a number of bytes)");
  const double bytes = std::floor(value * u->second);
  MLA_CHECK(bytes >= 1, what, ": '", text, "' is less than one byte");
  return static_cast<uint64_t>(bytes);
}

std::vector<std::string> model_parameter_order(const ModelConfig& config) {
  // Names and their order depend on the structure only (family, MLA, q LoRA, biases, experts, layers,
  // tied head), not on the widths: a twin with width-1 embeddings, hidden state, MLP and one head costs
  // kilobytes where the real model may need gigabytes. The head, rope and latent widths stay (small).
  ModelConfig twin = config;
  twin.vocab_size = 1;
  twin.hidden_size = 1;
  twin.intermediate_size = 1;
  twin.num_attention_heads = 1;
  twin.num_key_value_heads = 1;
  DecoderImpl model(twin);
  std::vector<std::string> names;
  for (const auto& p : model.named_parameters(/*recurse=*/true)) names.push_back(p.key());
  return names;
}

std::string resolve_checkpoint_dir(const std::string& checkpoint, std::vector<std::string>* warnings) {
  MLA_CHECK(fs::is_directory(checkpoint), checkpoint, ": no such checkpoint folder");
  if (fs::exists(fs::path(checkpoint) / kManifestFile)) {
    // A step folder: it must be intact, there is nothing to fall back to.
    return *find_resume_checkpoint(checkpoint, "", warnings, /*verify_checksums=*/true);
  }
  if (parse_step_dir_name(base_name(checkpoint))) read_manifest(checkpoint);  // throws: incomplete
  MLA_CHECK(!fs::exists(fs::path(checkpoint) / "config.json"), checkpoint,
            ": a model folder (config.json), not a training checkpoint; export takes a step folder or a run's output "
            "folder");
  const std::vector<CheckpointDirInfo> dirs = list_checkpoints(checkpoint);
  MLA_CHECK(!dirs.empty(), checkpoint, ": not a training checkpoint (no ", kManifestFile, ", no step-* folders)");
  std::vector<std::string> skipped;
  const auto found = find_resume_checkpoint(checkpoint, "", &skipped, /*verify_checksums=*/true);
  if (warnings) warnings->insert(warnings->end(), skipped.begin(), skipped.end());
  if (!found) {
    std::string why = skipped.empty() ? std::string("none has a manifest") : skipped.front();
    fail(checkpoint, ": no complete, intact checkpoint among its ", dirs.size(), " step folders (", why, ")");
  }
  return *found;
}

nlohmann::json CheckpointExportSummary::to_json() const {
  return {{"checkpoint", checkpoint},
          {"step", step},
          {"warnings", warnings},
          {"model", model_path},
          {"model_format", model_format},
          {"family", family},
          {"mla", mla},
          {"out", out},
          {"dtype", dtype},
          {"fingerprint_checked", fingerprint_checked},
          {"files", files},
          {"weight_files", weight_files},
          {"file_bytes", file_bytes},
          {"tensor_bytes", tensor_bytes},
          {"tensors", tensors},
          {"from_checkpoint", from_checkpoint},
          {"from_model", from_model},
          {"trained_parameters", trained_parameters},
          {"seconds", seconds}};
}

CheckpointExportSummary export_checkpoint(const CheckpointExportOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  CheckpointExportSummary summary;
  summary.out = options.out;
  MLA_CHECK(!options.out.empty(), "export: no output folder given");

  // --- 1. the checkpoint: verified once here, then read without re-checking -------------------------
  summary.checkpoint = resolve_checkpoint_dir(options.checkpoint, &summary.warnings);
  if (!same_path(summary.checkpoint, options.checkpoint))
    log::info("export: ", options.checkpoint, " is a run folder; its newest intact checkpoint is ", summary.checkpoint);
  const CheckpointReader reader = CheckpointReader::open(summary.checkpoint, /*verify_checksums=*/false);
  summary.step = reader.step();
  const nlohmann::json& state = reader.training_state();
  const std::string state_file = (fs::path(summary.checkpoint) / kTrainingStateFile).string();
  std::set<std::string> trained;  // mlaforge names
  for (const std::string& name : reader.names())
    if (name.rfind(kParamPrefix, 0) == 0) trained.insert(name.substr(std::string(kParamPrefix).size()));
  MLA_CHECK(!trained.empty(), summary.checkpoint, ": holds no ", kParamPrefix,
            "* tensors: not a checkpoint written by mlaforge train");

  // --- 2. the base model ----------------------------------------------------------------------------
  std::string model_path = options.model_path;
  if (model_path.empty()) {
    MLA_CHECK(state.contains("model_path") && state["model_path"].is_string() &&
                  !state["model_path"].get<std::string>().empty(),
              state_file, ": no \"model_path\" (the run's base model); pass --model PATH");
    model_path = state["model_path"].get<std::string>();
  }
  MLA_CHECK(fs::exists(model_path), "export: the base model ", model_path,
            options.model_path.empty() ? " (model_path in " + state_file + ")" : std::string(" (--model)"),
            " does not exist; pass --model PATH where the run's model now lives");
  std::string tokenizer = options.tokenizer;
  if (tokenizer.empty() && state.contains("model_tokenizer") && state["model_tokenizer"].is_string()) {
    tokenizer = state["model_tokenizer"].get<std::string>();
    if (!tokenizer.empty() && !fs::exists(tokenizer) && !options.model_path.empty()) {
      // Moved with the model: let the loader find the tokenizer next to it.
      log::warn("export: the run's tokenizer ", tokenizer, " does not exist here; using the one found with ",
                model_path, " (pass --tokenizer to choose)");
      tokenizer.clear();
    }
  }
  MLA_CHECK(tokenizer.empty() || fs::exists(tokenizer), "export: the tokenizer ", tokenizer,
            options.tokenizer.empty() ? " (model_tokenizer in " + state_file + ")" : std::string(" (--tokenizer)"),
            " does not exist; pass --tokenizer PATH");
  MLA_CHECK(!same_path(model_path, options.out) && !same_path(summary.checkpoint, options.out) &&
                !same_path(options.checkpoint, options.out),
            "export: the output folder ", options.out, " is the base model's or the checkpoint's folder");
  MLA_CHECK(!fs::exists(options.out) || fs::is_directory(options.out), options.out, ": exists and is not a folder");
  LoadOptions load;
  load.tokenizer_path = tokenizer;
  load.lazy_weights = true;  // Hugging Face folders: read tensor by tensor while writing
  ModelSource source;
  try {
    source = load_model_source(model_path, load);
  } catch (const Error& e) {
    fail("export: base model: ", e.what());
  }
  const ModelConfig& config = source.config;
  summary.model_path = model_path;
  summary.model_format = source.format;
  summary.family = family_name(config.family);
  summary.mla = config.is_mla();

  // --- 3. does the checkpoint belong to this model? --------------------------------------------------
  const std::vector<WeightName> table = expand_weight_names(config);
  std::map<std::string, const WeightName*> by_ours;
  for (const WeightName& w : table) by_ours[w.ours] = &w;
  for (const std::string& name : trained) {
    const auto it = by_ours.find(name);
    MLA_CHECK(it != by_ours.end(), summary.checkpoint, ": tensor ", kParamPrefix, name, " is not a weight of ",
              model_path, " (", summary.family, config.is_mla() ? ", MLA" : ", GQA",
              "): the checkpoint was trained from another model; pass --model PATH with the run's model");
    const std::vector<int64_t> stored = reader.global_shape(kParamPrefix + name);
    const std::vector<int64_t> expected = base_shape(source, it->second->hf);
    MLA_CHECK(stored == expected, summary.checkpoint, ": tensor ", kParamPrefix, name, " has shape ", shape_text(stored),
              " but ", model_path, "'s ", it->second->hf, " has ", shape_text(expected),
              ": the checkpoint was trained from another model; pass --model PATH with the run's model");
  }
  std::vector<std::string> ordered;  // the optimizer's order: the model's, restricted to the trained names
  for (const std::string& name : model_parameter_order(config))
    if (trained.count(name)) ordered.push_back(name);
  const std::string fingerprint = model_fingerprint(config, ordered);
  if (fingerprint != reader.model_fingerprint()) {
    MLA_CHECK(options.ignore_fingerprint, summary.checkpoint, ": model fingerprint '", reader.model_fingerprint(),
              "' differs from '", fingerprint, "' computed from ", model_path,
              " (its config.json and the checkpoint's trained tensors): a different base model or an edited "
              "config; pass --model PATH with the run's model, or --ignore-fingerprint to export anyway "
              "(the tensor shapes do match)");
    log::warn("export: fingerprint mismatch ignored (--ignore-fingerprint): checkpoint '", reader.model_fingerprint(),
              "', model '", fingerprint, "'");
  } else {
    summary.fingerprint_checked = true;
  }

  // --- 4. the weights, streamed shard by shard ---------------------------------------------------------
  torch::Dtype dtype = torch::kFloat32;
  if (options.dtype == "auto") {
    try {
      dtype = parse_torch_dtype(config.torch_dtype);
    } catch (const Error&) {
      log::warn("export: unknown torch_dtype '", config.torch_dtype, "' in ", model_path, "; writing float32");
    }
  } else {
    dtype = parse_torch_dtype(options.dtype);
  }
  MLA_CHECK(dtype == torch::kFloat32 || dtype == torch::kBFloat16 || dtype == torch::kFloat16,
            "--dtype: ", options.dtype, ": expected auto, float32, bfloat16 or float16");
  summary.dtype = torch_dtype_name(dtype);
  fs::create_directories(options.out);
  const WeightReader base(source);
  StreamingShardWriter writer(options.out, "model", options.max_shard_bytes);
  torch::NoGradGuard no_grad;
  for (const WeightName& w : table) {
    const bool from_checkpoint = trained.count(w.ours) > 0;
    // (out, in) etc.: global shapes, the checkpoint's without vocabulary padding.
    torch::Tensor t = from_checkpoint ? reader.read(kParamPrefix + w.ours) : base.get(w.hf);
    t = t.to(dtype).contiguous();
    writer.add(w.hf, from_torch_dtype(dtype), t.sizes().vec(), t.data_ptr());
    (from_checkpoint ? summary.from_checkpoint : summary.from_model) += 1;
    if (from_checkpoint) summary.trained_parameters += t.numel();
  }
  summary.tensors = static_cast<int64_t>(table.size());
  const ShardedWriteResult written = writer.finish();
  summary.tensor_bytes = written.total_bytes;
  for (const std::string& f : written.files) {
    summary.weight_files.push_back(fs::path(f).filename().string());
    summary.files.push_back(summary.weight_files.back());
  }
  if (written.files.size() > 1) summary.files.push_back("model.safetensors.index.json");

  // --- 5. config, tokenizer, chat template, generation settings ---------------------------------------
  nlohmann::json config_json = config.raw;
  if (options.dtype != "auto") {
    // Keep the config's dtype entry truthful (transformers 5 writes "dtype", older ones "torch_dtype").
    if (config_json.contains("dtype")) config_json["dtype"] = summary.dtype;
    if (config_json.contains("torch_dtype") || !config_json.contains("dtype")) config_json["torch_dtype"] = summary.dtype;
  }
  write_model_metadata(options.out, config_json, source);
  summary.files.push_back("config.json");
  std::set<std::string> copied;
  for (const std::string& f : source.tokenizer_files) copied.insert(fs::path(f).filename().string());
  for (const std::string& name : copied) summary.files.push_back(name);
  for (const auto& [name, contents] : source.generated_tokenizer_files)
    if (!copied.count(name)) summary.files.push_back(name);
  const fs::path out(options.out);
  if (!source.chat_template.empty() && !folder_has_chat_template(out)) {
    write_text(out / "chat_template.jinja", source.chat_template);
    summary.files.push_back("chat_template.jinja");
  }
  if (!copied.count("generation_config.json")) {
    write_text(out / "generation_config.json", generation_config(source).dump(2) + "\n");
    summary.files.push_back("generation_config.json");
  }
  for (const std::string& f : summary.files) {
    std::error_code ec;
    const auto bytes = fs::file_size(out / f, ec);
    if (!ec) summary.file_bytes += bytes;
  }
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  log::info("export: wrote ", options.out, ": ", summary.tensors, " tensors (", summary.from_checkpoint,
            " from the checkpoint), ", summary.weight_files.size(), " weight file(s), ", summary.dtype);
  return summary;
}

}  // namespace mlaforge
