#pragma once
// Which rank failed first, read from the launcher's own messages as the job's output streams by (mlarun
// passes every byte through unchanged and only watches). Recognised:
//   Open MPI  "Process name: [[30674,1],1]" + "Exit code:    3"; "process rank 1 with PID 7 on node n1
//             exited on signal 9 (Killed)"; "MPI_ABORT was invoked on rank 1 ..." + "with errorcode 1"
//   srun      "srun: error: n1: task 1: Exited with exit code 3" (tasks srun itself then killed,
//             "Terminated" / "Killed", only count when nothing else was reported)
//   MPICH     "RANK 1 PID 7 RUNNING AT n1" + "EXIT STATUS: 3" / "EXIT CODE: 3" / "KILLED BY SIGNAL: 9"
//   mlaforge  "(ranks that had not arrived: 1, 2)" from a collective's timeout: the ranks the others
//             were waiting for, which may be the real culprits when the first to exit was a waiting one.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mlaforge::launch {

struct RankFailure {
  int rank = -1;
  std::string node;                // empty when not reported
  std::optional<int> exit_code;
  std::optional<int> signal;
  std::string signal_name;         // "Killed", when reported
  bool aborted = false;            // MPI_Abort
  bool killed_by_launcher = false; // srun's "Terminated"/"Killed": a victim of another task's failure
};

class FailureScanner {
 public:
  // `stream`: 0 stdout, 1 stderr (lines are assembled per stream; \r also ends a line).
  void feed(int stream, std::string_view chunk);
  void finish();  // scans what is left of unterminated lines
  std::optional<RankFailure> failure() const;
  const std::vector<int>& missing_ranks() const { return missing_; }

 private:
  void scan_line(std::string_view line);
  std::string partial_[2];
  std::optional<RankFailure> first_;   // the first failure reported
  std::optional<RankFailure> victim_;  // the first launcher-killed task, a fallback
  enum class Awaiting { nothing, exit_code, abort_code, hydra_status } awaiting_ = Awaiting::nothing;
  std::vector<int> missing_;
};

// "rank 1 on node n1 exited with status 3"; "rank 1 was killed by signal 9 (Killed)"; ...
std::string describe_failure(const RankFailure& failure);

// The one line mlarun prints after a failed job (without the "mlarun: " prefix):
//   job failed (exit status 3): rank 1 on node n1 exited with status 3 (the first to fail, per mpirun)
//   job failed (exit status 1); mpirun named no failing rank (see its output above)
std::string failure_summary(int status, std::string_view launcher, const FailureScanner& scanner);

}  // namespace mlaforge::launch
