// mlarun's command building (see launch_plan.h). The Open MPI settings are those a container needs
// (tests/parallel/run_mpi.sh explains each); they are only applied where they cannot hurt a real cluster:
// shared-memory-only transport and "no remote shell" only for single-node jobs, and never over a value
// the user already chose (an OMPI_MCA_* variable or a --mca in the launcher arguments).
#include "launch/launch_plan.h"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"

namespace mlaforge::launch {
namespace {

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t' || text.front() == '\r')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r')) text.remove_suffix(1);
  return text;
}

std::optional<int> parse_positive(std::string_view text) {
  text = trim(text);
  int value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value < 1) return std::nullopt;
  return value;
}

bool valid_env_name(std::string_view name) {
  if (name.empty() || (name[0] >= '0' && name[0] <= '9')) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

std::optional<std::string> lookup(const std::map<std::string, std::string>& environ, const std::string& name) {
  auto it = environ.find(name);
  if (it == environ.end()) return std::nullopt;
  return it->second;
}

std::string join(const std::vector<std::string>& items, std::string_view separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += separator;
    out += items[i];
  }
  return out;
}

// A --env entry: NAME=VALUE sets it, NAME alone forwards mlarun's own value (which must exist, or the
// ranks would silently see nothing).
struct EnvEntry {
  std::string name;
  std::optional<std::string> value;
};

std::vector<EnvEntry> parse_env_options(const std::vector<std::string>& entries, const LaunchContext& context) {
  std::vector<EnvEntry> out;
  for (const auto& entry : entries) {
    const size_t eq = entry.find('=');
    EnvEntry e{entry.substr(0, eq), std::nullopt};
    if (eq != std::string::npos) e.value = entry.substr(eq + 1);
    if (!valid_env_name(e.name)) {
      fail("--env '", entry, "': '", e.name, "' is not a variable name (expected NAME or NAME=VALUE, NAME made of letters, digits and _)");
    }
    if (!e.value && !lookup(context.environ, e.name)) {
      fail("--env ", e.name, ": not set in mlarun's environment, so there is nothing to forward (give a value: --env ",
           e.name, "=VALUE)");
    }
    out.push_back(std::move(e));
  }
  return out;
}

// True when `args` (launcher arguments) contains one of `flags`, alone or as `flag=value`.
bool has_flag(const std::vector<std::string>& args, std::initializer_list<std::string_view> flags) {
  for (const auto& arg : args) {
    for (auto flag : flags) {
      if (arg == flag || (arg.size() > flag.size() && arg.compare(0, flag.size(), flag) == 0 && arg[flag.size()] == '=')) {
        return true;
      }
    }
  }
  return false;
}

// True when the user already set Open MPI parameter `key`: OMPI_MCA_<key> in the environment, or
// `--mca <key> ...` among the launcher arguments. Ours would then override or clash with theirs.
bool user_set_mca(const LaunchOptions& options, const LaunchContext& context, const std::string& key) {
  if (context.environ.count("OMPI_MCA_" + key)) return true;
  const auto& args = options.launcher_args;
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if ((args[i] == "--mca" || args[i] == "-mca" || args[i] == "--gmca" || args[i] == "-gmca") && args[i + 1] == key) {
      return true;
    }
  }
  return false;
}

// The hosts of --hostfile or --hosts, in order; empty when neither is given.
std::vector<HostEntry> read_hosts(const LaunchOptions& options) {
  if (!options.hostfile.empty()) {
    std::ifstream in(options.hostfile, std::ios::binary);
    if (!in) fail("--hostfile ", options.hostfile, ": cannot read it (no such file, or no permission)");
    std::stringstream text;
    text << in.rdbuf();
    auto hosts = parse_hostfile(text.str(), options.hostfile);
    if (hosts.empty()) fail("--hostfile ", options.hostfile, " lists no hosts (only blank lines or comments)");
    return hosts;
  }
  std::vector<HostEntry> hosts;
  std::set<std::string> seen;
  for (const auto& raw : options.hosts) {
    const std::string name(trim(raw));
    if (name.empty()) fail("--hosts: empty host name in the list (expected --hosts node1,node2)");
    if (name.find_first_of(" \t:") != std::string::npos) {
      fail("--hosts: '", name, "' is not a host name (give names only; mlarun sets the slots from --nproc-per-node)");
    }
    if (seen.insert(name).second) hosts.push_back({name, 0});
  }
  return hosts;
}

int slurm_node_count(const LaunchContext& context) {
  for (const char* name : {"SLURM_JOB_NUM_NODES", "SLURM_NNODES"}) {
    if (auto text = lookup(context.environ, name)) {
      if (auto n = parse_positive(*text)) return *n;
      fail("environment variable ", name, "='", *text, "' is not a positive integer");
    }
  }
  return 0;
}

// A resource manager mpirun reads the node list from, for --nnodes > 1 without a hostfile.
bool in_resource_manager(const LaunchContext& context) {
  for (const char* name : {"SLURM_JOB_ID", "PBS_NODEFILE", "LSB_DJOB_HOSTFILE", "LSB_HOSTS", "PE_HOSTFILE"}) {
    if (context.environ.count(name)) return true;
  }
  return false;
}

void refuse_process_count_args(const LaunchOptions& options, const std::string& launcher) {
  const bool mpirun = launcher == "mpirun";
  const bool conflict = mpirun ? has_flag(options.launcher_args, {"-np", "--np", "-n", "--n", "-c"})
                               : has_flag(options.launcher_args, {"-n", "--ntasks", "-N", "--nodes", "--ntasks-per-node"});
  if (conflict) {
    fail("launcher arguments (", join(options.launcher_args, " "), ") set the process or node count, which mlarun ",
         "computes from --nproc-per-node x --nnodes: use those options instead");
  }
}

}  // namespace

std::vector<HostEntry> parse_hostfile(std::string_view text, const std::string& source) {
  std::vector<HostEntry> hosts;
  int line_number = 0;
  while (!text.empty()) {
    const size_t newline = text.find('\n');
    std::string_view line = text.substr(0, newline);
    text = newline == std::string_view::npos ? std::string_view() : text.substr(newline + 1);
    ++line_number;
    if (size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    line = trim(line);
    if (line.empty()) continue;
    // Tokens: the host (optionally MPICH's host:N), then Open MPI's key=value fields.
    std::vector<std::string_view> tokens;
    while (!line.empty()) {
      const size_t space = line.find_first_of(" \t");
      tokens.push_back(line.substr(0, space));
      line = space == std::string_view::npos ? std::string_view() : trim(line.substr(space));
    }
    HostEntry host;
    std::string_view name = tokens[0];
    if (size_t colon = name.find(':'); colon != std::string_view::npos) {
      auto slots = parse_positive(name.substr(colon + 1));
      if (!slots) fail(source, ":", line_number, ": '", tokens[0], "' is not host or host:SLOTS");
      host.slots = *slots;
      name = name.substr(0, colon);
    }
    if (name.empty()) fail(source, ":", line_number, ": no host name");
    host.name = std::string(name);
    for (size_t i = 1; i < tokens.size(); ++i) {
      const auto field = tokens[i];
      const size_t eq = field.find('=');
      const auto key = field.substr(0, eq);
      if (eq == std::string_view::npos || (key != "slots" && key != "max_slots" && key != "max-slots")) {
        fail(source, ":", line_number, ": unexpected '", field, "' (expected `host [slots=N] [max_slots=N]` or `host:N`)");
      }
      auto value = parse_positive(field.substr(eq + 1));
      if (!value) fail(source, ":", line_number, ": '", field, "' needs a positive integer");
      if (key == "slots") host.slots = *value;
    }
    auto it = std::find_if(hosts.begin(), hosts.end(), [&](const HostEntry& h) { return h.name == host.name; });
    if (it == hosts.end()) {
      hosts.push_back(host);
    } else {
      it->slots = std::max(it->slots, host.slots);
    }
  }
  return hosts;
}

MpiFlavor parse_mpi_flavor(std::string_view version) {
  for (std::string_view mark : {"Open MPI", "OpenRTE", "open-mpi.org"}) {
    if (version.find(mark) != std::string_view::npos) return MpiFlavor::open_mpi;
  }
  for (std::string_view mark : {"HYDRA", "Hydra", "MPICH", "Intel(R) MPI", "MVAPICH"}) {
    if (version.find(mark) != std::string_view::npos) return MpiFlavor::mpich;
  }
  return MpiFlavor::unknown;
}

std::string_view flavor_name(MpiFlavor flavor) {
  switch (flavor) {
    case MpiFlavor::open_mpi: return "Open MPI";
    case MpiFlavor::mpich: return "MPICH";
    default: return "unknown MPI";
  }
}

std::string choose_launcher(const LaunchOptions& options, const LaunchContext& context) {
  const auto& l = options.launcher;
  if (l == "mpirun" || l == "srun" || l == "none") return l;
  if (l != "auto") fail("--launcher '", l, "': expected auto, mpirun, srun or none");
  const int nnodes = options.nnodes > 0 ? options.nnodes : 1;
  if (options.nproc_per_node == 1 && nnodes == 1 && options.hosts.empty() && options.hostfile.empty()) return "none";
  if (context.environ.count("SLURM_JOB_ID") && context.have_srun) return "srun";
  return "mpirun";
}

LaunchPlan build_launch_plan(const LaunchOptions& options, const LaunchContext& context) {
  if (options.nproc_per_node < 1) fail("--nproc-per-node must be at least 1 (got ", options.nproc_per_node, ")");
  if (options.nnodes < 0) fail("--nnodes must be at least 1 (got ", options.nnodes, ")");
  if (options.command.empty()) fail("no command to run: mlarun [options] -- PROGRAM [ARGS...]");
  if (!options.hostfile.empty() && !options.hosts.empty()) fail("--hostfile and --hosts both given: use one");
  if (options.bind != "none" && options.bind != "core" && options.bind != "socket") {
    fail("--bind '", options.bind, "': expected none, core or socket");
  }

  LaunchPlan plan;
  plan.launcher = choose_launcher(options, context);
  plan.nproc_per_node = options.nproc_per_node;
  const auto hosts = read_hosts(options);
  const bool have_hosts = !hosts.empty();
  if (options.nnodes > 0) {
    plan.nnodes = options.nnodes;
  } else if (have_hosts) {
    plan.nnodes = static_cast<int>(hosts.size());
  } else if (plan.launcher == "srun") {
    plan.nnodes = std::max(1, slurm_node_count(context));
  }
  if (have_hosts && plan.nnodes > static_cast<int>(hosts.size())) {
    std::vector<std::string> names;
    for (const auto& h : hosts) names.push_back(h.name);
    fail("--nnodes ", plan.nnodes, " but ", options.hostfile.empty() ? "--hosts" : "--hostfile " + options.hostfile,
         " lists ", hosts.size(), " host", hosts.size() == 1 ? "" : "s", " (", join(names, ", "), ")");
  }
  if (static_cast<long long>(plan.nproc_per_node) * plan.nnodes > 1'000'000) {
    fail("--nproc-per-node ", plan.nproc_per_node, " x --nnodes ", plan.nnodes, " is more than a million processes");
  }
  plan.world_size = plan.nproc_per_node * plan.nnodes;
  const auto user_env = parse_env_options(options.env, context);

  // --- one process, no launcher: the command itself (mlaforge then runs its single-process path) ---
  if (plan.launcher == "none") {
    if (plan.world_size > 1) {
      fail("--launcher none runs the command as one process, but --nproc-per-node ", plan.nproc_per_node,
           " x --nnodes ", plan.nnodes, " asks for ", plan.world_size, ": use --launcher mpirun or srun");
    }
    if (have_hosts) fail("--launcher none runs on this machine only: --hostfile / --hosts need mpirun or srun");
    if (!options.launcher_args.empty()) {
      fail("launcher arguments (", join(options.launcher_args, " "), ") given, but the job runs without a launcher ",
           "(one process): drop them or use --launcher mpirun");
    }
    for (const auto& e : user_env) {
      if (e.value) plan.env.emplace_back(e.name, *e.value);
    }
    plan.argv = options.command;
    plan.threads_per_rank = context.cpu_count;
    return plan;
  }

  // --- threads per rank ---------------------------------------------------------------------------
  // mlaforge sizes its pools from MLAFORGE_NUM_THREADS (else every CPU it may use: with no binding, all
  // of them in every rank), OpenMP from OMP_NUM_THREADS: both get the per-rank share unless the user set
  // one of them, which then decides both.
  const bool oversubscribed = plan.nproc_per_node > context.cpu_count;
  if (options.bind == "core" && oversubscribed) {
    fail("--bind core with --nproc-per-node ", plan.nproc_per_node, " on ", context.cpu_count,
         " CPUs would put several ranks on one core: use --bind none (or socket)");
  }
  auto user_value = [&](const std::string& name) -> std::optional<std::string> {
    for (auto it = user_env.rbegin(); it != user_env.rend(); ++it) {
      if (it->name == name) return it->value ? it->value : lookup(context.environ, name);
    }
    return lookup(context.environ, name);
  };
  const auto user_omp = user_value("OMP_NUM_THREADS");
  const auto user_mla = user_value("MLAFORGE_NUM_THREADS");
  int threads = options.bind == "core" ? 1 : std::max(1, context.cpu_count / plan.nproc_per_node);
  if (user_omp && !user_mla) {
    if (auto n = parse_positive(*user_omp)) threads = *n;
    plan.env.emplace_back("MLAFORGE_NUM_THREADS", std::to_string(threads));
  } else if (user_mla && !user_omp) {
    if (auto n = parse_positive(*user_mla)) threads = *n;
    plan.env.emplace_back("OMP_NUM_THREADS", std::to_string(threads));
  } else if (!user_omp && !user_mla) {
    plan.env.emplace_back("OMP_NUM_THREADS", std::to_string(threads));
    plan.env.emplace_back("MLAFORGE_NUM_THREADS", std::to_string(threads));
  } else if (auto n = parse_positive(*user_mla)) {
    threads = *n;
  }
  plan.threads_per_rank = threads;
  for (const auto& e : user_env) {
    if (e.value) plan.env.emplace_back(e.name, *e.value);
  }

  // --- forwarded variables ---------------------------------------------------------------------------
  std::set<std::string> seen;
  auto forward = [&](const std::string& name) {
    if (seen.insert(name).second) plan.forwarded.push_back(name);
  };
  for (const auto& [name, value] : plan.env) forward(name);
  for (const auto& e : user_env) forward(e.name);
  for (const auto& [name, value] : context.environ) {  // std::map: sorted, so the command is stable
    if (name.rfind("MLAFORGE_", 0) == 0 || name.rfind("NCCL_", 0) == 0 || name == "CUDA_VISIBLE_DEVICES" ||
        name == "OMP_NUM_THREADS") {
      forward(name);
    }
  }

  refuse_process_count_args(options, plan.launcher);
  const std::string np = std::to_string(plan.world_size), ppn = std::to_string(plan.nproc_per_node);
  if (oversubscribed) {
    plan.notes.push_back(ppn + " ranks per node on " + std::to_string(context.cpu_count) +
                         " CPUs: oversubscribed, ranks are not bound and yield when idle");
  }

  // --- srun ------------------------------------------------------------------------------------------
  if (plan.launcher == "srun") {
    if (!context.have_srun) fail("--launcher srun: srun not found in PATH");
    const int allocated = slurm_node_count(context);
    if (allocated > 0 && plan.nnodes > allocated) {
      fail("--nnodes ", plan.nnodes, " but the Slurm allocation (SLURM_JOB_NUM_NODES) has ", allocated, " node",
           allocated == 1 ? "" : "s");
    }
    plan.argv = {"srun", "--nodes=" + std::to_string(plan.nnodes), "--ntasks=" + np, "--ntasks-per-node=" + ppn,
                 // Without it srun lets the other ranks run (and wait in a collective) after one fails.
                 "--kill-on-bad-exit=1",
                 "--cpu-bind=" + std::string(options.bind == "core" ? "cores" : options.bind == "socket" ? "sockets" : "none"),
                 "--export=ALL" + (plan.forwarded.empty() ? std::string() : "," + join(plan.forwarded, ","))};
    if (have_hosts) {
      std::vector<std::string> names;
      for (int i = 0; i < plan.nnodes; ++i) names.push_back(hosts[i].name);
      plan.argv.push_back("--nodelist=" + join(names, ","));
    }
    plan.local_rank_variable = "SLURM_LOCALID";
    plan.argv.insert(plan.argv.end(), options.launcher_args.begin(), options.launcher_args.end());
    plan.argv.insert(plan.argv.end(), options.command.begin(), options.command.end());
    return plan;
  }

  // --- mpirun ----------------------------------------------------------------------------------------
  if (!context.have_mpirun) {
    fail("mpirun not found in PATH: install an MPI (Debian: apt-get install openmpi-bin), run inside a Slurm ",
         "allocation (srun), or use --nproc-per-node 1 for one process without MPI");
  }
  plan.flavor = context.mpi_flavor;
  if (plan.nnodes > 1 && !have_hosts && !in_resource_manager(context) &&
      !has_flag(options.launcher_args, {"--hostfile", "-hostfile", "--machinefile", "-machinefile", "-f", "--host",
                                        "-host", "-H", "-hosts"})) {
    fail("--nnodes ", plan.nnodes, " needs the nodes: give --hostfile FILE or --hosts node1,node2 (or run inside a ",
         "Slurm / PBS / LSF allocation)");
  }
  // Our own hostfile unless the user's fits Open MPI as it is: exactly --nnodes hosts, each with room
  // for --nproc-per-node ranks (Open MPI starts a daemon on every listed host, and refuses too few
  // slots). MPICH always gets ours: Hydra reads `host:N` lines, not Open MPI's `host slots=N`.
  std::string hostfile_path;
  if (have_hosts) {
    bool fits = plan.flavor == MpiFlavor::open_mpi && !options.hostfile.empty() &&
                static_cast<int>(hosts.size()) == plan.nnodes;
    for (const auto& h : hosts) fits = fits && (h.slots == 0 || h.slots >= plan.nproc_per_node);
    if (fits) {
      hostfile_path = options.hostfile;
    } else {
      std::string text;
      for (int i = 0; i < plan.nnodes; ++i) {
        text += plan.flavor == MpiFlavor::mpich ? hosts[i].name + ":" + ppn + "\n"
                                                : hosts[i].name + " slots=" + ppn + "\n";
      }
      plan.hostfile_text = text;
      if (!options.hostfile.empty()) {
        plan.notes.push_back("running on the first " + std::to_string(plan.nnodes) + " host(s) of --hostfile " +
                             options.hostfile + " with slots=" + ppn + " each (a temporary hostfile)");
      }
    }
  }
  auto add_hostfile = [&](const std::string& flag) {
    if (!have_hosts) return;
    plan.argv.push_back(flag);
    if (plan.hostfile_text) plan.hostfile_arg = static_cast<int>(plan.argv.size());
    plan.argv.push_back(plan.hostfile_text ? "<hostfile>" : hostfile_path);
  };

  if (plan.flavor == MpiFlavor::open_mpi) {
    plan.argv = {"mpirun", "-np", np};
    if (!has_flag(options.launcher_args, {"--map-by", "-map-by", "--npernode", "-npernode", "--ppr", "-ppr"})) {
      plan.argv.insert(plan.argv.end(), {"--map-by", "ppr:" + ppn + ":node"});
    }
    if (!has_flag(options.launcher_args, {"--bind-to", "-bind-to"})) {
      plan.argv.insert(plan.argv.end(), {"--bind-to", options.bind});
    }
    // One node: the user asked for this many ranks here, whatever Open MPI counts as cores.
    if (!have_hosts || oversubscribed) plan.argv.push_back("--oversubscribe");
    if (context.is_root) plan.argv.push_back("--allow-run-as-root");
    add_hostfile("--hostfile");
    auto mca = [&](const std::string& key, const std::string& value) {
      if (!user_set_mca(options, context, key)) plan.argv.insert(plan.argv.end(), {"--mca", key, value});
    };
    if (plan.nnodes == 1) {
      mca("btl", "self,vader");                        // shared memory only: one node
      mca("btl_vader_single_copy_mechanism", "none");  // no CMA (ptrace is often denied in containers)
      // Else mpirun refuses to start without ssh/rsh, even for local ranks; a named host may need one.
      if (!have_hosts && !context.have_rsh) mca("plm_rsh_agent", "false");
    }
    if (oversubscribed) mca("mpi_yield_when_idle", "1");
    for (const auto& name : plan.forwarded) plan.argv.insert(plan.argv.end(), {"-x", name});
    plan.local_rank_variable = "OMPI_COMM_WORLD_LOCAL_RANK";
  } else if (plan.flavor == MpiFlavor::mpich) {
    // Hydra passes mlarun's whole environment to every rank by default (no -genv needed).
    plan.argv = {"mpirun", "-n", np, "-ppn", ppn};
    add_hostfile("-f");
    if (options.bind != "none") plan.argv.insert(plan.argv.end(), {"-bind-to", options.bind});
    plan.local_rank_variable = "MPI_LOCALRANKID";
  } else {
    if (plan.nnodes > 1 || have_hosts || options.bind != "none") {
      fail("mpirun is not Open MPI or MPICH (`mpirun --version`: '", context.mpirun_version, "'): mlarun cannot ",
           "translate --nnodes / --hostfile / --hosts / --bind for it; pass its own options with --mpirun-arg=...");
    }
    plan.argv = {"mpirun", "-n", np};
    plan.notes.push_back("mpirun is not Open MPI or MPICH ('" + context.mpirun_version +
                         "'): only -n is set; variables are not forwarded explicitly");
  }
  plan.argv.insert(plan.argv.end(), options.launcher_args.begin(), options.launcher_args.end());
  plan.argv.insert(plan.argv.end(), options.command.begin(), options.command.end());
  return plan;
}

std::string shell_quote(std::string_view word) {
  if (word.empty()) return "''";
  const bool safe = std::all_of(word.begin(), word.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           std::string_view("_@%+=:,./-").find(c) != std::string_view::npos;
  });
  if (safe) return std::string(word);
  std::string out = "'";
  for (char c : word) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string format_command(const LaunchPlan& plan) {
  std::string line;
  for (const auto& [name, value] : plan.env) {
    line += name + "=" + shell_quote(value) + " ";
  }
  for (size_t i = 0; i < plan.argv.size(); ++i) {
    if (i) line += ' ';
    // A program word with '=' would read as an assignment after NAME=VALUE words.
    std::string word = shell_quote(plan.argv[i]);
    if (i == 0 && word.front() != '\'' && word.find('=') != std::string::npos) word = "'" + word + "'";
    line += word;
  }
  return line;
}

}  // namespace mlaforge::launch
