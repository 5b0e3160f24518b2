#include "trainer/metrics_jsonl.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"

namespace mlaforge::metrics {
namespace {

using ordered_json = nlohmann::ordered_json;

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MLA_CHECK(in, "cannot open the metrics file ", path, ": ", std::strerror(errno));
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  MLA_CHECK(in.eof(), "cannot read the metrics file ", path);
  return lines;
}

bool blank(std::string_view line) { return line.find_first_not_of(" \t\r") == std::string_view::npos; }

}  // namespace

bool is_reserved_key(std::string_view key) { return key == "split" || key == "step" || key == "time"; }

std::string to_json_line(const MetricRecord& record) {
  ordered_json j;
  j["split"] = record.split;
  j["step"] = record.step;
  j["time"] = record.wall_time;
  for (const auto& [name, value] : record.values) {
    MLA_CHECK(!is_reserved_key(name), "metric name '", name, "' is reserved in the metrics file");
    // nlohmann would write NaN as null anyway; being explicit keeps +-inf from becoming a number.
    if (std::isfinite(value))
      j[name] = value;
    else
      j[name] = nullptr;
  }
  // Doubles are printed with enough digits to read back bit-identical.
  return j.dump();
}

MetricRecord parse_json_line(std::string_view line, const std::string& where) {
  ordered_json j = ordered_json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  MLA_CHECK(!j.is_discarded(), where, ": not valid JSON");
  MLA_CHECK(j.is_object(), where, ": expected a JSON object");
  MetricRecord record;
  const auto split = j.find("split");
  MLA_CHECK(split != j.end() && split->is_string(), where, ": field \"split\" missing or not a string");
  record.split = split->get<std::string>();
  const auto step = j.find("step");
  MLA_CHECK(step != j.end() && step->is_number_integer(), where, ": field \"step\" missing or not an integer");
  record.step = step->get<int64_t>();
  const auto time = j.find("time");
  MLA_CHECK(time != j.end() && time->is_number(), where, ": field \"time\" missing or not a number");
  record.wall_time = time->get<double>();
  for (const auto& [key, value] : j.items()) {
    if (is_reserved_key(key)) continue;
    if (value.is_null())
      record.values.emplace_back(key, std::numeric_limits<double>::quiet_NaN());
    else if (value.is_number())
      record.values.emplace_back(key, value.get<double>());
    else
      fail(where, ": field \"", key, "\" is not a number or null");
  }
  return record;
}

std::vector<MetricRecord> read_jsonl(const std::string& path) {
  const std::vector<std::string> lines = read_lines(path);
  std::vector<MetricRecord> records;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (blank(lines[i])) continue;
    records.push_back(parse_json_line(lines[i], path + ":" + std::to_string(i + 1)));
  }
  return records;
}

std::vector<MetricRecord> truncate_jsonl_after(const std::string& path, int64_t last_step) {
  if (!std::filesystem::exists(path)) return {};
  const std::vector<std::string> lines = read_lines(path);
  std::vector<MetricRecord> kept_records;
  std::string kept;
  size_t dropped_later = 0;
  bool changed = false;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (blank(lines[i])) {
      changed = true;
      continue;
    }
    MetricRecord record;
    try {
      record = parse_json_line(lines[i], path + ":" + std::to_string(i + 1));
    } catch (const Error& e) {
      // Most likely the last line of a run killed mid-write; the rest of the file is still good.
      log::warn("dropping an unreadable line of the metrics file: ", e.what());
      changed = true;
      continue;
    }
    if (record.step > last_step) {
      ++dropped_later;
      changed = true;
      continue;
    }
    kept += lines[i];
    kept += '\n';
    kept_records.push_back(std::move(record));
  }
  // A final line without '\n' is rewritten with one, so the next append starts on a line of its own.
  if (!changed && !lines.empty()) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    const auto size = static_cast<size_t>(in.tellg());
    changed = size != kept.size();
  }
  if (!changed) return kept_records;
  if (dropped_later > 0)
    log::info("resuming after step ", last_step, ": dropped ", dropped_later, " later record(s) from ", path);

  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  MLA_CHECK(f != nullptr, "cannot write ", tmp, ": ", std::strerror(errno));
  const bool ok = std::fwrite(kept.data(), 1, kept.size(), f) == kept.size() && std::fflush(f) == 0 &&
                  ::fsync(::fileno(f)) == 0;
  const int write_errno = errno;
  std::fclose(f);
  if (!ok) {
    std::remove(tmp.c_str());
    fail("cannot write ", tmp, ": ", std::strerror(write_errno));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  MLA_CHECK(!ec, "cannot replace ", path, " with ", tmp, ": ", ec.message());
  return kept_records;
}

JsonlWriter::JsonlWriter(const std::string& path, bool append) : path_(path) {
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    MLA_CHECK(!ec, "cannot create the folder of the metrics file ", path, ": ", ec.message());
  }
  file_ = std::fopen(path.c_str(), append ? "ab" : "wb");
  MLA_CHECK(file_ != nullptr, "cannot open the metrics file ", path, ": ", std::strerror(errno));
}

JsonlWriter::~JsonlWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void JsonlWriter::write(const MetricRecord& record) {
  const std::string line = to_json_line(record) + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
    fail("cannot write the metrics file ", path_, ": ", std::strerror(errno));
}

}  // namespace mlaforge::metrics
