// mlarun's command building (launch/launch_plan.h) and failure parsing (launch/failure_report.h): the
// exact launcher argv and environment for Open MPI, MPICH, srun and a single process, and clear errors
// on bad input. The machine is described by hand (LaunchContext), so nothing here needs MPI.
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "launch/failure_report.h"
#include "launch/launch_plan.h"
#include "tests/support/test_support.h"

namespace mlaforge::launch {
namespace {

using Args = std::vector<std::string>;
using Env = std::vector<std::pair<std::string, std::string>>;

LaunchContext open_mpi_machine(int cpus = 16) {
  LaunchContext c;
  c.environ = {{"HOME", "/home/me"}, {"PATH", "/usr/bin"}};
  c.have_mpirun = true;
  c.have_rsh = true;
  c.mpi_flavor = MpiFlavor::open_mpi;
  c.mpirun_version = "mpirun (Open MPI) 4.1.4";
  c.cpu_count = cpus;
  return c;
}

LaunchOptions job(int nproc, Args command = {"mlaforge", "train", "r.yaml"}) {
  LaunchOptions o;
  o.nproc_per_node = nproc;
  o.command = std::move(command);
  return o;
}

std::string write_file(const std::string& name, const std::string& text) {
  static const std::string dir = testing::make_temp_dir("launch_plan");
  const std::string path = dir + "/" + name;
  std::ofstream(path) << text;
  return path;
}

// The plan must fail with an mlaforge::Error whose message contains `part`.
void expect_error(const LaunchOptions& options, const LaunchContext& context, const std::string& part) {
  try {
    build_launch_plan(options, context);
    ADD_FAILURE() << "no error; expected one containing: " << part;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << "message: " << e.what() << "\nexpected: " << part;
  }
}

TEST(LaunchPlan, OpenMpiSingleNode) {
  auto plan = build_launch_plan(job(8), open_mpi_machine(16));
  EXPECT_EQ(plan.launcher, "mpirun");
  EXPECT_EQ(plan.world_size, 8);
  EXPECT_EQ(plan.threads_per_rank, 2);
  EXPECT_EQ(plan.local_rank_variable, "OMPI_COMM_WORLD_LOCAL_RANK");
  EXPECT_EQ(plan.env, (Env{{"OMP_NUM_THREADS", "2"}, {"MLAFORGE_NUM_THREADS", "2"}}));
  EXPECT_EQ(plan.argv, (Args{"mpirun", "-np", "8", "--map-by", "ppr:8:node", "--bind-to", "none", "--oversubscribe",
                             "--mca", "btl", "self,vader", "--mca", "btl_vader_single_copy_mechanism", "none", "-x",
                             "OMP_NUM_THREADS", "-x", "MLAFORGE_NUM_THREADS", "mlaforge", "train", "r.yaml"}));
  EXPECT_FALSE(plan.hostfile_text);
  EXPECT_TRUE(plan.notes.empty());
  EXPECT_EQ(format_command(plan),
            "OMP_NUM_THREADS=2 MLAFORGE_NUM_THREADS=2 mpirun -np 8 --map-by ppr:8:node --bind-to none --oversubscribe "
            "--mca btl self,vader --mca btl_vader_single_copy_mechanism none -x OMP_NUM_THREADS -x MLAFORGE_NUM_THREADS "
            "mlaforge train r.yaml");
}

TEST(LaunchPlan, OpenMpiContainerSettings) {
  // Root, no ssh/rsh, more ranks than CPUs: run_mpi.sh's settings.
  auto context = open_mpi_machine(2);
  context.is_root = true;
  context.have_rsh = false;
  auto plan = build_launch_plan(job(4), context);
  EXPECT_EQ(plan.threads_per_rank, 1);
  EXPECT_EQ(plan.argv, (Args{"mpirun", "-np", "4", "--map-by", "ppr:4:node", "--bind-to", "none", "--oversubscribe",
                             "--allow-run-as-root", "--mca", "btl", "self,vader", "--mca",
                             "btl_vader_single_copy_mechanism", "none", "--mca", "plm_rsh_agent", "false", "--mca",
                             "mpi_yield_when_idle", "1", "-x", "OMP_NUM_THREADS", "-x", "MLAFORGE_NUM_THREADS",
                             "mlaforge", "train", "r.yaml"}));
  ASSERT_EQ(plan.notes.size(), 1u);
  EXPECT_EQ(plan.notes[0], "4 ranks per node on 2 CPUs: oversubscribed, ranks are not bound and yield when idle");
}

TEST(LaunchPlan, UserMcaSettingsWin) {
  // An OMPI_MCA_btl in the environment or a --mca btl among the launcher arguments replaces ours.
  auto context = open_mpi_machine();
  context.environ["OMPI_MCA_btl"] = "self,tcp";
  auto options = job(2);
  options.launcher_args = {"--mca", "btl_vader_single_copy_mechanism", "cma", "--map-by", "socket"};
  auto plan = build_launch_plan(options, context);
  EXPECT_EQ(plan.argv, (Args{"mpirun", "-np", "2", "--bind-to", "none", "--oversubscribe", "-x", "OMP_NUM_THREADS",
                             "-x", "MLAFORGE_NUM_THREADS", "--mca", "btl_vader_single_copy_mechanism", "cma",
                             "--map-by", "socket", "mlaforge", "train", "r.yaml"}));
}

TEST(LaunchPlan, HostsBecomeAHostfile) {
  auto options = job(8);
  options.hosts = {"node1", "node2"};
  auto plan = build_launch_plan(options, open_mpi_machine(64));
  EXPECT_EQ(plan.nnodes, 2);  // from the hosts
  EXPECT_EQ(plan.world_size, 16);
  EXPECT_EQ(plan.threads_per_rank, 8);
  ASSERT_TRUE(plan.hostfile_text);
  EXPECT_EQ(*plan.hostfile_text, "node1 slots=8\nnode2 slots=8\n");
  ASSERT_GE(plan.hostfile_arg, 1);
  EXPECT_EQ(plan.argv[static_cast<size_t>(plan.hostfile_arg) - 1], "--hostfile");
  EXPECT_EQ(plan.argv[static_cast<size_t>(plan.hostfile_arg)], "<hostfile>");
  // Several nodes: no shared-memory-only transport, no oversubscription (8 ranks on 64 CPUs).
  EXPECT_EQ(plan.argv, (Args{"mpirun", "-np", "16", "--map-by", "ppr:8:node", "--bind-to", "none", "--hostfile",
                             "<hostfile>", "-x", "OMP_NUM_THREADS", "-x", "MLAFORGE_NUM_THREADS", "mlaforge", "train",
                             "r.yaml"}));
  // One named host: shared memory is enough, but it may be remote, so the remote shell stays.
  options.hosts = {"gpu1"};
  auto context = open_mpi_machine(64);
  context.have_rsh = false;
  plan = build_launch_plan(options, context);
  EXPECT_EQ(plan.argv, (Args{"mpirun", "-np", "8", "--map-by", "ppr:8:node", "--bind-to", "none", "--hostfile",
                             "<hostfile>", "--mca", "btl", "self,vader", "--mca", "btl_vader_single_copy_mechanism",
                             "none", "-x", "OMP_NUM_THREADS", "-x", "MLAFORGE_NUM_THREADS", "mlaforge", "train",
                             "r.yaml"}));
}

TEST(LaunchPlan, UserHostfileUsedAsIsWhenItFits) {
  auto options = job(4);
  options.hostfile = write_file("fits", "# our nodes\nnode1 slots=4\nnode2 slots=8 max_slots=8\n\n");
  auto plan = build_launch_plan(options, open_mpi_machine());
  EXPECT_FALSE(plan.hostfile_text);
  EXPECT_EQ(plan.hostfile_arg, -1);
  EXPECT_EQ(plan.world_size, 8);
  EXPECT_NE(std::find(plan.argv.begin(), plan.argv.end(), options.hostfile), plan.argv.end());

  // Three hosts for --nnodes 2, or too few slots: mlarun writes its own from the first two.
  options.hostfile = write_file("three", "node1\nnode2 slots=2\nnode3\n");
  options.nnodes = 2;
  plan = build_launch_plan(options, open_mpi_machine());
  ASSERT_TRUE(plan.hostfile_text);
  EXPECT_EQ(*plan.hostfile_text, "node1 slots=4\nnode2 slots=4\n");
  ASSERT_EQ(plan.notes.size(), 1u);
  EXPECT_EQ(plan.notes[0], "running on the first 2 host(s) of --hostfile " + options.hostfile +
                              " with slots=4 each (a temporary hostfile)");
}

TEST(LaunchPlan, Mpich) {
  auto context = open_mpi_machine();
  context.mpi_flavor = MpiFlavor::mpich;
  auto options = job(2);
  options.hosts = {"a", "b"};
  options.bind = "socket";
  auto plan = build_launch_plan(options, context);
  EXPECT_EQ(plan.local_rank_variable, "MPI_LOCALRANKID");
  ASSERT_TRUE(plan.hostfile_text);
  EXPECT_EQ(*plan.hostfile_text, "a:2\nb:2\n");
  // Hydra forwards the whole environment: no per-variable flags.
  EXPECT_EQ(plan.argv, (Args{"mpirun", "-n", "4", "-ppn", "2", "-f", "<hostfile>", "-bind-to", "socket", "mlaforge",
                             "train", "r.yaml"}));
  EXPECT_EQ(plan.env, (Env{{"OMP_NUM_THREADS", "8"}, {"MLAFORGE_NUM_THREADS", "8"}}));
  // Even a fitting Open MPI style hostfile is rewritten in Hydra's host:N form.
  options.hosts.clear();
  options.hostfile = write_file("ompi_style", "a slots=2\nb slots=2\n");
  plan = build_launch_plan(options, context);
  ASSERT_TRUE(plan.hostfile_text);
  EXPECT_EQ(*plan.hostfile_text, "a:2\nb:2\n");
}

TEST(LaunchPlan, UnknownMpiOnlyGetsTheCount) {
  auto context = open_mpi_machine();
  context.mpi_flavor = MpiFlavor::unknown;
  context.mpirun_version = "some mpirun 1.0";
  auto plan = build_launch_plan(job(2), context);
  EXPECT_EQ(plan.argv, (Args{"mpirun", "-n", "2", "mlaforge", "train", "r.yaml"}));
  auto options = job(2);
  options.hosts = {"a", "b"};
  expect_error(options, context, "mpirun is not Open MPI or MPICH (`mpirun --version`: 'some mpirun 1.0')");
}

TEST(LaunchPlan, SlurmUsesSrun) {
  auto context = open_mpi_machine(32);
  context.have_srun = true;
  context.environ["SLURM_JOB_ID"] = "1234";
  context.environ["SLURM_JOB_NUM_NODES"] = "2";
  context.environ["NCCL_DEBUG"] = "WARN";
  auto options = job(8);
  options.env = {"HF_HOME=/data/hf"};
  EXPECT_EQ(choose_launcher(options, context), "srun");
  auto plan = build_launch_plan(options, context);
  EXPECT_EQ(plan.launcher, "srun");
  EXPECT_EQ(plan.nnodes, 2);  // the allocation's
  EXPECT_EQ(plan.world_size, 16);
  EXPECT_EQ(plan.local_rank_variable, "SLURM_LOCALID");
  EXPECT_EQ(plan.argv, (Args{"srun", "--nodes=2", "--ntasks=16", "--ntasks-per-node=8", "--kill-on-bad-exit=1",
                             "--cpu-bind=none", "--export=ALL,OMP_NUM_THREADS,MLAFORGE_NUM_THREADS,HF_HOME,NCCL_DEBUG",
                             "mlaforge", "train", "r.yaml"}));
  EXPECT_EQ(plan.env, (Env{{"OMP_NUM_THREADS", "4"}, {"MLAFORGE_NUM_THREADS", "4"}, {"HF_HOME", "/data/hf"}}));

  options.nnodes = 1;
  options.bind = "core";
  options.hosts = {"gpu7"};
  plan = build_launch_plan(options, context);
  EXPECT_EQ(plan.argv[1], "--nodes=1");
  EXPECT_EQ(plan.argv[5], "--cpu-bind=cores");
  EXPECT_EQ(plan.argv[7], "--nodelist=gpu7");
  EXPECT_EQ(plan.threads_per_rank, 1);

  options = job(8);
  options.nnodes = 3;
  expect_error(options, context, "--nnodes 3 but the Slurm allocation (SLURM_JOB_NUM_NODES) has 2 nodes");
  options.nnodes = 0;
  options.launcher_args = {"--ntasks=4"};
  expect_error(options, context, "set the process or node count");
  // Explicit mpirun inside the allocation still works (Open MPI reads the allocation).
  options = job(8);
  options.launcher = "mpirun";
  EXPECT_EQ(build_launch_plan(options, context).launcher, "mpirun");
}

TEST(LaunchPlan, SingleProcessRunsTheCommandItself) {
  auto context = open_mpi_machine();
  context.have_mpirun = false;  // not needed
  auto options = job(1, {"mlaforge", "train", "my recipe.yaml"});
  options.env = {"MLAFORGE_LOG=debug"};
  auto plan = build_launch_plan(options, context);
  EXPECT_EQ(plan.launcher, "none");
  EXPECT_EQ(plan.argv, (Args{"mlaforge", "train", "my recipe.yaml"}));
  EXPECT_EQ(plan.env, (Env{{"MLAFORGE_LOG", "debug"}}));
  EXPECT_EQ(format_command(plan), "MLAFORGE_LOG=debug mlaforge train 'my recipe.yaml'");
  // Also inside Slurm: one process needs no srun.
  context.have_srun = true;
  context.environ["SLURM_JOB_ID"] = "7";
  EXPECT_EQ(build_launch_plan(job(1), context).launcher, "none");
}

TEST(LaunchPlan, EnvironmentForwarding) {
  auto context = open_mpi_machine(16);
  context.environ["MLAFORGE_CACHE"] = "/cache";
  context.environ["NCCL_SOCKET_IFNAME"] = "eth0";
  context.environ["CUDA_VISIBLE_DEVICES"] = "0,1,2,3";
  context.environ["WANDB_KEY"] = "secret";
  auto options = job(4);
  options.env = {"HF_HOME", "GREETING=hello world"};
  context.environ["HF_HOME"] = "/hf";
  auto plan = build_launch_plan(options, context);
  EXPECT_EQ(plan.forwarded, (Args{"OMP_NUM_THREADS", "MLAFORGE_NUM_THREADS", "GREETING", "HF_HOME",
                                  "CUDA_VISIBLE_DEVICES", "MLAFORGE_CACHE", "NCCL_SOCKET_IFNAME"}));
  // CUDA_VISIBLE_DEVICES is forwarded, never set; a bare --env NAME keeps mlarun's value.
  EXPECT_EQ(plan.env, (Env{{"OMP_NUM_THREADS", "4"}, {"MLAFORGE_NUM_THREADS", "4"}, {"GREETING", "hello world"}}));
  const std::string line = format_command(plan);
  EXPECT_NE(line.find("GREETING='hello world' mpirun"), std::string::npos) << line;
  EXPECT_NE(line.find("-x GREETING -x HF_HOME -x CUDA_VISIBLE_DEVICES -x MLAFORGE_CACHE -x NCCL_SOCKET_IFNAME mlaforge"),
            std::string::npos)
      << line;
  EXPECT_EQ(line.find("WANDB_KEY"), std::string::npos);
}

TEST(LaunchPlan, ThreadCountsFollowTheUser) {
  auto context = open_mpi_machine(16);
  context.environ["OMP_NUM_THREADS"] = "3";
  auto plan = build_launch_plan(job(4), context);
  EXPECT_EQ(plan.threads_per_rank, 3);
  EXPECT_EQ(plan.env, (Env{{"MLAFORGE_NUM_THREADS", "3"}}));
  EXPECT_EQ(plan.forwarded, (Args{"MLAFORGE_NUM_THREADS", "OMP_NUM_THREADS"}));

  context = open_mpi_machine(16);
  auto options = job(4);
  options.env = {"MLAFORGE_NUM_THREADS=5"};
  plan = build_launch_plan(options, context);
  EXPECT_EQ(plan.threads_per_rank, 5);
  EXPECT_EQ(plan.env, (Env{{"OMP_NUM_THREADS", "5"}, {"MLAFORGE_NUM_THREADS", "5"}}));

  // 3 ranks on 2 CPUs: at least one thread each.
  EXPECT_EQ(build_launch_plan(job(3), open_mpi_machine(2)).threads_per_rank, 1);
  options = job(4);
  options.bind = "core";
  plan = build_launch_plan(options, open_mpi_machine(16));
  EXPECT_EQ(plan.threads_per_rank, 1);
  EXPECT_NE(format_command(plan).find("--bind-to core"), std::string::npos);
}

TEST(LaunchPlan, BadInput) {
  const auto context = open_mpi_machine(4);
  expect_error(job(0), context, "--nproc-per-node must be at least 1 (got 0)");
  auto options = job(2, {});
  expect_error(options, context, "no command to run");

  options = job(2);
  options.hostfile = "/nonexistent/hosts.txt";
  expect_error(options, context, "--hostfile /nonexistent/hosts.txt: cannot read it");
  options.hostfile = write_file("empty", "# nothing\n\n");
  expect_error(options, context, "lists no hosts");
  options.hostfile = write_file("two", "node1 slots=2\nnode2\n");
  options.nnodes = 3;
  expect_error(options, context, "--nnodes 3 but --hostfile " + options.hostfile + " lists 2 hosts (node1, node2)");
  options.hostfile.clear();
  options.hosts = {"a"};
  expect_error(options, context, "--nnodes 3 but --hosts lists 1 host (a)");
  options.hosts = {"a", ""};
  options.nnodes = 0;
  expect_error(options, context, "--hosts: empty host name");
  options.hosts = {"a"};
  options.hostfile = "x";
  expect_error(options, context, "--hostfile and --hosts both given");

  options = job(2);
  options.nnodes = 2;
  expect_error(options, context, "--nnodes 2 needs the nodes: give --hostfile FILE or --hosts node1,node2");
  options = job(2);
  options.launcher = "none";
  expect_error(options, context, "--launcher none runs the command as one process, but --nproc-per-node 2");
  options.launcher = "torchrun";
  expect_error(options, context, "--launcher 'torchrun': expected auto, mpirun, srun or none");
  options.launcher = "srun";
  expect_error(options, context, "--launcher srun: srun not found in PATH");
  options = job(1);
  options.launcher_args = {"--report-bindings"};
  expect_error(options, context, "but the job runs without a launcher");

  auto no_mpi = context;
  no_mpi.have_mpirun = false;
  expect_error(job(2), no_mpi, "mpirun not found in PATH");

  options = job(2);
  options.launcher_args = {"-np", "4"};
  expect_error(options, context, "set the process or node count, which mlarun computes from --nproc-per-node x --nnodes");
  options = job(8);
  options.bind = "core";
  expect_error(options, context, "--bind core with --nproc-per-node 8 on 4 CPUs would put several ranks on one core");
  options.bind = "numa";
  expect_error(options, context, "--bind 'numa': expected none, core or socket");

  options = job(2);
  options.env = {"1X=2"};
  expect_error(options, context, "--env '1X=2': '1X' is not a variable name");
  options.env = {"NOT_SET_ANYWHERE"};
  expect_error(options, context, "--env NOT_SET_ANYWHERE: not set in mlarun's environment");
}

TEST(LaunchPlan, Hostfiles) {
  auto hosts = parse_hostfile("# cluster\nn1 slots=4   # fast\n\nn2:8\nn1 slots=6\n  n3  \n", "hosts");
  ASSERT_EQ(hosts.size(), 3u);
  EXPECT_EQ(hosts[0].name, "n1");
  EXPECT_EQ(hosts[0].slots, 6);  // listed twice: kept once, largest slots
  EXPECT_EQ(hosts[1].name, "n2");
  EXPECT_EQ(hosts[1].slots, 8);
  EXPECT_EQ(hosts[2].name, "n3");
  EXPECT_EQ(hosts[2].slots, 0);
  try {
    parse_hostfile("n1\nn2 cpus=4\n", "hosts.txt");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "hosts.txt:2: unexpected 'cpus=4' (expected `host [slots=N] [max_slots=N]` or `host:N`)");
  }
  EXPECT_THROW(parse_hostfile("n1 slots=zero\n", "h"), Error);
  EXPECT_THROW(parse_hostfile("n1:0\n", "h"), Error);
}

TEST(LaunchPlan, MpiFlavor) {
  EXPECT_EQ(parse_mpi_flavor("mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n"),
            MpiFlavor::open_mpi);
  EXPECT_EQ(parse_mpi_flavor("HYDRA build details:\n    Version:                                 4.0.2\n"),
            MpiFlavor::mpich);
  EXPECT_EQ(parse_mpi_flavor("Intel(R) MPI Library for Linux* OS, Version 2021.6"), MpiFlavor::mpich);
  EXPECT_EQ(parse_mpi_flavor("bash: mpirun: command not found"), MpiFlavor::unknown);
}

TEST(LaunchPlan, ShellQuoting) {
  EXPECT_EQ(shell_quote("train.output_dir=/tmp/run-1"), "train.output_dir=/tmp/run-1");
  EXPECT_EQ(shell_quote(""), "''");
  EXPECT_EQ(shell_quote("a b"), "'a b'");
  EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
  EXPECT_EQ(shell_quote("$HOME"), "'$HOME'");
  EXPECT_EQ(shell_quote("*.yaml"), "'*.yaml'");
  EXPECT_EQ(shell_quote("line\nbreak"), "'line\nbreak'");
  LaunchPlan plan;
  plan.env = {{"A", "x y"}};
  plan.argv = {"./my=prog", "it's"};
  EXPECT_EQ(format_command(plan), "A='x y' './my=prog' 'it'\\''s'");
}

// --- failure reports ------------------------------------------------------------------------------

FailureScanner scan(const std::string& text, int stream = 1) {
  FailureScanner scanner;
  // In small pieces: lines arrive split across reads.
  for (size_t i = 0; i < text.size(); i += 7) scanner.feed(stream, std::string_view(text).substr(i, 7));
  scanner.finish();
  return scanner;
}

TEST(FailureReport, OpenMpiExitCode) {
  const std::string text =
      "step 3 loss 1.2\n"
      "--------------------------------------------------------------------------\n"
      "Primary job  terminated normally, but 1 process returned\n"
      "a non-zero exit code. Per user-direction, the job has been aborted.\n"
      "--------------------------------------------------------------------------\n"
      "mpirun detected that one or more processes exited with non-zero status, thus causing\n"
      "the job to be terminated. The first process to do so was:\n\n"
      "  Process name: [[30674,1],1]\n"
      "  Exit code:    3\n"
      "--------------------------------------------------------------------------\n";
  auto scanner = scan(text);
  auto failure = scanner.failure();
  ASSERT_TRUE(failure);
  EXPECT_EQ(failure->rank, 1);
  EXPECT_EQ(failure->exit_code, 3);
  EXPECT_EQ(failure_summary(3, "mpirun", scanner),
            "job failed (exit status 3): rank 1 exited with status 3 (the first to fail, per mpirun)");
}

TEST(FailureReport, OpenMpiSignalAndAbort) {
  auto scanner = scan("mpirun noticed that process rank 2 with PID 0 on node vm exited on signal 9 (Killed).\n");
  ASSERT_TRUE(scanner.failure());
  EXPECT_EQ(describe_failure(*scanner.failure()), "rank 2 on node vm was killed by signal 9 (Killed)");

  scanner = scan(
      "MPI_ABORT was invoked on rank 0 in communicator MPI_COMM_WORLD\nwith errorcode 1.\n\n"
      "rank 0 of 3 (world): all_reduce #2 (float32 x 4) did not complete in 3 s: a rank died or is stuck "
      "(ranks that had not arrived: 1, 2)\n"
      "mpirun noticed that process rank 1 with PID 0 on node vm exited on signal 15 (Terminated).\n");
  ASSERT_TRUE(scanner.failure());
  EXPECT_EQ(describe_failure(*scanner.failure()), "rank 0 called MPI_Abort (error code 1)");
  EXPECT_EQ(scanner.missing_ranks(), (std::vector<int>{1, 2}));
  EXPECT_EQ(failure_summary(1, "mpirun", scanner),
            "job failed (exit status 1): rank 0 called MPI_Abort (error code 1) (the first to fail, per mpirun); "
            "a collective timed out waiting for ranks 1, 2");
}

TEST(FailureReport, Srun) {
  // srun kills the other tasks after the bad exit; the victims are not the culprit.
  auto scanner = scan(
      "srun: error: gpu3: tasks 0,2-3: Terminated\n"
      "srun: error: gpu4: task 5: Exited with exit code 2\n"
      "srun: Terminating StepId=12.0\n");
  ASSERT_TRUE(scanner.failure());
  EXPECT_EQ(describe_failure(*scanner.failure()), "rank 5 on node gpu4 exited with status 2");
  scanner = scan("srun: error: gpu3: tasks 1-3: Killed\n");
  ASSERT_TRUE(scanner.failure());
  EXPECT_EQ(describe_failure(*scanner.failure()), "rank 1 on node gpu3 was stopped by the launcher (Killed)");
  scanner = scan("srun: error: gpu3: task 6: Segmentation fault (core dumped)\n");
  EXPECT_EQ(describe_failure(*scanner.failure()), "rank 6 on node gpu3 failed: Segmentation fault (core dumped)");
}

TEST(FailureReport, MpichHydra) {
  auto scanner = scan(
      "\n===================================================================================\n"
      "=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n"
      "=   RANK 3 PID 4242 RUNNING AT node7\n"
      "=   KILLED BY SIGNAL: 9 (Killed)\n"
      "===================================================================================\n",
      0);
  ASSERT_TRUE(scanner.failure());
  EXPECT_EQ(describe_failure(*scanner.failure()), "rank 3 on node node7 was killed by signal 9 (Killed)");
  scanner = scan("=   RANK 1 PID 11 RUNNING AT n1\n=   EXIT STATUS: 4\n", 0);
  EXPECT_EQ(describe_failure(*scanner.failure()), "rank 1 on node n1 exited with status 4");
}

TEST(FailureReport, NothingNamed) {
  // Progress lines end in \r and may be long; ordinary output mentioning ranks does not count.
  std::string text(200000, 'x');
  text += "\rrank 1 says hello\rprocess rank 1 is fine\n";
  auto scanner = scan(text);
  EXPECT_FALSE(scanner.failure());
  EXPECT_EQ(failure_summary(1, "mpirun", scanner),
            "job failed (exit status 1); mpirun named no failing rank (see its output above)");
  EXPECT_EQ(failure_summary(2, "none", scanner), "the command failed (exit status 2)");
}

}  // namespace
}  // namespace mlaforge::launch
