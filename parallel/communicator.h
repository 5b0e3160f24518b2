#pragma once
// Collective communication between the processes of a training job (one process per device, launched
// by mpirun / srun / torchrun). One interface, three implementations:
//   single  a world of one process: every collective is the identity (no MPI needed)
//   mpi     MPI collectives on CPU tensors (what CI runs: `mpirun -np 2/4`)
//   nccl    NCCL on CUDA tensors, bootstrapped over MPI (rank 0 creates the unique id, MPI broadcasts
//           it), each process bound to GPU `local_rank`, collectives ordered by CUDA events after the
//           compute that produced the tensors and before the compute that consumes them
//
// Every collective is in place or writes a caller-allocated output, takes contiguous tensors of the same
// dtype and shape on every rank (checked where cheap), and is a barrier in the sense that all ranks of
// the communicator must call it in the same order. Timeouts: a collective that does not complete within
// `timeout` (a rank died, or is stuck, or called another collective) throws mlaforge::Error naming this
// rank, the operation, its sequence number and the communicator, e.g.
//   "rank 1 of 4 (dp group): all_reduce #37 (float32 x 1048576) did not complete in 60 s: a rank died
//    or is stuck (ranks that had not arrived: 3)"
// where the backend can tell which ranks had not arrived (mpi: yes, by asking the other ranks over a side
// channel for a bounded grace period; nccl: no). The caller then exits non-zero (abort_job below);
// mpirun stops the others. Never a silent hang. After a timeout or an MPI/NCCL error the communicator
// is unusable: every later call throws at once.
//
// mpi backend: collectives block the calling thread until done (polling the non-blocking MPI call, so
// the timeout is checked). CUDA tensors are staged through host memory. bfloat16/float16 reductions are
// computed in float32 (converted, reduced, rounded back once). Call it from the thread that created the
// first communicator (MPI is initialised with MPI_THREAD_SERIALIZED requested, FUNNELED accepted).
// nccl backend: collectives are enqueued on the communicator's own CUDA stream, ordered after the
// caller's current stream and joined back into it, and return at once (asynchronous to the host like any
// CUDA kernel); a watchdog thread checks their completion against the timeout, aborts
// the NCCL communicator on expiry or on an NCCL error, and the next call on this rank throws (the
// watchdog ends the process itself if none comes within 10 s). barrier() waits on the host.
#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <string>

namespace mlaforge::parallel {

// Where this process stands in the job, from the launcher's environment variables:
//   OpenMPI  OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE
//   MPICH, Intel MPI (PMI)  PMI_RANK / PMI_SIZE, MPI_LOCALRANKID / MPI_LOCALNRANKS
//   Slurm    SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID / this node's entry
//            of SLURM_STEP_TASKS_PER_NODE (else SLURM_TASKS_PER_NODE, "2(x3),1" form) picked by
//            SLURM_NODEID (else SLURM_NTASKS_PER_NODE); only inside an srun step (SLURM_STEP_NUM_TASKS
//            set): a batch script itself is one process even though SLURM_PROCID=0 is set there
//   torchrun RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE (RANK and WORLD_SIZE both needed)
// The first family found wins, in that order; none: a single process. A family without its local
// variables gets local_rank = rank, local_world_size = world_size (one node assumed). Values are checked:
// not an integer, world size < 1, rank outside [0, world size), local rank outside [0, local size) or
// local size > world size throw mlaforge::Error naming the variable.
struct ProcessEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string launcher = "none";  // "openmpi", "pmi", "slurm", "torchrun", "none"
};
ProcessEnv detect_process_env();

enum class ReduceOp { sum, avg, max };

// A collective still in flight (Communicator::all_reduce_async, reduce_scatter_async). The tensors passed
// to the call must stay alive and untouched until wait() returns.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  // Non-blocking: whether the collective has completed. MPI progresses non-blocking collectives only
  // inside MPI calls, so a caller that computes meanwhile polls this now and then.
  virtual bool test() = 0;
  // Completes the collective within the communicator's timeout and leaves the result in the output given
  // to the call. nccl: makes the caller's current CUDA stream wait for it (no host wait). Idempotent.
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "single", "mpi", "nccl"
  virtual std::string name() const = 0;     // "world", "tp group", "dp group" (for messages)

  // In place: every rank ends with op over all ranks' `tensor`.
  virtual void all_reduce(torch::Tensor& tensor, ReduceOp op = ReduceOp::sum) = 0;
  // output (size() * n elements) = every rank's input (n elements) concatenated in rank order. In place
  // when input is this rank's slot of output (output.narrow(0, rank() * n, n)).
  virtual void all_gather(const torch::Tensor& input, torch::Tensor& output) = 0;
  // input (size() * n elements) -> output (n elements): rank r receives op over all ranks of slice r.
  // output may be this rank's slice of input.
  virtual void reduce_scatter(const torch::Tensor& input, torch::Tensor& output, ReduceOp op = ReduceOp::sum) = 0;
  // In place: every rank ends with root's tensor.
  virtual void broadcast(torch::Tensor& tensor, int root) = 0;
  virtual void barrier() = 0;

  // Started now, completed by the returned handle's wait(): lets a caller overlap a reduction with
  // computation (gradient buckets reduced during the backward pass). The same ordering rule holds: every
  // rank starts the same collectives in the same order. mpi: the non-blocking MPI call; nccl: issued on
  // the communicator's stream after the caller's current stream (so it sees the producing kernels),
  // which wait() joins back. mpi: a handle destroyed before wait() leaves the communicator unusable (its
  // buffers are kept alive: MPI may still write into them). This base version runs the blocking one.
  virtual std::unique_ptr<PendingCollective> all_reduce_async(torch::Tensor& tensor, ReduceOp op = ReduceOp::sum);
  virtual std::unique_ptr<PendingCollective> reduce_scatter_async(const torch::Tensor& input, torch::Tensor& output,
                                                                  ReduceOp op = ReduceOp::sum);

  // A sub-communicator of the ranks that pass the same `color`, ordered by `key` (MPI_Comm_split
  // semantics). Collective over this communicator. `name` labels it in messages.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name) = 0;

  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }
  std::chrono::milliseconds timeout() const { return timeout_; }

 protected:
  std::chrono::milliseconds timeout_{std::chrono::minutes(30)};
};

// Whether this build has the backend compiled in (mpi: found MPI at configure time; nccl: nccl.h, the
// NCCL library, CUDA runtime headers and LibTorch's c10_cuda were found). nccl may still fail at run
// time without a GPU.
bool mpi_available();
bool nccl_available();

// A world of one.
std::unique_ptr<Communicator> make_single_communicator();

// MPI_COMM_WORLD (MPI is initialised on first use, with MPI_THREAD_FUNNELED or better, and finalised at
// exit unless a collective failed). Each call is collective and returns a new duplicate, named "world".
// Throws when this build has no MPI.
std::unique_ptr<Communicator> make_mpi_communicator();

// NCCL over the ranks of `bootstrap` (an MPI communicator: it carries the unique id), on CUDA device
// `device_index`. Throws when this build has no NCCL or CUDA is unavailable.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device_index);

// What `parallel.backend` auto picks: nccl for CUDA training with more than one process, mpi for CPU
// with more than one process, single for one process. `backend` is "auto", "single", "mpi" or "nccl"
// (nccl with one process needs no MPI; with several it bootstraps over MPI_COMM_WORLD and binds this
// process to GPU local_rank). Throws when the launcher's world size disagrees with MPI's, when "single"
// is asked for in a multi-process job, or for torchrun jobs of several processes (no MPI to bootstrap).
std::unique_ptr<Communicator> make_world_communicator(const std::string& backend, bool cuda);

// Ends this process after an error with `exit_code`, without MPI_Finalize (which waits for every rank
// and would hang while another rank is stuck). When MPI runs with more than one process, MPI_Abort
// makes the launcher stop every rank of the job; otherwise std::exit. Flushes stdout/stderr first.
[[noreturn]] void abort_job(int exit_code);

// Small text messages between ranks (checkpoint paths, file records), as uint8 tensors on `device` (NCCL
// moves CUDA tensors only). Collective over `comm`.
std::string broadcast_string(Communicator& comm, const std::string& text, int root,
                             torch::Device device = torch::kCPU);
// Every rank's text, in rank order.
std::vector<std::string> all_gather_strings(Communicator& comm, const std::string& text,
                                            torch::Device device = torch::kCPU);

// The tensor- and data-parallel groups of a world: TP groups are `tp` CONSECUTIVE world ranks (inside
// a node when ranks are placed by node), DP groups are the ranks with the same TP rank.
//   world rank w:  tp_rank = w % tp,  dp_rank = w / tp
struct ParallelGroups {
  std::unique_ptr<Communicator> world, tp, dp;
  int tp_rank() const { return tp->rank(); }
  int dp_rank() const { return dp->rank(); }
};
// Collective over `world` (two splits); throws when tp < 1 or tp does not divide the world size.
ParallelGroups make_parallel_groups(std::unique_ptr<Communicator> world, int tp);

}  // namespace mlaforge::parallel
