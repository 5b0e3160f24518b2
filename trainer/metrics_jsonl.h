#pragma once
// The metrics JSONL file of a training run: one JSON object per logged step or evaluation,
//   {"split":"train","step":120,"time":1717000000.25,"loss":2.31,"lr":0.0003,...}
// where "time" is the wall-clock time (seconds since the Unix epoch) and every other key is a scalar.
// Non-finite values are written as null (JSON has no NaN) and read back as NaN. Each line is flushed as
// it is written, so the file is complete up to the last step a crashed run logged.
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mlaforge::metrics {

// Named scalars in the order the caller gave them (kept in the JSON object and the progress line).
using Scalars = std::vector<std::pair<std::string, double>>;

struct MetricRecord {
  std::string split = "train";  // "train" or "eval"
  int64_t step = 0;
  double wall_time = 0;  // seconds since the Unix epoch
  Scalars values;
};

// Keys the record itself uses; a scalar may not take one of these names.
bool is_reserved_key(std::string_view key);

std::string to_json_line(const MetricRecord& record);  // no trailing newline
// `where` names the line in error messages ("metrics.jsonl:12").
MetricRecord parse_json_line(std::string_view line, const std::string& where);
// Every record of a file; throws mlaforge::Error naming the file and line of a malformed one.
std::vector<MetricRecord> read_jsonl(const std::string& path);

// Resuming after step `last_step`: keeps the lines with step <= last_step byte for byte and drops the
// later ones (the previous run logged them after its last checkpoint; the resumed run logs them again).
// Lines that do not parse (a line torn by a crash) are dropped with a warning. The file is rewritten
// through a temporary file and rename(), so a crash during the rewrite leaves the old or the new file,
// never a mix. Returns the kept records; a missing file gives none.
std::vector<MetricRecord> truncate_jsonl_after(const std::string& path, int64_t last_step);

// Appends (or truncates first, when `append` is false) and flushes every line.
class JsonlWriter {
 public:
  JsonlWriter(const std::string& path, bool append);
  ~JsonlWriter();
  JsonlWriter(const JsonlWriter&) = delete;
  JsonlWriter& operator=(const JsonlWriter&) = delete;
  void write(const MetricRecord& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace mlaforge::metrics
