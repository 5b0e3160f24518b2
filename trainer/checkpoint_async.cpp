#include "trainer/checkpoint_async.h"

#include <chrono>

#include "core/error.h"
#include "core/log.h"

namespace mlaforge {

AsyncCheckpointWriter::AsyncCheckpointWriter(size_t max_outstanding)
    : max_outstanding_(max_outstanding == 0 ? 1 : max_outstanding), worker_([this] { run(); }) {}

AsyncCheckpointWriter::~AsyncCheckpointWriter() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  worker_.join();
  if (first_error_) log::error("checkpoint write ", first_error_label_, " failed and was never collected");
}

void AsyncCheckpointWriter::submit(std::string label, Job job) {
  MLA_CHECK(static_cast<bool>(job), "checkpoint write ", label, ": empty job");
  std::unique_lock<std::mutex> lock(mutex_);
  const auto t0 = std::chrono::steady_clock::now();
  changed_.wait(lock, [&] { return queue_.size() + (running_ ? 1 : 0) < max_outstanding_; });
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Waiting here means checkpoints are written slower than they are produced: worth knowing.
  if (waited > 0.1) log::info("checkpoint write ", label, ": waited ", waited, " s for a free slot");
  const size_t index = results_.size();
  results_.emplace_back();
  queue_.push_back({std::move(label), std::move(job), index});
  lock.unlock();
  changed_.notify_all();
}

void AsyncCheckpointWriter::run() {
  for (;;) {
    Entry entry;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] { return !queue_.empty() || stop_; });
      if (queue_.empty()) return;  // stop_ and nothing left: queued jobs always run before shutdown
      entry = std::move(queue_.front());
      queue_.pop_front();
      running_ = true;
    }
    const auto t0 = std::chrono::steady_clock::now();
    FileRecord record;
    std::string error;
    try {
      record = entry.job();
    } catch (const std::exception& e) {
      error = e.what();
    } catch (...) {
      error = "unknown exception";
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (error.empty()) {
      const double mib = static_cast<double>(record.bytes) / (1 << 20);
      log::info("checkpoint write ", entry.label, ": ", mib, " MiB in ", dt, " s (",
                dt > 0 ? mib / 1024 / dt : 0.0, " GiB/s)");
    } else {
      log::error("checkpoint write ", entry.label, " failed after ", dt, " s: ", error);
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      running_ = false;
      // cancel_pending may have shrunk results_ only below queued entries, never below a running one.
      results_[entry.index] = std::move(record);
      if (!error.empty() && !first_error_) {
        first_error_ = std::make_exception_ptr(Error(error));
        first_error_label_ = entry.label;
      }
    }
    changed_.notify_all();
  }
}

std::vector<FileRecord> AsyncCheckpointWriter::wait_all() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return queue_.empty() && !running_; });
  std::vector<FileRecord> results = std::move(results_);
  results_.clear();
  if (first_error_) {
    std::exception_ptr error = first_error_;
    const std::string label = first_error_label_;
    first_error_ = nullptr;
    first_error_label_.clear();
    try {
      std::rethrow_exception(error);
    } catch (const Error& e) {
      fail("checkpoint write ", label, ": ", e.what());
    }
  }
  return results;
}

size_t AsyncCheckpointWriter::cancel_pending() {
  size_t dropped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    dropped = queue_.size();
    for (const Entry& e : queue_) log::warn("checkpoint write ", e.label, ": cancelled before it started");
    queue_.clear();
    // Queued entries are the newest submissions, so their results are the tail.
    results_.resize(results_.size() - dropped);
  }
  changed_.notify_all();
  return dropped;
}

size_t AsyncCheckpointWriter::outstanding() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return queue_.size() + (running_ ? 1 : 0);
}

}  // namespace mlaforge
