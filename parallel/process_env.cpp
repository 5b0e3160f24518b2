// Rank, world size and node-local placement of this process, read from the launcher's environment
// before any communicator exists (the GPU to bind and the backend to pick depend on them).
#include "core/error.h"
#include "parallel/communicator.h"

#include <charconv>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mlaforge::parallel {
namespace {

std::optional<std::string> get_env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\n')) text.remove_suffix(1);
  return text;
}

// A whole-string decimal integer; anything else (empty, "2x", "1e3", overflow) is an error naming the
// variable, because a silently misread rank makes a job hang instead of failing.
int parse_int(const char* name, const std::string& text) {
  std::string_view digits = trim(text);
  int value = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size()) {
    fail("environment variable ", name, "='", text, "' is not an integer");
  }
  return value;
}

int required_int(const char* name, const char* needed_by) {
  auto text = get_env(name);
  if (!text) fail("environment variable ", name, " is not set, but ", needed_by, " is (incomplete launcher environment)");
  return parse_int(name, *text);
}

// Slurm's compressed tasks-per-node list, e.g. "2(x3),1" = nodes 0-2 run 2 tasks, node 3 runs 1.
// Returns the entry for node `node`, or nullopt when the list is malformed or too short.
std::optional<int> slurm_tasks_on_node(const std::string& list, int node) {
  int index = 0;
  std::string_view rest = list;
  while (!rest.empty()) {
    size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    int tasks = 0, repeat = 1;
    size_t paren = item.find("(x");
    std::string_view count = item.substr(0, paren);
    auto [end, ec] = std::from_chars(count.data(), count.data() + count.size(), tasks);
    if (ec != std::errc() || end != count.data() + count.size()) return std::nullopt;
    if (paren != std::string_view::npos) {
      std::string_view times = item.substr(paren + 2);
      if (times.empty() || times.back() != ')') return std::nullopt;
      times.remove_suffix(1);
      auto [end2, ec2] = std::from_chars(times.data(), times.data() + times.size(), repeat);
      if (ec2 != std::errc() || end2 != times.data() + times.size() || repeat < 1) return std::nullopt;
    }
    if (node < index + repeat) return tasks;
    index += repeat;
  }
  return std::nullopt;
}

struct Names {
  const char* rank;
  const char* size;
  const char* local_rank;
  const char* local_size;
};

// Range checks shared by every family; messages name the variables so a wrong launcher setup is obvious.
void validate(const ProcessEnv& env, const Names& names) {
  if (env.world_size < 1) fail("environment variable ", names.size, "=", env.world_size, " must be at least 1");
  if (env.rank < 0 || env.rank >= env.world_size) {
    fail("environment variable ", names.rank, "=", env.rank, " is outside [0, ", names.size, "=", env.world_size, ")");
  }
  if (env.local_world_size < 1) {
    fail("environment variable ", names.local_size, "=", env.local_world_size, " must be at least 1");
  }
  if (env.local_world_size > env.world_size) {
    fail("environment variable ", names.local_size, "=", env.local_world_size, " exceeds ", names.size, "=",
         env.world_size);
  }
  if (env.local_rank < 0 || env.local_rank >= env.local_world_size) {
    fail("environment variable ", names.local_rank, "=", env.local_rank, " is outside [0, ", names.local_size, "=",
         env.local_world_size, ")");
  }
}

// The common shape: four plain integers, the local pair optional.
ProcessEnv read_family(const char* launcher, const Names& names) {
  ProcessEnv env;
  env.launcher = launcher;
  env.rank = required_int(names.rank, names.rank);
  env.world_size = required_int(names.size, names.rank);
  auto local_rank = get_env(names.local_rank);
  auto local_size = get_env(names.local_size);
  if (local_rank && local_size) {
    env.local_rank = parse_int(names.local_rank, *local_rank);
    env.local_world_size = parse_int(names.local_size, *local_size);
  } else if (local_rank || local_size) {
    fail("environment variable ", local_rank ? names.local_size : names.local_rank, " is not set, but ",
         local_rank ? names.local_rank : names.local_size, " is (incomplete launcher environment)");
  } else {
    env.local_rank = env.rank;  // one node assumed
    env.local_world_size = env.world_size;
  }
  validate(env, names);
  return env;
}

ProcessEnv read_slurm() {
  ProcessEnv env;
  env.launcher = "slurm";
  env.rank = required_int("SLURM_PROCID", "SLURM_PROCID");
  env.world_size = parse_int("SLURM_STEP_NUM_TASKS", *get_env("SLURM_STEP_NUM_TASKS"));
  Names names{"SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_STEP_TASKS_PER_NODE"};
  auto local_id = get_env("SLURM_LOCALID");
  if (!local_id) {
    env.local_rank = env.rank;
    env.local_world_size = env.world_size;
    validate(env, names);
    return env;
  }
  env.local_rank = parse_int("SLURM_LOCALID", *local_id);
  // This node's task count: the step's per-node list indexed by the node id, else the job's, else the
  // uniform --ntasks-per-node.
  std::optional<int> local_size;
  auto node_id = get_env("SLURM_NODEID");
  for (const char* list_name : {"SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"}) {
    auto list = get_env(list_name);
    if (!list || !node_id) continue;
    int node = parse_int("SLURM_NODEID", *node_id);
    local_size = slurm_tasks_on_node(*list, node);
    if (!local_size) {
      fail("environment variable ", list_name, "='", *list, "' has no entry for SLURM_NODEID=", node,
           " (expected a list like 2(x3),1)");
    }
    names.local_size = list_name;
    break;
  }
  if (!local_size) {
    if (auto per_node = get_env("SLURM_NTASKS_PER_NODE")) {
      local_size = parse_int("SLURM_NTASKS_PER_NODE", *per_node);
      names.local_size = "SLURM_NTASKS_PER_NODE";
    }
  }
  if (!local_size) {
    fail("environment variable SLURM_LOCALID is set but none of SLURM_STEP_TASKS_PER_NODE, SLURM_TASKS_PER_NODE "
         "(with SLURM_NODEID) or SLURM_NTASKS_PER_NODE is: cannot tell how many tasks share this node");
  }
  env.local_world_size = *local_size;
  validate(env, names);
  return env;
}

}  // namespace

ProcessEnv detect_process_env() {
  if (get_env("OMPI_COMM_WORLD_RANK")) {
    return read_family("openmpi", {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                                   "OMPI_COMM_WORLD_LOCAL_SIZE"});
  }
  if (get_env("PMI_RANK")) {
    return read_family("pmi", {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"});
  }
  // Inside an srun step only: a batch script sees SLURM_PROCID=0 and SLURM_NTASKS=N but is one process.
  if (get_env("SLURM_PROCID") && get_env("SLURM_STEP_NUM_TASKS")) return read_slurm();
  if (get_env("RANK") && get_env("WORLD_SIZE")) {
    return read_family("torchrun", {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"});
  }
  return ProcessEnv{};
}

}  // namespace mlaforge::parallel
