#pragma once
// Sharded training checkpoints: each rank writes the slabs of the global tensors it holds into one
// safetensors file; a reader assembles any rectangular region of a global tensor from whichever slabs
// cover it, across rank files, so a checkpoint written with one parallel layout (TP/DP sizes) can be
// loaded into another. The folder layout, commit protocol, retention and resume choice are in
// trainer/checkpoint_manifest.h; background writing in trainer/checkpoint_async.h (both included here).
//
// A rank file (rank-00001-of-00004.safetensors) is a plain safetensors file (model/safetensors.h: temp
// file, fsync, rename) whose __metadata__ holds, besides {"format": "pt"}:
//   "mlaforge.slabs": JSON text {"<tensor key>": {"name": "<global name>", "global_shape": [7, 10],
//                                                 "offsets": [4, 0]}, ...}
//   "mlaforge.rank", "mlaforge.world_size": the writer's rank and world size (informational)
// The tensor key is the global name, or name#1, name#2, ... for further slabs of the same global tensor in
// the same file. Every tensor in a rank file must be described there; the reader refuses anything else.
// Per-rank state with no global meaning (RNG bytes, a data-loader cursor) is a slab covering its own
// whole tensor under a rank-specific name: Slab::whole(rank_local_name("rng", rank), bytes).
#include <ATen/ATen.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "trainer/checkpoint_async.h"
#include "trainer/checkpoint_manifest.h"

namespace mlaforge {

// A rectangular part of a global tensor: data covers [offsets[d], offsets[d] + data.size(d)) in every
// dimension d of a tensor of global_shape. Any device, dtype safetensors can hold, any strides.
struct Slab {
  std::string name;
  at::Tensor data;
  std::vector<int64_t> global_shape, offsets;

  // The whole tensor (offsets 0, global shape = its own): replicated tensors, per-rank blobs.
  static Slab whole(std::string name, at::Tensor data);
};

// "rng/rank3": the name of a per-rank blob.
std::string rank_local_name(const std::string& base, int rank);
// "rank-00001-of-00004.safetensors"
std::string rank_file_name(int rank, int world_size);

// Writes step_dir/rank_file_name(rank, world_size) (creating step_dir) holding `slabs`, copied to
// contiguous CPU memory where they are not already. Throws naming the slab on an inconsistent one
// (offsets + size beyond the global shape, rank mismatch, unsupported dtype). The returned record's
// checksum is computed from the bytes in memory as they were written (no second read of the file).
FileRecord write_rank_shards(const std::string& step_dir, int rank, int world_size, const std::vector<Slab>& slabs);

// One stored slab, as the reader sees it.
struct StoredSlab {
  std::string file;  // rank file name
  std::string key;   // tensor key inside it
  std::vector<int64_t> offsets, shape;
};

class CheckpointReader {
 public:
  // Opens a step folder: parses the manifest, checks every listed file's size (and CRC-32C when
  // verify_checksums), the model fingerprint (when given), then maps the rank files and checks that the
  // slabs of each global tensor agree on dtype and global shape and lie inside it. Throws mlaforge::Error
  // naming the file at fault. Verifying checksums reads every byte once (see find_resume_checkpoint).
  static CheckpointReader open(const std::string& dir, bool verify_checksums = true,
                               const std::optional<std::string>& expected_fingerprint = std::nullopt);
  CheckpointReader(CheckpointReader&&) noexcept;
  CheckpointReader& operator=(CheckpointReader&&) noexcept;
  ~CheckpointReader();

  const std::string& dir() const;
  int64_t step() const;
  const std::string& model_fingerprint() const;
  const CheckpointManifest& manifest() const;
  const std::vector<FileRecord>& files() const;
  // training_state.json's contents; an empty object when the checkpoint has none.
  const nlohmann::json& training_state() const;

  std::vector<std::string> names() const;  // global tensor names, sorted
  bool contains(const std::string& name) const;
  // These throw naming the checkpoint and the tensor (and a close name) when it is absent.
  std::vector<int64_t> global_shape(const std::string& name) const;
  at::ScalarType dtype(const std::string& name) const;
  std::vector<StoredSlab> slabs(const std::string& name) const;

  // The region [offsets, offsets + sizes) of global tensor `name`, assembled from every stored slab that
  // intersects it (overlapping slabs, e.g. replicas, are fine: they must hold the same values, the last one
  // read wins). Returned contiguous on the CPU in the stored dtype, or converted to `dtype`. Throws naming
  // the tensor when the region lies outside the global shape or part of it is not covered by any slab.
  // Safe to call from several threads at once.
  at::Tensor read(const std::string& name, const std::vector<int64_t>& offsets, const std::vector<int64_t>& sizes,
                  std::optional<at::ScalarType> dtype = std::nullopt) const;
  // The whole global tensor.
  at::Tensor read(const std::string& name, std::optional<at::ScalarType> dtype = std::nullopt) const;

 private:
  struct Impl;
  explicit CheckpointReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mlaforge
