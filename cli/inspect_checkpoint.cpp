#include "cli/inspect_checkpoint.h"

#include <filesystem>
#include <iostream>
#include <map>

#include "cli/common.h"
#include "core/error.h"
#include "core/mmap_file.h"
#include "model/tensor_io.h"
#include "trainer/checkpoint_store.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace mlaforge::cli {
namespace {

std::string base_name(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // "out/step-0000120/" -> "step-0000120"
  return p.filename().string();
}

bool has_step_folder(const std::string& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (parse_step_dir_name(entry.path().filename().string()) && entry.is_directory(ec)) return true;
  return false;
}

// The keys worth one line: top-level scalars of training_state.json, and those of its "layout" object
// (tp, dp, world_size...), whatever the trainer chose to store. Multi-line text (the resolved recipe) is
// left to --json.
json state_summary(const json& state) {
  json out = json::object();
  if (!state.is_object()) return out;
  for (const auto& [key, value] : state.items())
    if (value.is_primitive() && !value.is_null() &&
        !(value.is_string() && value.get<std::string>().find('\n') != std::string::npos))
      out[key] = value;
  if (state.contains("layout") && state.at("layout").is_object())
    for (const auto& [key, value] : state.at("layout").items())
      if (value.is_primitive() && !value.is_null() && !out.contains(key)) out[key] = value;
  return out;
}

json describe_tensors(const std::string& step_dir) {
  const CheckpointReader reader = CheckpointReader::open(step_dir, /*verify_checksums=*/false);
  int64_t slabs = 0;
  uint64_t bytes = 0;
  std::map<std::string, uint64_t> by_dtype;
  for (const std::string& name : reader.names()) {
    const auto stored = reader.slabs(name);
    slabs += static_cast<int64_t>(stored.size());
    const uint64_t esize = at::elementSize(reader.dtype(name));
    for (const StoredSlab& s : stored) {
      uint64_t n = esize;
      for (int64_t d : s.shape) n *= static_cast<uint64_t>(d);
      bytes += n;
      by_dtype[std::string(dtype_name(from_torch_dtype(reader.dtype(name))))] += n;
    }
  }
  return {{"count", reader.names().size()}, {"slabs", slabs}, {"bytes", bytes}, {"bytes_by_dtype", by_dtype}};
}

json describe_step_dir(const std::string& step_dir) {
  const CheckpointManifest m = read_manifest(step_dir);
  json files = json::array();
  int64_t ok_count = 0;
  std::string first_problem;
  for (const FileRecord& r : m.files) {
    const std::string problem = check_file(step_dir, r, /*verify_checksum=*/true);
    json f = r.to_json();
    f["status"] = problem.empty() ? "OK" : "FAILED";
    if (problem.empty()) {
      ++ok_count;
    } else {
      f["problem"] = problem;
      if (first_problem.empty()) first_problem = problem;
    }
    files.push_back(f);
  }
  json j = {{"checkpoint", step_dir},
            {"format", m.format},
            {"version", m.version},
            {"step", m.step},
            {"model_fingerprint", m.model_fingerprint},
            {"created_unix", m.created_unix},
            {"total_bytes", m.total_bytes()},
            {"files", files},
            {"files_ok", ok_count},
            {"ok", ok_count == static_cast<int64_t>(m.files.size())}};
  if (!first_problem.empty()) j["first_problem"] = first_problem;
  if (const FileRecord* state = m.find(kTrainingStateFile); state && check_file(step_dir, *state, false).empty()) {
    try {
      j["training_state"] = json::parse(read_text_file((fs::path(step_dir) / kTrainingStateFile).string()));
    } catch (const json::parse_error&) {
      j["training_state"] = nullptr;
    }
  }
  if (j["ok"].get<bool>()) {
    // Opening the rank files also checks their slab metadata; a failure there fails the checkpoint.
    try {
      j["tensors"] = describe_tensors(step_dir);
    } catch (const Error& e) {
      j["ok"] = false;
      j["first_problem"] = e.what();
    }
  }
  return j;
}

}  // namespace

bool is_checkpoint_path(const std::string& path) {
  if (!is_directory(path)) return false;
  const fs::path p(path);
  if (file_exists((p / kManifestFile).string()) || file_exists((p / kLatestFile).string())) return true;
  if (file_exists((p / "config.json").string())) return false;  // a model folder
  return parse_step_dir_name(base_name(path)).has_value() || has_step_folder(path);
}

json describe_checkpoint(const std::string& path) {
  MLA_CHECK(is_directory(path), path, ": no such checkpoint folder");
  if (file_exists((fs::path(path) / kManifestFile).string()) || parse_step_dir_name(base_name(path))) {
    json j = describe_step_dir(path);
    j["path"] = path;
    return j;
  }
  // A run folder: list its step folders, examine the one `latest` names, else the newest complete one.
  const std::vector<CheckpointDirInfo> dirs = list_checkpoints(path);
  const std::optional<std::string> latest = read_latest(path);
  json list = json::array();
  const CheckpointDirInfo* chosen = nullptr;
  for (const auto& d : dirs) {
    list.push_back({{"name", d.name}, {"step", d.step}, {"complete", d.complete}, {"latest", latest == d.name}});
    if (d.complete && (!chosen || chosen->name != latest)) chosen = &d;  // keep `latest` once seen
  }
  MLA_CHECK(chosen != nullptr, path, ": no complete checkpoint (", dirs.size(),
            " step folders, none with a valid manifest.json)");
  json j = describe_step_dir(chosen->path);
  j["path"] = path;
  j["run"] = {{"root", path}, {"latest", latest ? json(*latest) : json(nullptr)}, {"checkpoints", list}};
  return j;
}

void print_checkpoint_text(const json& j) {
  auto& o = std::cout;
  if (j.contains("run")) {
    const auto& run = j["run"];
    o << "run          " << run["root"].get<std::string>() << ": " << run["checkpoints"].size()
      << " step folders, latest " << (run["latest"].is_null() ? "(none)" : run["latest"].get<std::string>()) << "\n";
    for (const auto& c : run["checkpoints"])
      o << "  " << c["name"].get<std::string>() << "  " << (c["complete"].get<bool>() ? "complete" : "incomplete")
        << (c["latest"].get<bool>() ? "  (latest)" : "") << "\n";
  }
  o << "checkpoint   " << j["checkpoint"].get<std::string>() << " (" << j["format"].get<std::string>() << " v"
    << j["version"] << ")\n";
  o << "step         " << j["step"] << "\n";
  o << "fingerprint  " << j["model_fingerprint"].get<std::string>() << "\n";
  if (j.contains("training_state")) {
    o << "state       ";
    json summary = state_summary(j["training_state"]);
    if (summary.empty()) o << " (no scalar entries)";
    // The usual keys first, in this order, then the rest alphabetically.
    for (const char* key : {"step", "tokens", "epoch", "world_size", "tp", "dp"}) {
      if (!summary.contains(key)) continue;
      o << " " << key << "=" << summary[key].dump();
      summary.erase(key);
    }
    for (const auto& [key, value] : summary.items()) o << " " << key << "=" << value.dump();
    o << "\n";
  }
  if (j.contains("tensors")) {
    const auto& t = j["tensors"];
    o << "tensors      " << t["count"] << " global tensors in " << t["slabs"] << " slabs, "
      << human_bytes(t["bytes"].get<double>());
    for (const auto& [dtype, bytes] : t["bytes_by_dtype"].items())
      o << "; " << dtype << " " << human_bytes(bytes.get<double>());
    o << "\n";
  }
  o << "files        " << j["files"].size() << ", " << human_bytes(j["total_bytes"].get<double>()) << "\n";
  for (const auto& f : j["files"]) {
    char line[512];
    std::snprintf(line, sizeof(line), "  %-7s %-36s %12s  %s", f["status"].get<std::string>().c_str(),
                  f["file"].get<std::string>().c_str(), human_bytes(f["bytes"].get<double>()).c_str(),
                  f["checksum"].get<std::string>().c_str());
    o << line << "\n";
    if (f.contains("problem")) o << "          " << f["problem"].get<std::string>() << "\n";
  }
  o << "verified     " << j["files_ok"] << " of " << j["files"].size() << " files OK"
    << (j["ok"].get<bool>() ? "" : "; checkpoint NOT usable") << std::endl;
}

}  // namespace mlaforge::cli
