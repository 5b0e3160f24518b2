#pragma once
// Background checkpoint writing (torch-free): one worker thread runs queued write jobs in submission
// order, so the training loop only pays for the device -> host copy it makes before submitting.
//
// Bounded: at most `max_outstanding` jobs are queued or running; submit() blocks while that many are.
// Every queued job holds host copies of the tensors it writes, so the bound is what caps the extra host
// memory (about max_outstanding checkpoints' worth of this rank's state). With a bound of 1 a checkpoint
// is always fully written before the next one's copy is even queued.
//
// Errors: a failing job does not stop the worker (the other jobs are independent files); wait_all()
// rethrows the first failure, prefixed with the job's label, after all submitted jobs have finished.
// Because jobs run in order on one thread, a job that commits a checkpoint (writes the manifest)
// submitted after its rank-file jobs runs only once those are on disk - but it must not need other
// ranks (no collectives on the worker thread).
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "trainer/checkpoint_manifest.h"

namespace mlaforge {

class AsyncCheckpointWriter {
 public:
  using Job = std::function<FileRecord()>;

  explicit AsyncCheckpointWriter(size_t max_outstanding = 1);
  // Runs the jobs still queued (cancel_pending() first to drop them), joins the worker, and logs the
  // errors nobody collected with wait_all() (a destructor cannot throw).
  ~AsyncCheckpointWriter();
  AsyncCheckpointWriter(const AsyncCheckpointWriter&) = delete;
  AsyncCheckpointWriter& operator=(const AsyncCheckpointWriter&) = delete;

  // Queues a job; blocks while max_outstanding jobs are queued or running. `label` names the job in logs
  // and errors ("step-0000120/rank-00001-of-00004.safetensors").
  void submit(std::string label, Job job);

  // Blocks until every job submitted so far has finished. Returns their records in submission order
  // (since the previous wait_all), or throws the first failure as mlaforge::Error("<label>: <what>").
  std::vector<FileRecord> wait_all();

  // Drops queued jobs that have not started (the running one finishes). Returns how many were dropped.
  size_t cancel_pending();

  size_t outstanding() const;  // queued + running
  size_t max_outstanding() const { return max_outstanding_; }

 private:
  struct Entry {
    std::string label;
    Job job;
    size_t index = 0;  // into results_
  };
  void run();

  const size_t max_outstanding_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;  // queue, running or stop_ changed
  std::deque<Entry> queue_;
  bool running_ = false;
  bool stop_ = false;
  std::vector<FileRecord> results_;  // one per job since the last wait_all
  std::exception_ptr first_error_;
  std::string first_error_label_;
  std::thread worker_;  // last: started once everything above exists
};

}  // namespace mlaforge
