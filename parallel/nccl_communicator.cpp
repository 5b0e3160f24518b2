// NCCL backend: collectives on CUDA tensors, enqueued on the communicator's own CUDA stream after the
// caller's current stream (blocking-style calls make the caller's stream wait for them; the *_async ones
// leave that to PendingCollective::wait, so the caller's kernels overlap the communication).
//
// UNTESTED ON A GPU: this file is compiled and linked in CI (the torch wheel ships nccl.h and
// libnccl.so.2), but the machines that wrote it had no GPU. See parallel/README.md.
//
// Bootstrap: rank 0 of the bootstrap communicator (MPI, or the single communicator for one process)
// creates the NCCL unique id; a broadcast carries it to the others; every rank then initialises its
// NCCL communicator on GPU `device_index`. Sub-communicators come from ncclCommSplit (no new id).
//
// Timeouts: communicators are non-blocking (config.blocking = 0), so initialisation and splits are
// polled with ncclCommGetAsyncError against the timeout. Collectives return as soon as they are
// enqueued (like any CUDA kernel); an event recorded after each one goes to a watchdog thread that
// polls it (cudaEventQuery) and the communicator's asynchronous error. On a timeout or an NCCL error the
// watchdog aborts the NCCL communicator (ncclCommAbort makes the stuck kernels return, so the stream and
// anything synchronising with it move on) and stores the error, which the next call on this rank
// throws. If no call comes within 10 s the watchdog prints the error and ends the process with status 1
// (the launcher then stops the others) rather than leave a rank that can never finish.
#include "parallel/communicator.h"

#include "core/error.h"
#include "parallel/comm_detail.h"

#ifdef MLAFORGE_HAVE_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 18, 0)
#error "the NCCL backend needs NCCL >= 2.18 (ncclCommSplit with non-blocking communicators)"
#endif
#endif

namespace mlaforge::parallel {

#ifndef MLAFORGE_HAVE_NCCL

bool nccl_available() { return false; }

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device_index) {
  fail("this mlaforge was built without NCCL (CMake found no nccl.h/libnccl or no CUDA runtime headers, see the "
       "'NCCL backend' line of the configure output): use parallel.backend=mpi");
}

#else  // MLAFORGE_HAVE_NCCL

namespace {

using Clock = std::chrono::steady_clock;

std::string nccl_text(ncclResult_t rc, ncclComm_t comm) {
  std::string text = ncclGetErrorString(rc);
  const char* last = comm != nullptr ? ncclGetLastError(comm) : ncclGetLastError(nullptr);
  if (last != nullptr && *last != '\0') text += std::string(": ") + last;
  return text;
}

void check_cuda(cudaError_t rc, const std::string& where) {
  if (rc != cudaSuccess) fail(where, ": CUDA error: ", cudaGetErrorString(rc));
}

ncclDataType_t nccl_type(const Communicator& comm, const char* what, torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32: return ncclFloat32;
    case torch::kFloat64: return ncclFloat64;
    case torch::kFloat16: return ncclFloat16;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kInt64: return ncclInt64;
    case torch::kInt32: return ncclInt32;
    case torch::kInt8: return ncclInt8;
    case torch::kUInt8: return ncclUint8;
    case torch::kBool: return ncclUint8;  // data movement only (reductions reject bool earlier)
    default: fail(detail::who(comm), ": ", what, " does not support ", detail::dtype_name(type), " on NCCL");
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::avg: return ncclAvg;
    case ReduceOp::max: return ncclMax;
  }
  return ncclSum;
}

ncclConfig_t make_config(const std::string& name) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // calls return ncclInProgress instead of blocking, so we can time them out
  config.commName = name.c_str();
  return config;
}

// Polls a non-blocking communicator until its pending operation (init, split, finalize, a collective's
// enqueue) is over. Returns the final state; on timeout returns ncclInProgress.
ncclResult_t poll_ready(ncclComm_t comm, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  ncclResult_t state = ncclInProgress;
  while (true) {
    ncclResult_t rc = ncclCommGetAsyncError(comm, &state);
    if (rc != ncclSuccess) return rc;
    if (state != ncclInProgress) return state;
    if (Clock::now() >= deadline) return ncclInProgress;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// State shared by a communicator and its watchdog thread.
struct Shared {
  struct Work {
    cudaEvent_t event;
    int64_t seq;
    std::string label;  // "rank 1 of 4 (dp group): all_reduce #37 (float32 x 1048576)"
    Clock::time_point enqueued;
  };

  std::mutex mutex;
  std::condition_variable wake;
  std::deque<Work> work;
  std::vector<cudaEvent_t> free_events;
  bool stop = false;
  std::string error;               // set once, by the watchdog or a failing call
  std::atomic<bool> failed{false};
  std::atomic<bool> reported{false};  // the error was thrown to the caller
  std::atomic<bool> aborted{false};
  Clock::time_point failed_at;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int device, std::string name, std::chrono::milliseconds timeout)
      : comm_(comm), device_(device), name_(std::move(name)) {
    timeout_ = timeout;
    ncclResult_t rc = ncclCommCount(comm_, &size_);
    if (rc == ncclSuccess) rc = ncclCommUserRank(comm_, &rank_);
    if (rc != ncclSuccess) {
      ncclCommAbort(comm_);
      fail("NCCL communicator '", name_, "': ", nccl_text(rc, nullptr));
    }
    watchdog_ = std::thread([this] { watch(); });
  }

  ~NcclCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(shared_.mutex);
      shared_.stop = true;
    }
    shared_.wake.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    if (!shared_.aborted.load()) {
      // Finalize waits for outstanding work; bounded, then abort (which never waits).
      ncclResult_t rc = ncclCommFinalize(comm_);
      if (rc == ncclSuccess || rc == ncclInProgress) {
        rc = poll_ready(comm_, std::min<std::chrono::milliseconds>(timeout_, std::chrono::seconds(60)));
      }
      if (rc == ncclSuccess) {
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
    }
    for (auto& item : shared_.work) cudaEventDestroy(item.event);
    for (cudaEvent_t event : shared_.free_events) cudaEventDestroy(event);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  std::string name() const override { return name_; }

  void all_reduce(torch::Tensor& tensor, ReduceOp op) override { all_reduce_on_stream(tensor, op, /*join=*/true); }

  void all_reduce_on_stream(torch::Tensor& tensor, ReduceOp op, bool join) {
    detail::check_contiguous(*this, "all_reduce", tensor);
    detail::check_reduce_dtype(*this, "all_reduce", tensor, op);
    check_device("all_reduce", tensor);
    ncclDataType_t type = nccl_type(*this, "all_reduce", tensor.scalar_type());
    void* data = tensor.data_ptr();
    const size_t n = static_cast<size_t>(tensor.numel());
    enqueue("all_reduce", tensor, [&](cudaStream_t stream) {
      return ncclAllReduce(data, data, n, type, nccl_op(op), comm_, stream);
    }, join);
  }

  void all_gather(const torch::Tensor& input, torch::Tensor& output) override {
    detail::check_gather(*this, input, output);
    check_device("all_gather", input);
    // NCCL's in-place form: the input is exactly this rank's slot of the output; other overlaps are errors.
    MLA_CHECK(!detail::overlaps(input, output) ||
                  input.data_ptr() == static_cast<char*>(output.data_ptr()) + static_cast<int64_t>(rank_) * input.nbytes(),
              detail::who(*this), ": all_gather input overlaps the output other than at this rank's slot");
    ncclDataType_t type = nccl_type(*this, "all_gather", input.scalar_type());
    const void* in = input.data_ptr();
    void* out = output.data_ptr();
    const size_t n = static_cast<size_t>(input.numel());
    enqueue("all_gather", input, [&](cudaStream_t stream) { return ncclAllGather(in, out, n, type, comm_, stream); });
  }

  void reduce_scatter(const torch::Tensor& input, torch::Tensor& output, ReduceOp op) override {
    reduce_scatter_on_stream(input, output, op, /*join=*/true);
  }

  void reduce_scatter_on_stream(const torch::Tensor& input, torch::Tensor& output, ReduceOp op, bool join) {
    detail::check_scatter(*this, input, output);
    detail::check_reduce_dtype(*this, "reduce_scatter", input, op);
    check_device("reduce_scatter", input);
    MLA_CHECK(!detail::overlaps(input, output) ||
                  output.data_ptr() == static_cast<char*>(input.data_ptr()) + static_cast<int64_t>(rank_) * output.nbytes(),
              detail::who(*this), ": reduce_scatter output overlaps the input other than at this rank's slice");
    ncclDataType_t type = nccl_type(*this, "reduce_scatter", input.scalar_type());
    const void* in = input.data_ptr();
    void* out = output.data_ptr();
    const size_t n = static_cast<size_t>(output.numel());
    enqueue("reduce_scatter", input, [&](cudaStream_t stream) {
      return ncclReduceScatter(in, out, n, type, nccl_op(op), comm_, stream);
    }, join);
  }

  std::unique_ptr<PendingCollective> all_reduce_async(torch::Tensor& tensor, ReduceOp op) override {
    all_reduce_on_stream(tensor, op, /*join=*/false);
    return completion("all_reduce");
  }

  std::unique_ptr<PendingCollective> reduce_scatter_async(const torch::Tensor& input, torch::Tensor& output,
                                                          ReduceOp op) override {
    reduce_scatter_on_stream(input, output, op, /*join=*/false);
    return completion("reduce_scatter");
  }

  void broadcast(torch::Tensor& tensor, int root) override {
    detail::check_contiguous(*this, "broadcast", tensor);
    detail::check_root(*this, root);
    check_device("broadcast", tensor);
    ncclDataType_t type = nccl_type(*this, "broadcast", tensor.scalar_type());
    void* data = tensor.data_ptr();
    const size_t n = static_cast<size_t>(tensor.numel());
    enqueue("broadcast", tensor, [&](cudaStream_t stream) {
      return ncclBroadcast(data, data, n, type, root, comm_, stream);
    });
  }

  // A one-element all-reduce, then the host waits for it (the only host-blocking call here).
  void barrier() override {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    torch::Tensor token = torch::ones({1}, torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA, device_));
    void* data = token.data_ptr();
    cudaEvent_t done = enqueue("barrier", torch::Tensor(), [&](cudaStream_t stream) {
      return ncclAllReduce(data, data, 1, ncclFloat32, ncclSum, comm_, stream);
    });
    // The watchdog owns the timeout; the host only waits for the event or for the watchdog's verdict.
    while (true) {
      throw_if_failed();
      cudaError_t state = cudaEventQuery(done);
      if (state == cudaSuccess) break;
      if (state != cudaErrorNotReady) check_cuda(state, detail::who(*this) + ": barrier");
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    throw_if_failed();
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    MLA_CHECK(color >= 0, detail::who(*this), ": split color must be >= 0, got ", color);
    throw_if_failed();
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    const int64_t seq = ++seq_;
    const std::string label = detail::who(*this) + ": split #" + std::to_string(seq);
    ncclConfig_t config = make_config(name);
    ncclComm_t child = nullptr;
    ncclResult_t rc = ncclCommSplit(comm_, color, key, &child, &config);
    if (rc == ncclInProgress || rc == ncclSuccess) rc = poll_ready(child != nullptr ? child : comm_, timeout_);
    if (rc == ncclInProgress) {
      if (child != nullptr) ncclCommAbort(child);
      fail_now(label + " did not complete in " + detail::format_seconds(timeout_) +
               ": a rank died or is stuck (NCCL cannot tell which rank)");
    }
    if (rc != ncclSuccess) fail_now(label + " failed: " + nccl_text(rc, comm_));
    return std::make_unique<NcclCommunicator>(child, device_, name, timeout_);
  }

 private:
  void check_device(const char* what, const torch::Tensor& tensor) const {
    MLA_CHECK(tensor.is_cuda() && tensor.get_device() == device_, detail::who(*this), ": ", what,
              " on the nccl backend needs a tensor on cuda:", device_, ", got ", tensor.device());
  }

  void throw_if_failed() {
    if (!shared_.failed.load()) return;
    std::string error;
    {
      std::lock_guard<std::mutex> lock(shared_.mutex);
      error = shared_.error;
    }
    shared_.reported.store(true);
    throw Error(error);
  }

  // Records a failure found on the calling thread (aborting the communicator) and throws it.
  [[noreturn]] void fail_now(const std::string& error) {
    {
      std::lock_guard<std::mutex> lock(shared_.mutex);
      if (!shared_.failed.load()) {
        shared_.error = error;
        shared_.failed_at = Clock::now();
        shared_.failed.store(true);
      }
    }
    if (!shared_.aborted.exchange(true)) ncclCommAbort(comm_);
    shared_.reported.store(true);
    throw Error(error);
  }

  // A collective issued on the side stream; wait() makes the then-current stream wait for it.
  class SideStreamCollective final : public PendingCollective {
   public:
    SideStreamCollective(cudaEvent_t done, int device) : done_(done), device_(device) {}
    ~SideStreamCollective() override { cudaEventDestroy(done_); }  // released by CUDA once it completes
    bool test() override { return cudaEventQuery(done_) == cudaSuccess; }  // failures are the watchdog's
    void wait() override {
      if (joined_) return;
      joined_ = true;
      cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_)).stream();
      check_cuda(cudaStreamWaitEvent(stream, done_, 0), "nccl: joining a collective's stream");
    }

   private:
    cudaEvent_t done_;
    int device_;
    bool joined_ = false;
  };

  // The handle of the collective just issued (join = false) on this communicator's stream.
  std::unique_ptr<PendingCollective> completion(const char* what) {
    cudaEvent_t done = nullptr;
    const std::string where = detail::who(*this) + ": " + what;
    check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), where);
    check_cuda(cudaEventRecord(done, stream()), where);
    return std::make_unique<SideStreamCollective>(done, device_);
  }

  // This communicator's own stream: every collective runs there, in issue order (NCCL needs one
  // communicator's collectives in the same order on every rank, which two streams would not guarantee).
  cudaStream_t stream() {
    if (!stream_) stream_ = c10::cuda::getStreamFromPool(/*isHighPriority=*/true, static_cast<c10::DeviceIndex>(device_));
    return stream_->stream();
  }

  // Issues one collective on this communicator's stream, after the work already enqueued on the caller's
  // current stream (which produced the inputs), and hands its completion event to the watchdog. With
  // `join` the caller's stream then waits for it, so later kernels see the result (the blocking-style
  // calls); without, the caller joins through the PendingCollective (overlap). Returns the event (valid
  // until the watchdog sees it complete; barrier() polls it first).
  template <typename Issue>
  cudaEvent_t enqueue(const char* what, const torch::Tensor& tensor, Issue issue, bool join = true) {
    throw_if_failed();
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    cudaStream_t caller = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_)).stream();
    cudaStream_t stream = this->stream();
    const int64_t seq = ++seq_;
    std::string label = detail::who(*this) + ": " + what + " #" + std::to_string(seq);
    if (tensor.defined()) label += " (" + detail::describe(tensor) + ")";
    if (caller != stream) {
      cudaEvent_t ready = nullptr;
      check_cuda(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), label);
      check_cuda(cudaEventRecord(ready, caller), label);
      check_cuda(cudaStreamWaitEvent(stream, ready, 0), label);
      cudaEventDestroy(ready);  // released by CUDA once the wait is satisfied
    }
    ncclResult_t rc = issue(stream);
    if (rc == ncclInProgress) rc = poll_ready(comm_, timeout_);  // non-blocking enqueue still running
    if (rc == ncclInProgress) {
      fail_now(label + " could not be enqueued in " + detail::format_seconds(timeout_) + ": a rank died or is stuck");
    }
    if (rc != ncclSuccess) fail_now(label + " failed: " + nccl_text(rc, comm_));
    cudaEvent_t event = nullptr;
    {
      std::lock_guard<std::mutex> lock(shared_.mutex);
      if (!shared_.free_events.empty()) {
        event = shared_.free_events.back();
        shared_.free_events.pop_back();
      }
    }
    if (event == nullptr) check_cuda(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), label);
    check_cuda(cudaEventRecord(event, stream), label);
    if (join && caller != stream) check_cuda(cudaStreamWaitEvent(caller, event, 0), label);
    {
      std::lock_guard<std::mutex> lock(shared_.mutex);
      shared_.work.push_back({event, seq, std::move(label), Clock::now()});
    }
    return event;
  }

  // The watchdog: every 20 ms retires completed collectives (in issue order: one stream) and checks the
  // oldest pending one against the timeout and the communicator against asynchronous NCCL errors.
  void watch() {
    cudaSetDevice(device_);
    std::unique_lock<std::mutex> lock(shared_.mutex);
    while (!shared_.stop) {
      shared_.wake.wait_for(lock, std::chrono::milliseconds(20));
      if (shared_.stop) break;
      if (shared_.failed.load()) {
        // Nobody picked the error up: this rank is not calling us any more (stuck elsewhere, or in a
        // host wait that never returns). End the process so the launcher stops the job.
        if (!shared_.reported.load() && Clock::now() - shared_.failed_at > std::chrono::seconds(10)) {
          std::fprintf(stderr, "mlaforge: error: %s\n", shared_.error.c_str());
          std::fflush(stderr);
          std::_Exit(1);
        }
        continue;
      }
      std::string error;
      while (!shared_.work.empty()) {
        Shared::Work& item = shared_.work.front();
        cudaError_t state = cudaEventQuery(item.event);
        if (state == cudaSuccess) {
          shared_.free_events.push_back(item.event);
          shared_.work.pop_front();
          continue;
        }
        if (state != cudaErrorNotReady) {
          error = item.label + " failed: CUDA error: " + cudaGetErrorString(state);
        } else if (Clock::now() - item.enqueued > timeout_) {
          error = item.label + " did not complete in " + detail::format_seconds(timeout_) +
                  ": a rank died or is stuck (NCCL cannot tell which rank)";
        }
        break;
      }
      if (error.empty()) {
        ncclResult_t state = ncclSuccess;
        if (ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state != ncclSuccess && state != ncclInProgress) {
          error = detail::who(*this) + ": NCCL error: " + nccl_text(state, comm_);
        }
      }
      if (error.empty()) continue;
      shared_.error = error;
      shared_.failed_at = Clock::now();
      shared_.failed.store(true);
      std::fprintf(stderr, "mlaforge: error: %s (aborting the NCCL communicator)\n", error.c_str());
      lock.unlock();
      if (!shared_.aborted.exchange(true)) ncclCommAbort(comm_);
      lock.lock();
    }
  }

  ncclComm_t comm_;
  int device_;
  int rank_ = 0;
  int size_ = 1;
  std::string name_;
  int64_t seq_ = 0;
  std::optional<c10::cuda::CUDAStream> stream_;  // every collective of this communicator (see stream())
  Shared shared_;
  std::thread watchdog_;
};

}  // namespace

bool nccl_available() { return true; }

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device_index) {
  // Local checks first, then agreement: a rank that cannot use its GPU must not leave the others
  // waiting in the id broadcast until the timeout.
  std::string local_error;
  try {
    MLA_CHECK(torch::cuda::is_available(), "parallel.backend=nccl needs CUDA, but no CUDA device is available");
    const int devices = static_cast<int>(torch::cuda::device_count());
    MLA_CHECK(device_index >= 0 && device_index < devices, detail::who(bootstrap), ": GPU ", device_index,
              " (local rank) does not exist: this node has ", devices,
              " visible GPUs (more processes per node than GPUs, or CUDA_VISIBLE_DEVICES too narrow?)");
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
  } catch (const std::exception& error) {
    local_error = error.what();
  }
  torch::Tensor failed = torch::tensor({local_error.empty() ? 0 : 1}, torch::kInt32);
  bootstrap.all_reduce(failed, ReduceOp::max);
  if (!local_error.empty()) throw Error(local_error);
  MLA_CHECK(failed.item<int>() == 0, detail::who(bootstrap),
            ": another rank could not set up its GPU for NCCL (see its error)");

  // The unique id travels over the bootstrap communicator (which has the timeout), with a trailing
  // status byte so that a failure on rank 0 reaches the others at once.
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  torch::Tensor bytes = torch::zeros({static_cast<int64_t>(sizeof(id)) + 1}, torch::kUInt8);
  std::string id_error;
  if (bootstrap.rank() == 0) {
    ncclResult_t rc = ncclGetUniqueId(&id);
    if (rc == ncclSuccess) {
      std::memcpy(bytes.data_ptr(), &id, sizeof(id));
      bytes[static_cast<int64_t>(sizeof(id))] = 1;
    } else {
      id_error = detail::who(bootstrap) + ": ncclGetUniqueId failed: " + nccl_text(rc, nullptr);
    }
  }
  bootstrap.broadcast(bytes, 0);
  if (!id_error.empty()) throw Error(id_error);
  MLA_CHECK(bytes[static_cast<int64_t>(sizeof(id))].item<uint8_t>() == 1, detail::who(bootstrap),
            ": rank 0 could not create the NCCL unique id (see its error)");
  std::memcpy(&id, bytes.data_ptr(), sizeof(id));

  const std::string name = bootstrap.name();
  ncclConfig_t config = make_config(name);
  ncclComm_t comm = nullptr;
  ncclResult_t rc = ncclCommInitRankConfig(&comm, bootstrap.size(), id, bootstrap.rank(), &config);
  if ((rc == ncclSuccess || rc == ncclInProgress) && comm != nullptr) rc = poll_ready(comm, bootstrap.timeout());
  if (rc != ncclSuccess) {
    if (comm != nullptr) ncclCommAbort(comm);
    if (rc == ncclInProgress) {
      fail(detail::who(bootstrap), ": NCCL initialisation on GPU ", device_index, " did not complete in ",
           detail::format_seconds(bootstrap.timeout()), ": a rank died or is stuck");
    }
    fail(detail::who(bootstrap), ": NCCL initialisation on GPU ", device_index, " failed: ", nccl_text(rc, nullptr));
  }
  return std::make_unique<NcclCommunicator>(comm, device_index, name, bootstrap.timeout());
}

#endif  // MLAFORGE_HAVE_NCCL

}  // namespace mlaforge::parallel
