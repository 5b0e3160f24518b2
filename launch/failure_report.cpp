// Recognising the launchers' "this rank failed" messages (see failure_report.h for the formats). Each
// line is first checked for a cheap marker substring, so the regular expressions only run on the few
// lines that can match, not on every line of a training log.
#include "launch/failure_report.h"

#include <algorithm>
#include <charconv>
#include <regex>

namespace mlaforge::launch {
namespace {

constexpr size_t kMaxLine = 64 * 1024;  // a progress line without \n must not grow without bound

bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

int to_int(const std::csub_match& m) {
  int value = -1;
  std::from_chars(m.first, m.second, value);
  return value;
}

// "0,2-3" -> first number (0).
int first_task(std::string_view list) {
  int value = -1;
  std::from_chars(list.data(), list.data() + list.size(), value);
  return value;
}

RankFailure at_rank(int rank, std::string node = {}) {
  RankFailure f;
  f.rank = rank;
  f.node = std::move(node);
  return f;
}

}  // namespace

void FailureScanner::feed(int stream, std::string_view chunk) {
  std::string& partial = partial_[stream == 1 ? 1 : 0];
  for (char c : chunk) {
    if (c == '\n' || c == '\r') {
      if (!partial.empty()) scan_line(partial);
      partial.clear();
    } else if (partial.size() < kMaxLine) {
      partial.push_back(c);
    }
  }
}

void FailureScanner::finish() {
  for (auto& partial : partial_) {
    if (!partial.empty()) scan_line(partial);
    partial.clear();
  }
}

std::optional<RankFailure> FailureScanner::failure() const { return first_ ? first_ : victim_; }

void FailureScanner::scan_line(std::string_view line) {
  std::cmatch m;
  const char* b = line.data();
  const char* e = line.data() + line.size();
  // Continuation lines of a multi-line report whose first line set awaiting_.
  if (awaiting_ != Awaiting::nothing && first_) {
    static const std::regex exit_code(R"(^\s*Exit code:\s*(-?\d+))");
    static const std::regex abort_code(R"(^\s*with errorcode (-?\d+))");
    static const std::regex hydra_exit(R"((?:EXIT STATUS|EXIT CODE):\s*(\d+))");
    static const std::regex hydra_signal(R"(KILLED BY SIGNAL:\s*(\d+)(?:\s*\(([^)]*)\))?)");
    if (awaiting_ == Awaiting::exit_code && contains(line, "Exit code:") && std::regex_search(b, e, m, exit_code)) {
      first_->exit_code = to_int(m[1]);
      awaiting_ = Awaiting::nothing;
      return;
    }
    if (awaiting_ == Awaiting::abort_code && contains(line, "errorcode") && std::regex_search(b, e, m, abort_code)) {
      first_->exit_code = to_int(m[1]);
      awaiting_ = Awaiting::nothing;
      return;
    }
    if (awaiting_ == Awaiting::hydra_status) {
      if (contains(line, "KILLED BY SIGNAL") && std::regex_search(b, e, m, hydra_signal)) {
        first_->signal = to_int(m[1]);
        if (m[2].matched) first_->signal_name = m[2].str();
        awaiting_ = Awaiting::nothing;
        return;
      }
      if (contains(line, "EXIT ") && std::regex_search(b, e, m, hydra_exit)) {
        first_->exit_code = to_int(m[1]);
        awaiting_ = Awaiting::nothing;
        return;
      }
    }
  }

  if (contains(line, "had not arrived")) {
    static const std::regex missing(R"(ranks that had not arrived: ([0-9][0-9, ]*))");
    if (std::regex_search(b, e, m, missing)) {
      std::string_view list(m[1].first, static_cast<size_t>(m[1].length()));
      while (!list.empty()) {
        const size_t comma = list.find(',');
        std::string_view item = list.substr(0, comma);
        while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
        int rank = -1;
        std::from_chars(item.data(), item.data() + item.size(), rank);
        if (rank >= 0 && std::find(missing_.begin(), missing_.end(), rank) == missing_.end()) missing_.push_back(rank);
        list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
      }
    }
    return;
  }
  if (first_) return;  // the first failure is the one to name; later ones are usually its consequences

  if (contains(line, "Process name:")) {
    static const std::regex process_name(R"(Process name:\s*\[\[\d+,\d+\],(\d+)\])");
    if (std::regex_search(b, e, m, process_name)) {
      first_ = at_rank(to_int(m[1]));
      awaiting_ = Awaiting::exit_code;
    }
    return;
  }
  if (contains(line, "process rank") && contains(line, "exited on signal")) {
    static const std::regex on_signal(
        R"(process rank (\d+) with PID \d+ on node (\S+) exited on signal (\d+)(?: \(([^)]*)\))?)");
    if (std::regex_search(b, e, m, on_signal)) {
      first_ = at_rank(to_int(m[1]), m[2].str());
      first_->signal = to_int(m[3]);
      if (m[4].matched) first_->signal_name = m[4].str();
    }
    return;
  }
  if (contains(line, "MPI_ABORT was invoked on rank")) {
    static const std::regex abort(R"(MPI_ABORT was invoked on rank (\d+))");
    if (std::regex_search(b, e, m, abort)) {
      first_ = at_rank(to_int(m[1]));
      first_->aborted = true;
      awaiting_ = Awaiting::abort_code;
    }
    return;
  }
  if (contains(line, "srun: error:") && contains(line, "task")) {
    static const std::regex task(R"(srun: error: (\S+): tasks? ([0-9][0-9,\-]*): (.*)$)");
    if (!std::regex_search(b, e, m, task)) return;
    RankFailure f = at_rank(first_task(std::string_view(m[2].first, static_cast<size_t>(m[2].length()))), m[1].str());
    const std::string what = m[3].str();
    static const std::regex exited(R"(Exited with exit code (\d+))");
    std::smatch em;
    if (std::regex_search(what, em, exited)) {
      f.exit_code = std::stoi(em[1].str());
      first_ = f;
    } else if (what.rfind("Terminated", 0) == 0 || what.rfind("Killed", 0) == 0) {
      f.killed_by_launcher = true;
      f.signal_name = what;
      if (!victim_) victim_ = f;
    } else {
      f.signal_name = what;  // "Segmentation fault (core dumped)", ...
      first_ = f;
    }
    return;
  }
  if (contains(line, "RUNNING AT")) {
    static const std::regex hydra(R"(RANK (\d+) PID \d+ RUNNING AT (\S+))");
    if (std::regex_search(b, e, m, hydra)) {
      first_ = at_rank(to_int(m[1]), m[2].str());
      awaiting_ = Awaiting::hydra_status;
    }
  }
}

std::string describe_failure(const RankFailure& f) {
  std::string out = "rank " + std::to_string(f.rank);
  if (!f.node.empty()) out += " on node " + f.node;
  if (f.aborted) {
    out += " called MPI_Abort";
    if (f.exit_code) out += " (error code " + std::to_string(*f.exit_code) + ")";
  } else if (f.signal) {
    out += " was killed by signal " + std::to_string(*f.signal);
    if (!f.signal_name.empty()) out += " (" + f.signal_name + ")";
  } else if (f.exit_code) {
    out += " exited with status " + std::to_string(*f.exit_code);
  } else if (f.killed_by_launcher) {
    out += " was stopped by the launcher (" + f.signal_name + ")";
  } else if (!f.signal_name.empty()) {
    out += " failed: " + f.signal_name;
  } else {
    out += " failed";
  }
  return out;
}

std::string failure_summary(int status, std::string_view launcher, const FailureScanner& scanner) {
  if (launcher == "none") return "the command failed (exit status " + std::to_string(status) + ")";
  std::string out = "job failed (exit status " + std::to_string(status) + ")";
  const auto failure = scanner.failure();
  if (failure) {
    out += ": " + describe_failure(*failure) + " (the first to fail, per " + std::string(launcher) + ")";
  } else {
    out += "; " + std::string(launcher) + " named no failing rank (see its output above)";
  }
  if (!scanner.missing_ranks().empty()) {
    std::string list;
    for (int r : scanner.missing_ranks()) list += (list.empty() ? "" : ", ") + std::to_string(r);
    out += "; a collective timed out waiting for rank" + std::string(scanner.missing_ranks().size() > 1 ? "s " : " ") +
           list;
  }
  return out;
}

}  // namespace mlaforge::launch
