#pragma once
// `mlaforge inspect CHECKPOINT`: what a training checkpoint holds and whether every file is intact.
// CHECKPOINT is a step folder (holds manifest.json, or is named step-NNNNNNN) or a run output folder
// (holds `latest` or step-* folders and no config.json); for a run folder every step folder is listed and
// the one `latest` names (else the newest complete one) is examined.
#include <nlohmann/json.hpp>
#include <string>

namespace mlaforge::cli {

bool is_checkpoint_path(const std::string& path);

// The report as JSON: "checkpoint" (the step folder examined), "step", "model_fingerprint",
// "training_state", "files" [{file, bytes, checksum, status "OK" | "FAILED", problem}], "files_ok",
// "tensors" (when every file is intact), "ok"; for a run folder also "run" {root, latest, checkpoints}.
// Every checksum is verified (the whole checkpoint is read once). Throws only when there is no
// checkpoint to examine (no manifest, no complete step folder); failed files are reported, with ok false.
nlohmann::json describe_checkpoint(const std::string& path);

void print_checkpoint_text(const nlohmann::json& report);

}  // namespace mlaforge::cli
