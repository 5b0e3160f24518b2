// The backend-independent part of the communication layer: message helpers and argument checks, the
// single-process communicator, the world factory that `parallel.backend` calls, and the TP/DP layout.
#include "parallel/communicator.h"

#include <cstring>

#include "core/error.h"
#include "parallel/comm_detail.h"

#include <sstream>

namespace mlaforge::parallel {

namespace detail {

std::string dtype_name(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32: return "float32";
    case torch::kFloat64: return "float64";
    case torch::kFloat16: return "float16";
    case torch::kBFloat16: return "bfloat16";
    case torch::kInt64: return "int64";
    case torch::kInt32: return "int32";
    case torch::kInt16: return "int16";
    case torch::kInt8: return "int8";
    case torch::kUInt8: return "uint8";
    case torch::kBool: return "bool";
    default: return c10::toString(type);
  }
}

std::string describe(const torch::Tensor& tensor) {
  if (!tensor.defined()) return "undefined tensor";
  std::ostringstream out;
  out << dtype_name(tensor.scalar_type()) << " x " << tensor.numel();
  return out.str();
}

const char* op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::avg: return "avg";
    case ReduceOp::max: return "max";
  }
  return "?";
}

std::string format_seconds(std::chrono::milliseconds duration) {
  std::ostringstream out;
  out << static_cast<double>(duration.count()) / 1000.0 << " s";
  return out.str();
}

std::string who(const Communicator& comm) {
  std::ostringstream out;
  out << "rank " << comm.rank() << " of " << comm.size() << " (" << comm.name() << ")";
  return out.str();
}

void check_contiguous(const Communicator& comm, const char* what, const torch::Tensor& tensor) {
  MLA_CHECK(tensor.defined(), who(comm), ": ", what, " got an undefined tensor");
  MLA_CHECK(tensor.is_contiguous(), who(comm), ": ", what, " needs a contiguous tensor (got ", describe(tensor),
            " with strides ", tensor.strides(), ")");
}

void check_gather(const Communicator& comm, const torch::Tensor& input, const torch::Tensor& output) {
  check_contiguous(comm, "all_gather", input);
  check_contiguous(comm, "all_gather", output);
  MLA_CHECK(input.scalar_type() == output.scalar_type() && input.device() == output.device(), who(comm),
            ": all_gather input (", describe(input), ", ", input.device(), ") and output (", describe(output), ", ",
            output.device(), ") differ in dtype or device");
  MLA_CHECK(output.numel() == input.numel() * comm.size(), who(comm), ": all_gather output has ", output.numel(),
            " elements, expected ", comm.size(), " x ", input.numel());
}

void check_scatter(const Communicator& comm, const torch::Tensor& input, const torch::Tensor& output) {
  check_contiguous(comm, "reduce_scatter", input);
  check_contiguous(comm, "reduce_scatter", output);
  MLA_CHECK(input.scalar_type() == output.scalar_type() && input.device() == output.device(), who(comm),
            ": reduce_scatter input (", describe(input), ", ", input.device(), ") and output (", describe(output),
            ", ", output.device(), ") differ in dtype or device");
  MLA_CHECK(input.numel() == output.numel() * comm.size(), who(comm), ": reduce_scatter input has ", input.numel(),
            " elements, expected ", comm.size(), " x ", output.numel());
}

void check_root(const Communicator& comm, int root) {
  MLA_CHECK(root >= 0 && root < comm.size(), who(comm), ": broadcast root ", root, " is outside [0, ", comm.size(),
            ")");
}

bool overlaps(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0 || a.device() != b.device()) return false;
  const char* a0 = static_cast<const char*>(a.data_ptr());
  const char* b0 = static_cast<const char*>(b.data_ptr());
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

void check_reduce_dtype(const Communicator& comm, const char* what, const torch::Tensor& tensor, ReduceOp op) {
  MLA_CHECK(tensor.scalar_type() != torch::kBool, who(comm), ": ", what, " cannot reduce bool tensors");
  MLA_CHECK(op != ReduceOp::avg || at::isFloatingType(tensor.scalar_type()), who(comm), ": ", what,
            " with avg needs a floating dtype, got ", dtype_name(tensor.scalar_type()));
}

}  // namespace detail

namespace {

// A world of one process: every collective is the identity (or a copy), with the same argument checks
// as the real backends so code that is wrong on 8 GPUs is already wrong on one CPU.
class SingleCommunicator final : public Communicator {
 public:
  explicit SingleCommunicator(std::string name) : name_(std::move(name)) {}

  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single"; }
  std::string name() const override { return name_; }

  void all_reduce(torch::Tensor& tensor, ReduceOp op) override {
    detail::check_contiguous(*this, "all_reduce", tensor);
    detail::check_reduce_dtype(*this, "all_reduce", tensor, op);
  }
  void all_gather(const torch::Tensor& input, torch::Tensor& output) override {
    detail::check_gather(*this, input, output);
    if (output.data_ptr() != input.data_ptr()) output.view(-1).copy_(input.view(-1));
  }
  void reduce_scatter(const torch::Tensor& input, torch::Tensor& output, ReduceOp op) override {
    detail::check_scatter(*this, input, output);
    detail::check_reduce_dtype(*this, "reduce_scatter", input, op);
    if (output.data_ptr() != input.data_ptr()) output.view(-1).copy_(input.view(-1));
  }
  void broadcast(torch::Tensor& tensor, int root) override {
    detail::check_contiguous(*this, "broadcast", tensor);
    detail::check_root(*this, root);
  }
  void barrier() override {}
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    auto child = std::make_unique<SingleCommunicator>(name);
    child->set_timeout(timeout());
    return child;
  }

 private:
  std::string name_;
};

}  // namespace

namespace {
class CompletedCollective final : public PendingCollective {
 public:
  bool test() override { return true; }
  void wait() override {}
};
}  // namespace

std::unique_ptr<PendingCollective> Communicator::all_reduce_async(torch::Tensor& tensor, ReduceOp op) {
  all_reduce(tensor, op);
  return std::make_unique<CompletedCollective>();
}

std::unique_ptr<PendingCollective> Communicator::reduce_scatter_async(const torch::Tensor& input, torch::Tensor& output,
                                                                      ReduceOp op) {
  reduce_scatter(input, output, op);
  return std::make_unique<CompletedCollective>();
}

std::unique_ptr<Communicator> make_single_communicator() { return std::make_unique<SingleCommunicator>("world"); }

std::unique_ptr<Communicator> make_world_communicator(const std::string& backend, bool cuda) {
  MLA_CHECK(backend == "auto" || backend == "single" || backend == "mpi" || backend == "nccl",
            "parallel.backend: unknown value '", backend, "' (expected auto, single, mpi or nccl)");
  ProcessEnv env = detect_process_env();
  std::string chosen = backend;
  if (chosen == "auto") chosen = env.world_size == 1 ? "single" : (cuda ? "nccl" : "mpi");

  if (chosen == "single") {
    MLA_CHECK(env.world_size == 1, "parallel.backend=single, but the launcher (", env.launcher, ") started ",
              env.world_size, " processes: use mpi or nccl (or auto)");
    return make_single_communicator();
  }
  if (chosen == "nccl" && env.world_size == 1) {
    // One GPU process: NCCL needs no bootstrap network, so no MPI either.
    auto bootstrap = make_single_communicator();
    return make_nccl_communicator(*bootstrap, env.local_rank);
  }
  MLA_CHECK(env.launcher != "torchrun", "this job was started by torchrun (RANK/WORLD_SIZE set, world size ",
            env.world_size, "), but mlaforge bootstraps its ", chosen,
            " communicator over MPI: launch with mpirun or srun instead");
  auto mpi = make_mpi_communicator();
  // A process started by hand (no launcher variables) that still finds itself in an MPI world of one is
  // fine; anything else must agree with the launcher, or GPUs and data shards are assigned wrongly.
  if (env.launcher != "none") {
    MLA_CHECK(mpi->size() == env.world_size && mpi->rank() == env.rank, "the launcher (", env.launcher,
              ") says rank ", env.rank, " of ", env.world_size, " but MPI_COMM_WORLD says rank ", mpi->rank(), " of ",
              mpi->size(), " (was this binary started by a different MPI's launcher?)");
  }
  if (chosen == "mpi") return mpi;
  return make_nccl_communicator(*mpi, env.local_rank);
}

std::string broadcast_string(Communicator& comm, const std::string& text, int root, torch::Device device) {
  if (comm.size() == 1) return text;
  torch::Tensor length = torch::tensor({static_cast<int64_t>(text.size())}, torch::kInt64).to(device);
  comm.broadcast(length, root);
  const int64_t n = length.cpu().item<int64_t>();
  torch::Tensor bytes = torch::zeros({std::max<int64_t>(n, 1)}, torch::kUInt8);
  if (comm.rank() == root) std::memcpy(bytes.data_ptr(), text.data(), text.size());
  bytes = bytes.to(device);
  comm.broadcast(bytes, root);
  bytes = bytes.cpu();
  return std::string(reinterpret_cast<const char*>(bytes.data_ptr()), static_cast<size_t>(n));
}

std::vector<std::string> all_gather_strings(Communicator& comm, const std::string& text, torch::Device device) {
  if (comm.size() == 1) return {text};
  const int n = comm.size();
  torch::Tensor lengths = torch::zeros({n}, torch::kInt64).to(device);
  comm.all_gather(torch::tensor({static_cast<int64_t>(text.size())}, torch::kInt64).to(device), lengths);
  lengths = lengths.cpu();
  const int64_t width = std::max<int64_t>(1, lengths.max().item<int64_t>());
  torch::Tensor mine = torch::zeros({width}, torch::kUInt8);
  std::memcpy(mine.data_ptr(), text.data(), text.size());
  torch::Tensor all = torch::empty({n * width}, torch::kUInt8).to(device);
  comm.all_gather(mine.to(device), all);
  all = all.cpu();
  std::vector<std::string> out;
  for (int r = 0; r < n; ++r)
    out.emplace_back(reinterpret_cast<const char*>(all.data_ptr<uint8_t>() + r * width),
                     static_cast<size_t>(lengths[r].item<int64_t>()));
  return out;
}

ParallelGroups make_parallel_groups(std::unique_ptr<Communicator> world, int tp) {
  MLA_CHECK(world != nullptr, "make_parallel_groups: no world communicator");
  MLA_CHECK(tp >= 1, "parallel.tp=", tp, " must be at least 1");
  MLA_CHECK(world->size() % tp == 0, "parallel.tp=", tp, " does not divide the world size ", world->size());
  const int w = world->rank();
  ParallelGroups groups;
  // Both splits are collective over the world and issued in the same order on every rank.
  // TP groups: `tp` consecutive ranks (one node's GPUs when ranks are placed by node).
  groups.tp = world->split(/*color=*/w / tp, /*key=*/w % tp, "tp group");
  // DP groups: the ranks holding the same TP shard.
  groups.dp = world->split(/*color=*/w % tp, /*key=*/w / tp, "dp group");
  groups.world = std::move(world);
  MLA_CHECK(groups.tp->size() == tp && groups.tp->rank() == w % tp && groups.dp->rank() == w / tp,
            "make_parallel_groups: split gave tp rank ", groups.tp->rank(), " of ", groups.tp->size(), ", dp rank ",
            groups.dp->rank(), " for world rank ", w, " (expected ", w % tp, " of ", tp, ", ", w / tp, ")");
  return groups;
}

}  // namespace mlaforge::parallel
