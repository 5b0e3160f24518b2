// MPI backend: collectives on CPU tensors (CUDA tensors are staged through host memory).
//
// Every collective is the non-blocking MPI call (MPI_Iallreduce, ...) polled with MPI_Test until it
// completes or the communicator's timeout passes, so a dead or stuck rank becomes an mlaforge::Error on
// the others instead of a hang. MPI cannot cancel a collective, so after a timeout the communicator is
// poisoned: its buffers are kept alive forever (MPI may still write into them), every later call throws,
// and MPI_Finalize is skipped at exit (it would wait for the stuck rank).
//
// Who had not arrived: each communicator has a duplicate "control" communicator. While a rank waits in
// a collective it answers, every ~20 ms, queries that arrive there with the collective it is in
// (sequence number and operation). A rank that times out sends a query to every other rank and collects
// answers for a short grace period: ranks that answer with the same collective had arrived, ranks that
// answer with another one called a different collective, ranks that stay silent had not arrived (dead,
// computing, or waiting on another communicator). Only non-blocking calls with bounded waits are used,
// so the diagnosis can delay the error by at most the grace period and can never hang.
#include "parallel/communicator.h"

#include "core/error.h"
#include "core/log.h"
#include "parallel/comm_detail.h"

#include <cstdio>
#include <cstdlib>

#ifdef MLAFORGE_HAVE_MPI
#include <mpi.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <deque>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>
#endif

namespace mlaforge::parallel {

#ifndef MLAFORGE_HAVE_MPI

bool mpi_available() { return false; }

std::unique_ptr<Communicator> make_mpi_communicator() {
  fail("this mlaforge was built without MPI (install libopenmpi-dev and reconfigure): the mpi and nccl backends "
       "need it");
}

void abort_job(int exit_code) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::exit(exit_code);
}

#else  // MLAFORGE_HAVE_MPI

namespace {

// Set once any collective timed out or failed: MPI_Finalize and MPI_Comm_free are skipped from then on.
std::atomic<bool> g_poisoned{false};
// True when this process called MPI_Init_thread (and so owns MPI_Finalize).
bool g_we_initialised = false;

// Buffers MPI may still read or write after we gave up on a request (timed-out collectives, freed
// sends of the arrival protocol). Process lifetime: never freed. Only grows on failures.
std::mutex g_keep_mutex;
std::vector<torch::Tensor>& kept_tensors() {
  static auto* kept = new std::vector<torch::Tensor>();
  return *kept;
}
std::deque<std::array<int64_t, 2>>& kept_messages() {
  static auto* kept = new std::deque<std::array<int64_t, 2>>();
  return *kept;
}
int64_t* keep_message(int64_t a, int64_t b) {
  std::lock_guard<std::mutex> lock(g_keep_mutex);
  kept_messages().push_back({a, b});
  return kept_messages().back().data();
}

void finalize_at_exit() {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (!initialised || finalised || !g_we_initialised) return;
  if (g_poisoned.load()) return;  // MPI_Finalize would wait for the rank that is stuck or gone
  MPI_Finalize();
}

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(length));
}

void ensure_mpi() {
  static const bool initialised = [] {
    int already = 0;
    MPI_Initialized(&already);
    if (!already) {
      int provided = 0;
      // SERIALIZED lets a later trainer issue collectives from autograd hooks on other threads (one at a
      // time); FUNNELED suffices for calls from the main thread only.
      int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
      if (rc != MPI_SUCCESS) fail("MPI_Init_thread failed: ", mpi_error_text(rc));
      g_we_initialised = true;
      std::atexit(finalize_at_exit);
      if (provided < MPI_THREAD_FUNNELED) {
        log::warn("MPI provides thread level ", provided, " (< MPI_THREAD_FUNNELED): collectives must be called from "
                  "the main thread");
      }
    }
    // Errors come back as codes (turned into mlaforge::Error) instead of aborting inside MPI.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    return true;
  }();
  (void)initialised;
}

// Datatypes. Reductions need an arithmetic type; data movement (gather, broadcast) only the element
// size, so bfloat16/float16/bool move as 16/8-bit unsigned integers.
MPI_Datatype reduce_type(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32: return MPI_FLOAT;
    case torch::kFloat64: return MPI_DOUBLE;
    case torch::kInt64: return MPI_INT64_T;
    case torch::kInt32: return MPI_INT32_T;
    case torch::kInt16: return MPI_INT16_T;
    case torch::kInt8: return MPI_INT8_T;
    case torch::kUInt8: return MPI_UINT8_T;
    default: return MPI_DATATYPE_NULL;
  }
}

MPI_Datatype move_type(const torch::Tensor& tensor) {
  switch (tensor.element_size()) {
    case 1: return MPI_UINT8_T;
    case 2: return MPI_UINT16_T;
    case 4: return MPI_UINT32_T;
    case 8: return MPI_UINT64_T;
    default: return MPI_DATATYPE_NULL;
  }
}

// Half-precision floats have no MPI type: they are reduced in float32 (one rounding at the end, so the
// result is at least as accurate as a reduction in the narrow type).
bool reduce_in_float32(torch::ScalarType type) { return type == torch::kBFloat16 || type == torch::kFloat16; }

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::max ? MPI_MAX : MPI_SUM; }  // avg = sum, then divide

enum OpCode : int64_t { kCreate, kAllReduce, kAllGather, kReduceScatter, kBroadcast, kBarrier, kSplit };
const char* op_code_name(int64_t code) {
  static const char* names[] = {"create", "all_reduce", "all_gather", "reduce_scatter", "broadcast", "barrier", "split"};
  return code >= 0 && code <= kSplit ? names[code] : "unknown";
}

constexpr int kQueryTag = 7301;
constexpr int kReplyTag = 7302;

class MpiCommunicator final : public Communicator {
 public:
  // Duplicates `base` (and once more for the control channel) within the timeout.
  MpiCommunicator(MPI_Comm base, std::string name, std::chrono::milliseconds timeout) : name_(std::move(name)) {
    timeout_ = timeout;
    MPI_Comm_rank(base, &rank_);
    MPI_Comm_size(base, &size_);
    comm_ = duplicate(base);
    control_ = duplicate(base);
  }

  ~MpiCommunicator() override {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (finalised || g_poisoned.load() || broken_) return;
    if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    if (control_ != MPI_COMM_NULL) MPI_Comm_free(&control_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  std::string name() const override { return name_; }

  void all_reduce(torch::Tensor& tensor, ReduceOp op) override { start_all_reduce(tensor, op)->wait(); }

  std::unique_ptr<PendingCollective> all_reduce_async(torch::Tensor& tensor, ReduceOp op) override {
    return start_all_reduce(tensor, op);
  }

  void all_gather(const torch::Tensor& input, torch::Tensor& output) override {
    detail::check_gather(*this, input, output);
    check_usable();
    torch::Tensor in = host_copy(input, false);
    torch::Tensor out = output.is_cpu() ? output : torch::empty(output.sizes(), output.options().device(torch::kCPU));
    MPI_Datatype type = move_type(in);
    MLA_CHECK(type != MPI_DATATYPE_NULL, detail::who(*this), ": all_gather does not support ",
              detail::dtype_name(input.scalar_type()));
    // In place when the input is this rank's slot of the output (as NCCL allows); any other overlap
    // would be undefined for MPI, so the input is copied first.
    const bool in_place =
        in.data_ptr() == static_cast<char*>(out.data_ptr()) + static_cast<int64_t>(rank_) * in.nbytes();
    if (!in_place && detail::overlaps(in, out)) in = in.clone();
    Pending what = begin(kAllGather, input, {in, out});
    MPI_Request request;
    check(MPI_Iallgather(in_place ? MPI_IN_PLACE : in.data_ptr(), count(in), type, out.data_ptr(), count(in), type,
                         comm_, &request),
          what);
    wait(request, what);
    if (!out.is_same(output)) output.copy_(out);
  }

  void reduce_scatter(const torch::Tensor& input, torch::Tensor& output, ReduceOp op) override {
    start_reduce_scatter(input, output, op)->wait();
  }

  std::unique_ptr<PendingCollective> reduce_scatter_async(const torch::Tensor& input, torch::Tensor& output,
                                                          ReduceOp op) override {
    return start_reduce_scatter(input, output, op);
  }

  void broadcast(torch::Tensor& tensor, int root) override {
    detail::check_contiguous(*this, "broadcast", tensor);
    detail::check_root(*this, root);
    check_usable();
    torch::Tensor work = host_copy(tensor, false);
    MPI_Datatype type = move_type(work);
    MLA_CHECK(type != MPI_DATATYPE_NULL, detail::who(*this), ": broadcast does not support ",
              detail::dtype_name(tensor.scalar_type()));
    Pending what = begin(kBroadcast, tensor, {work});
    MPI_Request request;
    check(MPI_Ibcast(work.data_ptr(), count(work), type, root, comm_, &request), what);
    wait(request, what);
    if (!work.is_same(tensor)) tensor.copy_(work);
  }

  void barrier() override {
    check_usable();
    Pending what = begin(kBarrier, torch::Tensor(), {});
    MPI_Request request;
    check(MPI_Ibarrier(comm_, &request), what);
    wait(request, what);
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    MLA_CHECK(color >= 0, detail::who(*this), ": split color must be >= 0, got ", color);
    check_usable();
    // MPI_Comm_split blocks with no timeout; a timed barrier first makes sure every rank is there.
    Pending what = begin(kSplit, torch::Tensor(), {});
    MPI_Request request;
    check(MPI_Ibarrier(comm_, &request), what);
    wait(request, what);
    MPI_Comm part = MPI_COMM_NULL;
    check(MPI_Comm_split(comm_, color, key, &part), what);
    MPI_Comm_set_errhandler(part, MPI_ERRORS_RETURN);
    auto child = std::make_unique<MpiCommunicator>(part, name, timeout_);
    MPI_Comm_free(&part);  // the child holds its own duplicates
    return child;
  }

 private:
  struct Pending {
    int64_t seq = 0;
    int64_t op = kCreate;
    std::string desc;  // "float32 x 1048576"
    std::vector<torch::Tensor> buffers;
  };

  // One started reduction: the request, the buffer MPI works in and where the result goes.
  class InFlight final : public PendingCollective {
   public:
    InFlight(MpiCommunicator& comm, Pending what, torch::Tensor work, torch::Tensor target, ReduceOp op)
        : comm_(comm), what_(std::move(what)), work_(std::move(work)), target_(std::move(target)), op_(op) {}
    InFlight(const InFlight&) = delete;
    InFlight& operator=(const InFlight&) = delete;
    ~InFlight() override {
      // Abandoned (an exception unwound past it): MPI may still write into the buffers, and the ranks are
      // out of step on this communicator, so it is poisoned rather than waited on.
      if (!done_) comm_.poison(what_);
    }
    MPI_Request* request() { return &request_; }

    bool test() override {
      if (done_) return true;
      int flag = 0;
      comm_.check(MPI_Test(&request_, &flag, MPI_STATUS_IGNORE), what_);
      if (flag) complete();
      return done_;
    }
    void wait() override {
      if (done_) return;
      comm_.wait(request_, what_);
      complete();
    }

   private:
    void complete() {
      done_ = true;
      if (op_ == ReduceOp::avg) work_.div_(comm_.size_);
      if (!work_.is_same(target_)) target_.copy_(work_);
    }
    MpiCommunicator& comm_;
    Pending what_;
    torch::Tensor work_, target_;
    ReduceOp op_;
    MPI_Request request_ = MPI_REQUEST_NULL;
    bool done_ = false;
  };

  std::unique_ptr<InFlight> start_all_reduce(torch::Tensor& tensor, ReduceOp op) {
    detail::check_contiguous(*this, "all_reduce", tensor);
    detail::check_reduce_dtype(*this, "all_reduce", tensor, op);
    check_usable();
    torch::Tensor work = host_copy(tensor, reduce_in_float32(tensor.scalar_type()));
    MPI_Datatype type = reduce_type(work.scalar_type());
    MLA_CHECK(type != MPI_DATATYPE_NULL, detail::who(*this), ": all_reduce does not support ",
              detail::dtype_name(tensor.scalar_type()));
    Pending what = begin(kAllReduce, tensor, {work});
    auto pending = std::make_unique<InFlight>(*this, what, work, tensor, op);
    check(MPI_Iallreduce(MPI_IN_PLACE, work.data_ptr(), count(work), type, mpi_op(op), comm_, pending->request()),
          what);
    return pending;
  }

  std::unique_ptr<InFlight> start_reduce_scatter(const torch::Tensor& input, torch::Tensor& output, ReduceOp op) {
    detail::check_scatter(*this, input, output);
    detail::check_reduce_dtype(*this, "reduce_scatter", input, op);
    check_usable();
    const bool widen = reduce_in_float32(input.scalar_type());
    torch::Tensor in = host_copy(input, widen);
    torch::Tensor out = output.is_cpu() && !widen
                            ? output
                            : torch::empty(output.sizes(), output.options().device(torch::kCPU).dtype(in.dtype()));
    MPI_Datatype type = reduce_type(in.scalar_type());
    MLA_CHECK(type != MPI_DATATYPE_NULL, detail::who(*this), ": reduce_scatter does not support ",
              detail::dtype_name(input.scalar_type()));
    if (detail::overlaps(in, out)) in = in.clone();  // output inside the input (in place): MPI needs them apart
    Pending what = begin(kReduceScatter, input, {in, out});
    auto pending = std::make_unique<InFlight>(*this, what, out, output, op);
    check(MPI_Ireduce_scatter_block(in.data_ptr(), out.data_ptr(), count(out), type, mpi_op(op), comm_,
                                    pending->request()),
          what);
    return pending;
  }

  int count(const torch::Tensor& tensor) const {
    MLA_CHECK(tensor.numel() <= INT_MAX, detail::who(*this), ": ", detail::describe(tensor),
              " exceeds MPI's int element count; split the tensor");
    return static_cast<int>(tensor.numel());
  }

  // The tensor itself when it is on the CPU in the right dtype, else a host copy (CUDA tensors, or
  // bfloat16/float16 widened to float32 for reductions).
  static torch::Tensor host_copy(const torch::Tensor& tensor, bool widen) {
    if (tensor.is_cpu() && !widen) return tensor;
    auto options = tensor.options().device(torch::kCPU);
    if (widen) options = options.dtype(torch::kFloat32);
    return tensor.to(options, /*non_blocking=*/false, /*copy=*/true).contiguous();
  }

  void check_usable() const {
    MLA_CHECK(!broken_, detail::who(*this), ": communicator is unusable after an earlier timeout or MPI error");
  }

  Pending begin(int64_t op, const torch::Tensor& tensor, std::vector<torch::Tensor> buffers) {
    Pending what;
    what.seq = ++seq_;
    what.op = op;
    if (tensor.defined()) what.desc = detail::describe(tensor);
    what.buffers = std::move(buffers);
    return what;
  }

  std::string label(const Pending& what) const {
    std::ostringstream out;
    out << detail::who(*this) << ": " << op_code_name(what.op) << " #" << what.seq;
    if (!what.desc.empty()) out << " (" << what.desc << ")";
    return out.str();
  }

  void check(int rc, const Pending& what) {
    if (rc == MPI_SUCCESS) return;
    poison(what);
    fail(label(what), " failed: ", mpi_error_text(rc));
  }

  void poison(const Pending& what) {
    broken_ = true;
    g_poisoned.store(true);
    std::lock_guard<std::mutex> lock(g_keep_mutex);
    for (const auto& buffer : what.buffers) kept_tensors().push_back(buffer);
  }

  MPI_Comm duplicate(MPI_Comm base) {
    Pending what = begin(kCreate, torch::Tensor(), {});
    MPI_Comm copy = MPI_COMM_NULL;
    MPI_Request request;
    check(MPI_Comm_idup(base, &copy, &request), what);
    wait(request, what);
    --seq_;  // creation is not a numbered collective
    MPI_Comm_set_errhandler(copy, MPI_ERRORS_RETURN);
    return copy;
  }

  // Polls `request` until done or the timeout: spins briefly (small collectives finish in
  // microseconds), then yields, then sleeps, so waiting ranks leave the cores to ranks still computing
  // (CI runs 4 ranks on 2 cores).
  void wait(MPI_Request& request, const Pending& what) {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    const auto deadline = start + timeout_;
    auto next_answer = start + std::chrono::milliseconds(20);
    for (long spin = 0;; ++spin) {
      int done = 0;
      check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), what);
      if (done) return;
      if (spin < 2000) continue;
      const auto now = clock::now();
      if (now >= next_answer) {
        answer_queries(what);
        next_answer = now + std::chrono::milliseconds(20);
      }
      if (now >= deadline) timed_out(what);
      if (spin < 20000) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
  }

  // Replies to every pending arrival query on the control channel with the collective this rank is in.
  void answer_queries(const Pending& what) {
    if (control_ == MPI_COMM_NULL) return;
    for (int i = 0; i < 64; ++i) {
      int flag = 0;
      MPI_Status status;
      if (MPI_Iprobe(MPI_ANY_SOURCE, kQueryTag, control_, &flag, &status) != MPI_SUCCESS || !flag) return;
      int64_t query[2];
      if (MPI_Recv(query, 2, MPI_INT64_T, status.MPI_SOURCE, kQueryTag, control_, MPI_STATUS_IGNORE) != MPI_SUCCESS)
        return;
      int64_t* reply = keep_message(what.seq, what.op);
      MPI_Request request;
      if (MPI_Isend(reply, 2, MPI_INT64_T, status.MPI_SOURCE, kReplyTag, control_, &request) == MPI_SUCCESS) {
        MPI_Request_free(&request);
      }
    }
  }

  // Asks every other rank where it is; " (ranks that had not arrived: 3; rank 2 is in barrier #36)".
  std::string arrival_report(const Pending& what) {
    if (control_ == MPI_COMM_NULL || size_ <= 1) return "";
    const int64_t* query = keep_message(what.seq, what.op);
    for (int peer = 0; peer < size_; ++peer) {
      if (peer == rank_) continue;
      MPI_Request request;
      if (MPI_Isend(query, 2, MPI_INT64_T, peer, kQueryTag, control_, &request) == MPI_SUCCESS) {
        MPI_Request_free(&request);
      }
    }
    // Long enough for ranks sleeping 20 ms between answers, short against any sensible timeout.
    const auto grace = std::clamp(timeout_ / 10, std::chrono::milliseconds(200), std::chrono::milliseconds(2000));
    const auto deadline = std::chrono::steady_clock::now() + grace;
    std::vector<std::array<int64_t, 2>> replies(size_, {-1, -1});
    int answered = 0;
    while (answered < size_ - 1 && std::chrono::steady_clock::now() < deadline) {
      answer_queries(what);  // ranks timing out at the same moment ask us too
      int flag = 0;
      MPI_Status status;
      if (MPI_Iprobe(MPI_ANY_SOURCE, kReplyTag, control_, &flag, &status) != MPI_SUCCESS) break;
      if (!flag) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      int64_t reply[2];
      if (MPI_Recv(reply, 2, MPI_INT64_T, status.MPI_SOURCE, kReplyTag, control_, MPI_STATUS_IGNORE) != MPI_SUCCESS)
        break;
      if (replies[status.MPI_SOURCE][0] < 0) ++answered;
      replies[status.MPI_SOURCE] = {reply[0], reply[1]};
    }
    std::ostringstream missing, elsewhere;
    for (int peer = 0; peer < size_; ++peer) {
      if (peer == rank_) continue;
      const auto& reply = replies[peer];
      if (reply[0] < 0) {
        missing << (missing.tellp() > 0 ? ", " : "") << peer;
      } else if (reply[0] != what.seq || reply[1] != what.op) {
        elsewhere << "; rank " << peer << " is in " << op_code_name(reply[1]) << " #" << reply[0];
      }
    }
    std::string report = missing.tellp() > 0 ? "ranks that had not arrived: " + missing.str() : "every rank had arrived";
    return " (" + report + elsewhere.str() + ")";
  }

  [[noreturn]] void timed_out(const Pending& what) {
    poison(what);
    std::string report = arrival_report(what);
    fail(label(what), " did not complete in ", detail::format_seconds(timeout_), ": a rank died or is stuck", report);
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Comm control_ = MPI_COMM_NULL;  // arrival queries only, so they never match collective traffic
  int rank_ = 0;
  int size_ = 1;
  std::string name_;
  int64_t seq_ = 0;
  bool broken_ = false;
};

}  // namespace

bool mpi_available() { return true; }

std::unique_ptr<Communicator> make_mpi_communicator() {
  ensure_mpi();
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world", std::chrono::minutes(30));
}

void abort_job(int exit_code) {
  std::fflush(stdout);
  std::fflush(stderr);
  int initialised = 0, finalised = 0, size = 1;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (initialised && !finalised) {
    g_poisoned.store(true);  // no MPI_Finalize at exit, whatever happens below
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
  }
  std::exit(exit_code);
}

#endif  // MLAFORGE_HAVE_MPI

}  // namespace mlaforge::parallel
