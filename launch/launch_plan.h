#pragma once
// mlarun's command building: from the options (`--nproc-per-node 8 --nnodes 2 --hostfile hosts -- cmd`)
// and what was found on this machine (environment, mpirun flavour, srun, cores) to the exact argv and
// environment of the launcher process. Pure (no process is started, no file written; the only I/O is
// reading a --hostfile) so every case is unit-tested (tests/core/launch_plan_test.cpp). Running the plan
// is launch/mlarun.cpp's job.
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mlaforge::launch {

enum class MpiFlavor { open_mpi, mpich, unknown };

// What the user asked for (the mlarun command line).
struct LaunchOptions {
  int nproc_per_node = 1;
  int nnodes = 0;  // 0: not given (1, or the hosts / the Slurm allocation's node count)
  std::string hostfile;
  std::vector<std::string> hosts;  // --hosts a,b
  std::string launcher = "auto";   // auto | mpirun | srun | none
  std::string bind = "none";       // none | core | socket
  std::vector<std::string> env;    // NAME or NAME=VALUE, for every rank
  std::vector<std::string> launcher_args;  // passed to mpirun / srun as they are, after ours
  std::vector<std::string> command;        // the program and its arguments (after `--`)
};

// What mlarun found on this machine; tests fill it by hand.
struct LaunchContext {
  std::map<std::string, std::string> environ;  // mlarun's own environment
  bool have_mpirun = false;
  bool have_srun = false;
  bool have_rsh = false;  // ssh or rsh in PATH (Open MPI needs one to start even local jobs)
  MpiFlavor mpi_flavor = MpiFlavor::unknown;  // from `mpirun --version`, when the launcher is mpirun
  std::string mpirun_version;                  // its first line, for messages
  int cpu_count = 1;                           // CPUs this process may use (sched_getaffinity)
  bool is_root = false;
};

// One host of a hostfile (Open MPI `node slots=8`, MPICH `node:8`); slots 0 when not given.
struct HostEntry {
  std::string name;
  int slots = 0;
};
// Parses hostfile text; `source` names it in errors. Comments (#) and blank lines are skipped; a host
// listed twice is kept once (first position, largest slots).
std::vector<HostEntry> parse_hostfile(std::string_view text, const std::string& source);

struct LaunchPlan {
  std::string launcher;  // "mpirun", "srun" or "none" (the command itself, no MPI)
  MpiFlavor flavor = MpiFlavor::unknown;
  std::vector<std::string> argv;  // argv[0] is the program run (mpirun, srun or the command)
  // Set in the launched process's environment (and so inherited by local ranks); --dry-run prints them
  // as NAME=VALUE before the command.
  std::vector<std::pair<std::string, std::string>> env;
  // Forwarded by name to every rank (Open MPI -x NAME, srun --export=ALL,NAME): the variables above,
  // MLAFORGE_*, NCCL_*, CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS when set, and every --env.
  std::vector<std::string> forwarded;
  // When mlarun must write a hostfile (--hosts, or a --hostfile that does not match --nnodes /
  // --nproc-per-node): its text, and the argv entry to replace with the file's path.
  std::optional<std::string> hostfile_text;
  int hostfile_arg = -1;
  int nproc_per_node = 1, nnodes = 1, world_size = 1;
  int threads_per_rank = 1;
  std::string local_rank_variable;  // what the ranks read their local rank (and GPU) from
  std::vector<std::string> notes;   // one-line remarks for stderr (e.g. "oversubscribed: ...")
};

// Which launcher `--launcher auto` means here: none for one process in all, srun inside a Slurm
// allocation (SLURM_JOB_ID set and srun found), else mpirun. Explicit choices are returned as they are.
std::string choose_launcher(const LaunchOptions& options, const LaunchContext& context);

// Builds the plan; throws mlaforge::Error with a message naming the option at fault.
LaunchPlan build_launch_plan(const LaunchOptions& options, const LaunchContext& context);

// Recognises the MPI behind `mpirun --version` output.
MpiFlavor parse_mpi_flavor(std::string_view version_output);
std::string_view flavor_name(MpiFlavor flavor);

// One shell word: unchanged when made of safe characters, else single-quoted ('it'\''s').
std::string shell_quote(std::string_view word);
// The whole plan as one line a POSIX shell runs as is: `NAME=VALUE ... program args...`.
std::string format_command(const LaunchPlan& plan);

}  // namespace mlaforge::launch
