// mlarun: a torchrun-like launcher over mpirun / srun.
//   mlarun --nproc-per-node 8 [--nnodes 2 --hostfile hosts] [mpirun options] -- mlaforge train RECIPE
// It builds the launcher command (launch/launch_plan.h), prints it (--dry-run) or runs it: the job in its
// own process group, SIGINT/SIGTERM/SIGHUP forwarded to that group, its output passed through byte for
// byte while launch/failure_report.h watches for the first failing rank, an optional wall-clock limit.
// The exit status is the launcher's (mpirun and srun --kill-on-bad-exit return a failed rank's status).
#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/strings.h"
#include "launch/failure_report.h"
#include "launch/launch_plan.h"

extern char** environ;

namespace mlaforge::launch {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

const char* kFooter = R"(Examples:
  one node, 8 GPUs (rank r uses GPU r of the node; the recipe says train.device: cuda):
    mlarun --nproc-per-node 8 -- mlaforge train recipes/r1.yaml parallel.tp=2
  two nodes from a hostfile (one host per line, `node1` or `node1 slots=8`; mlarun sets the slots):
    mlarun --nproc-per-node 8 --nnodes 2 --hostfile hosts -- mlaforge train recipes/r1.yaml
    mlarun --nproc-per-node 8 --hosts node1,node2 -- mlaforge train recipes/r1.yaml
  inside a Slurm allocation (salloc -N 2 --gpus-per-node 8, or an sbatch script): srun is used,
    all allocated nodes unless --nnodes says fewer:
    mlarun --nproc-per-node 8 -- mlaforge train recipes/r1.yaml
  print the command instead of running it:
    mlarun --dry-run --nproc-per-node 2 -- mlaforge train recipes/demo-cpu.yaml
  one process, no MPI at all (also what --nproc-per-node 1 alone does):
    mlarun -- mlaforge train recipes/demo-cpu.yaml
  mpirun options: unknown options before `--` go to mpirun (or srun) as they are, e.g.
    mlarun --nproc-per-node 4 --report-bindings --mca btl_tcp_if_include eth0 -- mlaforge train r.yaml
  or one by one with --mpirun-arg=--report-bindings (note the '=' for values starting with '-').

GPUs: mlaforge binds each rank to GPU `local rank`, read from OMPI_COMM_WORLD_LOCAL_RANK (Open MPI),
MPI_LOCALRANKID (MPICH) or SLURM_LOCALID (srun); mlarun never sets CUDA_VISIBLE_DEVICES (it forwards
it unchanged when set, so --nproc-per-node must not exceed the GPUs it leaves visible).
Threads: each rank gets OMP_NUM_THREADS = MLAFORGE_NUM_THREADS = CPUs / nproc-per-node (at least 1) unless
one of them is set. Forwarded to every rank: those two, MLAFORGE_*, NCCL_*, CUDA_VISIBLE_DEVICES and --env.
Exit status: the job's (the first failed rank's); after a failure one line names the rank.)";

std::vector<std::string> environment_names_values() {
  std::vector<std::string> out;
  for (char** e = environ; e && *e; ++e) out.emplace_back(*e);
  return out;
}

std::optional<std::string> find_in_path(const std::string& name, const std::map<std::string, std::string>& env) {
  auto it = env.find("PATH");
  const std::string path = it == env.end() ? "/usr/local/bin:/usr/bin:/bin" : it->second;
  size_t start = 0;
  while (start <= path.size()) {
    const size_t colon = path.find(':', start);
    std::string dir = path.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    if (dir.empty()) dir = ".";
    const std::string candidate = dir + "/" + name;
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return std::nullopt;
}

int cpu_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

// `mpirun --version`, stdout and stderr (Open MPI prints to stdout, some MPICH builds to stderr).
std::string mpirun_version() {
  std::string out;
  if (FILE* pipe = ::popen("mpirun --version 2>&1 </dev/null", "r")) {
    char buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0 && out.size() < 65536) out.append(buffer, n);
    ::pclose(pipe);
  }
  return out;
}

LaunchContext detect_context(const LaunchOptions& options) {
  LaunchContext context;
  for (const auto& entry : environment_names_values()) {
    const size_t eq = entry.find('=');
    if (eq != std::string::npos) context.environ.emplace(entry.substr(0, eq), entry.substr(eq + 1));
  }
  context.have_mpirun = find_in_path("mpirun", context.environ).has_value();
  context.have_srun = find_in_path("srun", context.environ).has_value();
  context.have_rsh = find_in_path("ssh", context.environ) || find_in_path("rsh", context.environ);
  context.cpu_count = cpu_count();
  context.is_root = ::geteuid() == 0;
  if (context.have_mpirun && choose_launcher(options, context) == "mpirun") {
    const std::string version = mpirun_version();
    context.mpi_flavor = parse_mpi_flavor(version);
    context.mpirun_version = version.substr(0, version.find('\n'));
  }
  return context;
}

// The program to run, as every rank will find it: a bare name from PATH, else next to mlarun itself
// (build/bin/mlaforge beside build/bin/mlarun); a relative path made absolute (ranks may start elsewhere).
std::string resolve_program(const std::string& program, const std::map<std::string, std::string>& env) {
  std::error_code ec;
  if (program.find('/') != std::string::npos) {
    if (!fs::exists(program, ec)) fail("program ", program, ": no such file");
    return fs::path(program).is_absolute() ? program : fs::absolute(program, ec).lexically_normal().string();
  }
  if (find_in_path(program, env)) return program;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path beside = self.parent_path() / program;
    if (::access(beside.c_str(), X_OK) == 0) return beside.string();
  }
  fail("program '", program, "' not found in PATH or next to mlarun (", self.parent_path().string(), ")");
}

// Writes the hostfile mlarun generated; returns its path.
std::string write_hostfile(const std::string& text) {
  const char* tmp = std::getenv("TMPDIR");
  std::string path = std::string(tmp && *tmp ? tmp : "/tmp") + "/mlarun-hosts-XXXXXX";
  const int fd = ::mkstemp(path.data());
  if (fd < 0) fail("cannot create a temporary hostfile ", path, ": ", std::strerror(errno));
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  if (!ok) fail("cannot write the temporary hostfile ", path);
  return path;
}

// --- running ---------------------------------------------------------------------------------------

int g_signal_pipe[2] = {-1, -1};

void on_signal(int sig) {
  const int saved = errno;
  const unsigned char byte = static_cast<unsigned char>(sig);
  [[maybe_unused]] auto n = ::write(g_signal_pipe[1], &byte, 1);
  errno = saved;
}

void write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // stdout closed (e.g. piped into head): keep running, drop the output
    data += n;
    size -= static_cast<size_t>(n);
  }
}

struct JobResult {
  int status = 0;
  bool timed_out = false;
  int forwarded_signal = 0;
};

// Runs plan.argv in its own process group with plan.env applied. With `watch`, its stdout and stderr go
// through pipes to ours and the scanner; otherwise they are inherited (the direct single process keeps
// its terminal, so its live progress line stays on).
JobResult run_job(const LaunchPlan& plan, double timeout_s, bool watch, FailureScanner& scanner) {
  if (::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) fail("pipe: ", std::strerror(errno));
  int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1};
  if (watch && (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0)) {
    fail("pipe: ", std::strerror(errno));
  }
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGCHLD}) ::sigaction(sig, &action, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) fail("fork: ", std::strerror(errno));
  if (pid == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // mlarun killed: do not leave the job running
    if (::getppid() != parent) ::_exit(1);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGCHLD, SIGPIPE}) ::signal(sig, SIG_DFL);
    // A process group in the background that reads the terminal is stopped (SIGTTIN); mpirun reads stdin
    // to forward it to rank 0. Training reads no stdin, so a terminal is replaced by /dev/null.
    if (::isatty(STDIN_FILENO)) {
      const int null_fd = ::open("/dev/null", O_RDONLY);
      if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    }
    if (watch) {
      ::dup2(out_pipe[1], STDOUT_FILENO);
      ::dup2(err_pipe[1], STDERR_FILENO);
    }
    for (const auto& [name, value] : plan.env) ::setenv(name.c_str(), value.c_str(), 1);
    std::vector<char*> args;
    for (const auto& a : plan.argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    dprintf(STDERR_FILENO, "mlarun: cannot run %s: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also in the parent: no race with the first kill(-pid, ...)
  if (watch) {
    ::close(out_pipe[1]);
    ::close(err_pipe[1]);
  }

  JobResult result;
  int open_fds[2] = {watch ? out_pipe[0] : -1, watch ? err_pipe[0] : -1};
  bool exited = false;
  int signals_forwarded = 0;
  const auto start = Clock::now();
  std::optional<Clock::time_point> deadline, kill_deadline, drain_deadline;
  if (timeout_s > 0) deadline = start + std::chrono::milliseconds(static_cast<long long>(timeout_s * 1000));
  auto ms_until = [](Clock::time_point t) {
    return std::max<long long>(0, std::chrono::duration_cast<std::chrono::milliseconds>(t - Clock::now()).count() + 1);
  };

  while (true) {
    if (!exited) {
      int status = 0;
      const pid_t done = ::waitpid(pid, &status, WNOHANG);
      if (done == pid) {
        exited = true;
        result.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        // A rank that outlived mpirun may hold the pipes open: read what remains for a moment only.
        drain_deadline = Clock::now() + std::chrono::seconds(2);
      }
    }
    if (exited && ((open_fds[0] < 0 && open_fds[1] < 0) || Clock::now() >= *drain_deadline)) break;

    long long wait_ms = -1;
    for (const auto& t : {deadline, kill_deadline, drain_deadline}) {
      if (t) wait_ms = wait_ms < 0 ? ms_until(*t) : std::min(wait_ms, ms_until(*t));
    }
    if (!exited) wait_ms = wait_ms < 0 ? 1000 : std::min<long long>(wait_ms, 1000);  // SIGCHLD could race
    pollfd fds[3] = {{g_signal_pipe[0], POLLIN, 0}, {open_fds[0], POLLIN, 0}, {open_fds[1], POLLIN, 0}};
    const int ready = ::poll(fds, 3, static_cast<int>(wait_ms));
    if (ready < 0 && errno != EINTR) fail("poll: ", std::strerror(errno));

    if (ready > 0 && (fds[0].revents & POLLIN)) {
      unsigned char sigs[64];
      const ssize_t n = ::read(g_signal_pipe[0], sigs, sizeof(sigs));
      for (ssize_t i = 0; i < n; ++i) {
        const int sig = sigs[i];
        if (sig == SIGCHLD || exited) continue;
        ++signals_forwarded;
        result.forwarded_signal = sig;
        // Once to ask (mpirun then stops its ranks), a third time to insist.
        ::kill(-pid, signals_forwarded >= 3 ? SIGKILL : sig);
        if (signals_forwarded == 1) {
          std::cerr << "mlarun: " << strsignal(sig) << ": forwarded to the job (a third signal kills it)" << std::endl;
        }
      }
    }
    for (int s = 0; s < 2; ++s) {
      if (ready <= 0 || open_fds[s] < 0 || !(fds[s + 1].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buffer[65536];
      const ssize_t n = ::read(open_fds[s], buffer, sizeof(buffer));
      if (n > 0) {
        write_all(s == 0 ? STDOUT_FILENO : STDERR_FILENO, buffer, static_cast<size_t>(n));
        scanner.feed(s, std::string_view(buffer, static_cast<size_t>(n)));
      } else if (n == 0 || errno != EINTR) {
        ::close(open_fds[s]);
        open_fds[s] = -1;
      }
    }
    if (!exited && deadline && Clock::now() >= *deadline && !kill_deadline) {
      std::cerr << "mlarun: timeout: the job ran longer than --timeout-s " << timeout_s
                << " s; stopping it (SIGTERM, SIGKILL after 10 s)" << std::endl;
      result.timed_out = true;
      ::kill(-pid, SIGTERM);
      kill_deadline = Clock::now() + std::chrono::seconds(10);
      deadline.reset();
    }
    if (!exited && kill_deadline && Clock::now() >= *kill_deadline) {
      ::kill(-pid, SIGKILL);
      kill_deadline.reset();
    }
  }
  for (int fd : open_fds) {
    if (fd >= 0) ::close(fd);
  }
  scanner.finish();
  return result;
}

// Unknown options go to the launcher, so a misspelt mlarun option would reach mpirun as an option it
// does not know either; catch the near misses here with a suggestion.
void check_near_misses(const std::vector<std::string>& extras, const std::vector<std::string>& known) {
  for (const auto& extra : extras) {
    if (extra.rfind("--", 0) != 0) continue;
    const std::string name = extra.substr(2, extra.find('=') - 2);
    if (name.size() < 5 || name == "host" || name == "timeout") continue;  // real mpirun options
    for (const auto& option : known) {
      if (option != name && edit_distance(name, option) <= 2) {
        fail("unknown option --", name, ": did you mean --", option, "? (options mlarun does not know go to ",
             "mpirun; pass this one with --mpirun-arg=--", name, " if it is meant for mpirun)");
      }
    }
  }
}

int run(int argc, char** argv) {
  // Everything after the first `--` is the command, untouched by the option parser.
  std::vector<std::string> before;
  LaunchOptions options;
  bool after_separator = false;
  for (int i = 1; i < argc; ++i) {
    if (!after_separator && std::string_view(argv[i]) == "--") {
      after_separator = true;
    } else if (after_separator) {
      options.command.emplace_back(argv[i]);
    } else {
      before.emplace_back(argv[i]);
    }
  }

  CLI::App app{"mlarun: run a command as N processes per node under mpirun or srun (like torchrun), "
               "or as one process without MPI.\n"
               "  mlarun [options] [mpirun options] -- PROGRAM [ARGS...]",
               "mlarun"};
  app.allow_extras();
  app.footer(kFooter);
  app.get_formatter()->column_width(34);
  bool dry_run = false;
  double timeout_s = 0;
  app.add_option("--nproc-per-node", options.nproc_per_node,
                 "processes (ranks) per node, usually one per GPU; e.g. --nproc-per-node 8")
      ->capture_default_str();
  app.add_option("--nnodes", options.nnodes,
                 "nodes; default: the hosts given, the Slurm allocation's nodes under srun, else 1; e.g. --nnodes 2");
  app.add_option("--hostfile", options.hostfile,
                 "hosts to run on, one per line (`node1`, `node1 slots=8` or MPICH `node1:8`); the first --nnodes "
                 "are used with --nproc-per-node slots each; e.g. --hostfile hosts.txt");
  app.add_option("--hosts", options.hosts, "hosts as a list instead of a file; e.g. --hosts node1,node2")
      ->delimiter(',');
  app.add_option("--launcher", options.launcher,
                 "auto: one process in all -> the command itself; inside a Slurm allocation (SLURM_JOB_ID "
                 "and srun found) -> srun; else mpirun. Or mpirun | srun | none; e.g. --launcher mpirun")
      ->capture_default_str();
  app.add_option("--bind", options.bind,
                 "CPU binding of each rank: none (ranks and their threads float over every CPU), core (one "
                 "core each, 1 thread; refused when ranks outnumber CPUs), socket; e.g. --bind socket")
      ->capture_default_str();
  app.add_option("--env", options.env,
                 "environment variable for every rank, NAME=VALUE or NAME (its current value); repeatable "
                 "(Open MPI -x, srun --export); e.g. --env NCCL_DEBUG=INFO --env HF_HOME")
      ->allow_extra_args(false);
  app.add_option("--mpirun-arg", options.launcher_args,
                 "one argument for mpirun (or srun), after mlarun's own; repeatable; e.g. "
                 "--mpirun-arg=--report-bindings")
      ->allow_extra_args(false);
  app.add_flag("--dry-run", dry_run, "print the command (one shell-quoted line, environment first) and exit 0");
  app.add_option("--timeout-s", timeout_s,
                 "stop the job (SIGTERM, then SIGKILL after 10 s) if it runs longer, exit status 124; "
                 "e.g. --timeout-s 3600")
      ->check([](const std::string& text) -> std::string {
        try {
          size_t used = 0;
          const double value = std::stod(text, &used);
          if (used == text.size() && value >= 0) return {};
        } catch (const std::exception&) {
        }
        return "expected a number of seconds >= 0 (0: no limit), got '" + text + "'";
      });

  try {
    std::vector<std::string> reversed(before.rbegin(), before.rend());
    app.parse(reversed);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "mlarun: error: " << e.what() << " (mlarun --help lists the options)" << std::endl;
    return 1;
  }

  try {
    const auto extras = app.remaining();
    check_near_misses(extras, {"nproc-per-node", "nnodes", "hostfile", "hosts", "launcher", "bind", "env",
                               "mpirun-arg", "dry-run", "timeout-s"});
    options.launcher_args.insert(options.launcher_args.begin(), extras.begin(), extras.end());
    if (options.command.empty()) {
      fail("no command: put it after `--`, e.g. mlarun --nproc-per-node 2 -- mlaforge train recipe.yaml",
           extras.empty() ? "" : " (arguments before `--` that mlarun does not know go to mpirun)");
    }
    LaunchContext context = detect_context(options);
    options.command[0] = resolve_program(options.command[0], context.environ);
    LaunchPlan plan = build_launch_plan(options, context);
    for (const auto& note : plan.notes) std::cerr << "mlarun: note: " << note << std::endl;
    std::string hostfile;
    if (plan.hostfile_text) {
      hostfile = write_hostfile(*plan.hostfile_text);
      plan.argv[static_cast<size_t>(plan.hostfile_arg)] = hostfile;
    }
    if (dry_run) {
      std::cout << format_command(plan) << std::endl;
      if (!hostfile.empty()) std::cerr << "mlarun: note: wrote " << hostfile << " for this command (kept)" << std::endl;
      return 0;
    }
    std::cerr << "mlarun: " << format_command(plan) << std::endl;
    FailureScanner scanner;
    const JobResult result = run_job(plan, timeout_s, plan.launcher != "none", scanner);
    if (!hostfile.empty()) ::unlink(hostfile.c_str());
    if (result.timed_out) {
      std::cerr << "mlarun: job stopped after the --timeout-s " << timeout_s << " s limit (exit status 124)" << std::endl;
      return 124;
    }
    if (result.forwarded_signal) {
      std::cerr << "mlarun: job stopped by " << strsignal(result.forwarded_signal) << " (forwarded by mlarun), exit status "
                << result.status << std::endl;
    } else if (result.status != 0) {
      std::cerr << "mlarun: " << failure_summary(result.status, plan.launcher, scanner) << std::endl;
    }
    return result.status;
  } catch (const Error& e) {
    std::cerr << "mlarun: error: " << e.what() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "mlarun: error: " << e.what() << std::endl;
    return 1;
  }
}

}  // namespace
}  // namespace mlaforge::launch

int main(int argc, char** argv) { return mlaforge::launch::run(argc, argv); }
