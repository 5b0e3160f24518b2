#pragma once
// Checkpoints of a training run: what `mlaforge train` saves every checkpoint.every steps and resumes from
// (the storage format, commit protocol and retention are in trainer/checkpoint_store.h).
//
// What a checkpoint holds, as GLOBAL tensors (the single-device model's shapes and mlaforge names), each
// rank writing only the rectangle it owns, so that any other layout can read back its own rectangles:
//   param/<name>        float32   every trainable weight (bf16 runs: the fp32 master, not its bf16 copy)
//   exp_avg/<name>      float32   AdamW first moment
//   exp_avg_sq/<name>   float32   AdamW second moment
//   rng/rank<r>         uint8     rank r's torch CPU (and CUDA) generator states (restored when the
//                                 world size is unchanged)
// Ownership: tensor parallelism splits a tensor by its weight-table split (vocabulary padding never
// stored); ZeRO-1 further splits it by rows over the DP group; otherwise DP rank 0 writes (replicas are
// identical) and, for tensors replicated over TP, TP rank 0. Frozen weights are not stored: they are the
// model.path checkpoint's, which the run reloads (the fingerprint guards against another model).
// training_state.json (rank 0): step, optimizer step, tokens, data position (a global sample counter,
// layout-independent), the resolved recipe, the layout, the metrics of the last step.
#include <torch/torch.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "parallel/communicator.h"
#include "trainer/checkpoint_store.h"
#include "trainer/optimizer.h"

namespace mlaforge {

class DecoderImpl;

// Fault injection for the kill tests: with MLAFORGE_FAULT="<point>:<step>[@<rank>]" in the environment the
// process SIGKILLs itself at that point, as a preempted node would. Points: "step" (after optimizer step
// <step>, before its checkpoint), "save" (this rank's shard file of step <step> written, not committed).
void checkpoint_fault_point(const char* point, int64_t step, int rank);

// Identifies what a checkpoint can be loaded into: the model's config.json (architecture) and the names of
// the trained tensors. Precision and layout may change between save and resume; these may not.
std::string model_fingerprint(const ModelConfig& config, const std::vector<std::string>& trainable_names);

struct TrainCheckpointOptions {
  std::string root;          // the run's output folder
  int64_t keep_last = 2;
  int64_t keep_every = 0;
  bool async = false;        // write in a background thread (one save in flight at most)
  std::string fingerprint;
};

class TrainCheckpointer {
 public:
  // `trained` are the model's trainable tensors in the optimizer's order (what ZeRO gathers).
  TrainCheckpointer(TrainCheckpointOptions options, const ModelConfig& full_config, AdamW& optimizer,
                    std::vector<torch::Tensor> trained, parallel::ParallelGroups& groups, torch::Device device);
  ~TrainCheckpointer();  // waits for a background write (not committed: a run that failed leaves no manifest)

  // Collective. Snapshots this rank's tensors (device -> host copies) now and writes them, in the
  // background when async; the checkpoint is committed (manifest, latest, retention) once every rank's
  // files are complete: here when synchronous, else by a later poll()/finish(). A save while another is
  // in flight first finishes that one (the bound on outstanding saves). `state` is rank 0's.
  void save(int64_t step, const nlohmann::json& state);
  // Collective, once per step: commits a background save that every rank has finished writing.
  void poll();
  // Collective: waits for and commits the save in flight, if any.
  void finish();

  // Collective. The checkpoint that `resume` names ("none", "auto": the newest complete one in the root,
  // or a path), loaded into the model's trainable weights and the optimizer (and the RNG when the world
  // size is unchanged); returns its training_state.json. nullopt: nothing to resume, start afresh.
  std::optional<nlohmann::json> resume(const std::string& resume);

  // Time and bytes of the last committed save (this rank's write, all ranks' bytes).
  double last_save_seconds() const { return last_save_seconds_; }
  uint64_t last_save_bytes() const { return last_save_bytes_; }

 private:
  struct Owned;  // one tensor's region of this rank
  std::vector<Slab> snapshot() const;
  void commit_pending();

  TrainCheckpointOptions options_;
  const ModelConfig& config_;
  AdamW& optimizer_;
  std::vector<torch::Tensor> trained_;
  parallel::ParallelGroups& groups_;
  torch::Device device_;
  std::vector<std::shared_ptr<Owned>> owned_;
  std::unique_ptr<AsyncCheckpointWriter> writer_;
  struct Pending {
    int64_t step = 0;
    std::string dir_name;
    std::vector<FileRecord> records;  // this rank's (rank 0: plus training_state.json)
    std::chrono::steady_clock::time_point start;
  };
  std::optional<Pending> pending_;
  double last_save_seconds_ = 0;
  uint64_t last_save_bytes_ = 0;
};

}  // namespace mlaforge
