#pragma once
// Training checkpoints on disk, the torch-free part: manifests, the `latest` pointer, validation,
// retention and the choice of the checkpoint to resume from (trainer/checkpoint_store.h adds the tensors).
//
// Layout of a run's output folder ROOT:
//   ROOT/step-0000120/rank-00000-of-00004.safetensors   one per rank: that rank's slabs (checkpoint_store.h)
//   ROOT/step-0000120/training_state.json              rank 0: whatever JSON the trainer passes
//   ROOT/step-0000120/manifest.json                    written LAST: every file with size and CRC-32C
//   ROOT/latest                                        "step-0000120\n", replaced after the manifest
//
// Commit protocol. Every file is written under a temporary name, fsynced and renamed into place; the
// manifest is written the same way only after all other files are complete (rank 0, after the trainer's
// barrier), and the folder is fsynced after the rename. So a folder holds a parseable manifest exactly
// when the checkpoint was completely written: a crash at any point leaves either the previous checkpoint
// or a folder without manifest, which every reader here treats as incomplete. `latest` is a hint updated
// after the manifest; a crash between the two leaves it one checkpoint behind, which is why
// find_resume_checkpoint scans the folders rather than trusting it.
//
// manifest.json: {"format": "mlaforge-checkpoint", "version": 1, "step": 120, "model_fingerprint": "...",
//   "created_unix": 1712345678, "files": [{"file": "rank-00000-of-00004.safetensors", "bytes": 123,
//   "checksum": "crc32c:1a2b3c4d"}, ...]}   (files sorted by name)
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mlaforge {

inline constexpr const char* kCheckpointFormat = "mlaforge-checkpoint";
inline constexpr int kCheckpointVersion = 1;
inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr const char* kLatestFile = "latest";
inline constexpr const char* kTrainingStateFile = "training_state.json";

// One file of a checkpoint, as listed in its manifest.
struct FileRecord {
  std::string file;      // name inside the step folder (no '/')
  uint64_t bytes = 0;
  std::string checksum;  // "crc32c:1a2b3c4d" (trainer/checksum.h)

  // For sending records from the ranks to rank 0 (e.g. as a string through the communicator).
  nlohmann::json to_json() const;
  static FileRecord from_json(const nlohmann::json& j, const std::string& source);  // throws naming source
  bool operator==(const FileRecord&) const = default;
};

struct CheckpointManifest {
  std::string format = kCheckpointFormat;
  int version = kCheckpointVersion;
  int64_t step = 0;
  std::string model_fingerprint;
  int64_t created_unix = 0;
  std::vector<FileRecord> files;  // sorted by name

  nlohmann::json to_json() const;
  // Throws naming `source` and the field on anything missing, mistyped or unsafe (a file name with '/').
  static CheckpointManifest from_json(const nlohmann::json& j, const std::string& source);
  const FileRecord* find(std::string_view file) const;  // nullptr when not listed
  uint64_t total_bytes() const;
};

// "step-0000120" (7 digits, more when needed) and back; nullopt for any other name.
std::string step_dir_name(int64_t step);
std::optional<int64_t> parse_step_dir_name(std::string_view name);

// ---- writing ----------------------------------------------------------------------------------------

// path.tmp, fsync, rename to path, fsync the folder. For the small files (JSON, manifest, latest).
void write_file_atomically(const std::string& path, std::string_view contents);

// Size and CRC-32C of bytes held in memory / of a file on disk (read once in 4 MiB blocks).
FileRecord record_for_bytes(const std::string& file, const void* data, size_t size);
FileRecord checksum_file(const std::string& step_dir, const std::string& file);

// Writes step_dir/name (created if needed) atomically as indented JSON; its record for the manifest.
FileRecord write_json_file(const std::string& step_dir, const std::string& name, const nlohmann::json& j);

// Creates ROOT/step_dir_name and, if it already holds a manifest (the same step written again, e.g. after
// resuming from an earlier checkpoint), removes that manifest FIRST, so that the folder reads as
// incomplete while its files are being replaced. Rank 0 calls it before the ranks write (then a barrier).
// Returns the folder's path.
std::string prepare_step_dir(const std::string& root, const std::string& step_dir_name);

// Writes ROOT/step_dir_name/manifest.json listing `all_files` (every rank's records plus
// training_state.json's) and then ROOT/latest. Checks first that each file exists with the recorded
// size (a rank that did not finish is caught here, naming the file). Returns the manifest written.
CheckpointManifest commit_checkpoint(const std::string& root, const std::string& step_dir_name, int64_t step,
                                     const std::vector<FileRecord>& all_files, const std::string& model_fingerprint);

// ---- reading and validation -------------------------------------------------------------------------

// Parses step_dir/manifest.json. Throws naming that path: missing (incomplete checkpoint), not JSON,
// missing/mistyped field, unknown format or newer version.
CheckpointManifest read_manifest(const std::string& step_dir);

// What is wrong with one listed file, naming its path ("" when it matches): missing, size differs
// (truncated or overwritten), checksum differs (corrupt). Checksums only when verify_checksum.
std::string check_file(const std::string& step_dir, const FileRecord& record, bool verify_checksum);
// Throws the first problem of any listed file.
void verify_checkpoint_files(const std::string& step_dir, const CheckpointManifest& manifest, bool verify_checksums);
// Throws when expected is non-empty and differs from the manifest's, naming the folder and both values.
void check_model_fingerprint(const std::string& step_dir, const CheckpointManifest& manifest,
                             const std::string& expected);

// The folder name in ROOT/latest, if the file exists and holds a plain step folder name.
std::optional<std::string> read_latest(const std::string& root);

struct CheckpointDirInfo {
  std::string name;   // step-0000120
  std::string path;   // ROOT/step-0000120
  int64_t step = 0;
  bool complete = false;  // has a manifest that parses (files not verified)
};
// The step-* folders of ROOT, by ascending step. Empty when ROOT does not exist.
std::vector<CheckpointDirInfo> list_checkpoints(const std::string& root);

// Deletes complete checkpoints that are neither among the keep_last newest complete ones (keep_last 0:
// keep all) nor at a step that is a multiple of keep_every (0: none), and incomplete folders older than
// the newest complete checkpoint (a crash's leftovers; newer ones may be being written). Never deletes the
// newest complete checkpoint. Does not verify checksums (that would read every checkpoint): with
// keep_last 1 a newest checkpoint that is complete but corrupt leaves nothing older to fall back to.
// Logs each deletion; returns the deleted folder paths.
std::vector<std::string> apply_retention(const std::string& root, int64_t keep_last, int64_t keep_every);

// The folder to resume from: ROOT itself when it holds a manifest (a step folder given directly), else
// the newest step-* folder whose manifest parses and whose files all have the listed sizes and (when
// verify_checksums) checksums. Skipped folders, and a `latest` that names a missing, incomplete or not
// newest checkpoint, add a warning naming them (also logged). nullopt when none is usable (a fresh run).
// A usable checkpoint written for another model fingerprint is an error, not a skip: falling back to an
// older checkpoint or starting afresh would silently train something else than the run asked for.
// Cost: verifying checksums reads every byte of the chosen checkpoint (and of corrupt newer ones) once;
// at ~1 GB/s of disk that is about the time the load itself takes, and the load then reads from the page
// cache. In a multi-rank job let one rank call it and broadcast the answer.
std::optional<std::string> find_resume_checkpoint(const std::string& root, const std::string& expected_fingerprint,
                                                  std::vector<std::string>* warnings = nullptr,
                                                  bool verify_checksums = true);

}  // namespace mlaforge
