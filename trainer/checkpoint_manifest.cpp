#include "trainer/checkpoint_manifest.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>

#include "core/error.h"
#include "core/log.h"
#include "core/mmap_file.h"
#include "trainer/checksum.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace mlaforge {
namespace {

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

// A file name a manifest may list: no folders, nothing that climbs out of the step folder. Manifests are
// untrusted input (a damaged or hand-edited file must not make us read or delete elsewhere).
bool is_plain_file_name(std::string_view name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string_view::npos &&
         name.find('\0') == std::string_view::npos;
}

// Makes a rename or unlink inside `dir` durable. Failure loses nothing already written, so it only warns.
void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) != 0) log::warn(dir, ": fsync of the folder failed (", std::strerror(errno), ")");
  if (fd >= 0) ::close(fd);
}

std::optional<uint64_t> file_size(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  return static_cast<uint64_t>(st.st_size);
}

template <typename T>
T get_field(const json& j, const char* key, const std::string& source) {
  MLA_CHECK(j.contains(key), source, ": missing field '", key, "'");
  const json& v = j.at(key);
  if constexpr (std::is_same_v<T, std::string>) {
    MLA_CHECK(v.is_string(), source, ": field '", key, "' must be a string");
  } else if constexpr (std::is_same_v<T, uint64_t>) {
    MLA_CHECK(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0), source, ": field '", key,
              "' must be a non-negative integer");
  } else {
    MLA_CHECK(v.is_number_integer(), source, ": field '", key, "' must be an integer");
  }
  return v.get<T>();
}

}  // namespace

// ---- records and manifests --------------------------------------------------------------------------

json FileRecord::to_json() const { return {{"file", file}, {"bytes", bytes}, {"checksum", checksum}}; }

FileRecord FileRecord::from_json(const json& j, const std::string& source) {
  MLA_CHECK(j.is_object(), source, ": a file record must be an object");
  FileRecord r;
  r.file = get_field<std::string>(j, "file", source);
  MLA_CHECK(is_plain_file_name(r.file), source, ": file name '", r.file, "' is not a plain name inside the folder");
  r.bytes = get_field<uint64_t>(j, "bytes", source + " (" + r.file + ")");
  r.checksum = get_field<std::string>(j, "checksum", source + " (" + r.file + ")");
  uint32_t crc;
  MLA_CHECK(parse_crc32c_string(r.checksum, &crc), source, ": file '", r.file, "': checksum '", r.checksum,
            "' is not of the form crc32c:xxxxxxxx");
  return r;
}

json CheckpointManifest::to_json() const {
  json files_json = json::array();
  for (const FileRecord& f : files) files_json.push_back(f.to_json());
  return {{"format", format},   {"version", version},           {"step", step},
          {"model_fingerprint", model_fingerprint}, {"created_unix", created_unix}, {"files", files_json}};
}

CheckpointManifest CheckpointManifest::from_json(const json& j, const std::string& source) {
  MLA_CHECK(j.is_object(), source, ": the manifest must be a JSON object");
  CheckpointManifest m;
  m.format = get_field<std::string>(j, "format", source);
  MLA_CHECK(m.format == kCheckpointFormat, source, ": format '", m.format, "' is not ", kCheckpointFormat);
  m.version = get_field<int>(j, "version", source);
  MLA_CHECK(m.version >= 1 && m.version <= kCheckpointVersion, source, ": version ", m.version,
            " is not supported (this build reads up to ", kCheckpointVersion, ")");
  m.step = get_field<int64_t>(j, "step", source);
  m.model_fingerprint = get_field<std::string>(j, "model_fingerprint", source);
  if (j.contains("created_unix")) m.created_unix = get_field<int64_t>(j, "created_unix", source);
  MLA_CHECK(j.contains("files") && j.at("files").is_array(), source, ": field 'files' must be an array");
  std::set<std::string> seen;
  for (const json& f : j.at("files")) {
    FileRecord r = FileRecord::from_json(f, source);
    MLA_CHECK(seen.insert(r.file).second, source, ": file '", r.file, "' is listed twice");
    MLA_CHECK(r.file != kManifestFile, source, ": the manifest cannot list itself");
    m.files.push_back(std::move(r));
  }
  std::sort(m.files.begin(), m.files.end(), [](const FileRecord& a, const FileRecord& b) { return a.file < b.file; });
  return m;
}

const FileRecord* CheckpointManifest::find(std::string_view file) const {
  for (const FileRecord& f : files)
    if (f.file == file) return &f;
  return nullptr;
}

uint64_t CheckpointManifest::total_bytes() const {
  uint64_t total = 0;
  for (const FileRecord& f : files) total += f.bytes;
  return total;
}

std::string step_dir_name(int64_t step) {
  MLA_CHECK(step >= 0, "checkpoint step ", step, " is negative");
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%07lld", static_cast<long long>(step));
  return buf;
}

std::optional<int64_t> parse_step_dir_name(std::string_view name) {
  constexpr std::string_view prefix = "step-";
  if (name.size() <= prefix.size() || name.size() > prefix.size() + 18 || name.substr(0, prefix.size()) != prefix)
    return std::nullopt;
  int64_t step = 0;
  for (char c : name.substr(prefix.size())) {
    if (c < '0' || c > '9') return std::nullopt;
    step = step * 10 + (c - '0');
  }
  return step;
}

// ---- writing ----------------------------------------------------------------------------------------

void write_file_atomically(const std::string& path, std::string_view contents) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MLA_CHECK(fd >= 0, tmp, ": cannot create (", std::strerror(errno), ")");
  auto fail_with = [&](const char* what) {
    const std::string reason = std::strerror(errno);
    ::close(fd);
    ::unlink(tmp.c_str());
    fail(tmp, ": ", what, " failed (", reason, ")");
  };
  const char* p = contents.data();
  size_t left = contents.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail_with("write");
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) fail_with("fsync");
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail(tmp, ": close failed (", std::strerror(errno), ")");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    ::unlink(tmp.c_str());
    fail(path, ": cannot rename from ", tmp, " (", reason, ")");
  }
  fsync_dir(fs::path(path).parent_path().string());
}

FileRecord record_for_bytes(const std::string& file, const void* data, size_t size) {
  return {file, size, crc32c_string(crc32c(data, size))};
}

FileRecord checksum_file(const std::string& step_dir, const std::string& file) {
  const std::string path = join(step_dir, file);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MLA_CHECK(fd >= 0, path, ": cannot open (", std::strerror(errno), ")");
  std::unique_ptr<int, void (*)(int*)> closer(new int(fd), [](int* f) {
    ::close(*f);
    delete f;
  });
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  // read() into one reused buffer rather than a mapping: no page-table work and no RSS growth for
  // files of many GiB.
  constexpr size_t kBlock = size_t{4} << 20;
  std::unique_ptr<uint8_t[]> buf(new uint8_t[kBlock]);
  uint32_t crc = 0;
  uint64_t total = 0;
  for (;;) {
    const ssize_t n = ::read(fd, buf.get(), kBlock);
    if (n < 0 && errno == EINTR) continue;
    MLA_CHECK(n >= 0, path, ": read failed (", std::strerror(errno), ")");
    if (n == 0) break;
    crc = crc32c_extend(crc, buf.get(), static_cast<size_t>(n));
    total += static_cast<uint64_t>(n);
  }
  return {file, total, crc32c_string(crc)};
}

FileRecord write_json_file(const std::string& step_dir, const std::string& name, const json& j) {
  MLA_CHECK(is_plain_file_name(name) && name != kManifestFile, step_dir, ": '", name,
            "' cannot name a checkpoint file");
  std::error_code ec;
  fs::create_directories(step_dir, ec);
  MLA_CHECK(is_directory(step_dir), step_dir, ": cannot create folder (", ec.message(), ")");
  const std::string text = j.dump(2) + "\n";
  write_file_atomically(join(step_dir, name), text);
  return record_for_bytes(name, text.data(), text.size());
}

std::string prepare_step_dir(const std::string& root, const std::string& name) {
  MLA_CHECK(parse_step_dir_name(name).has_value(), root, ": '", name, "' is not a step folder name (step-NNNNNNN)");
  const std::string dir = join(root, name);
  std::error_code ec;
  if (fs::exists(join(dir, kManifestFile))) {
    // Manifest first and durably: from here on the folder is incomplete, whatever happens next.
    MLA_CHECK(fs::remove(join(dir, kManifestFile), ec), join(dir, kManifestFile), ": cannot remove (", ec.message(), ")");
    fsync_dir(dir);
    log::warn(dir, ": rewriting an existing checkpoint of the same step");
  }
  if (fs::exists(dir)) {
    // Old rank files (possibly of another world size) would otherwise linger next to the new ones.
    for (const auto& entry : fs::directory_iterator(dir, ec)) fs::remove_all(entry.path(), ec);
  }
  fs::create_directories(dir, ec);
  MLA_CHECK(is_directory(dir), dir, ": cannot create folder (", ec.message(), ")");
  return dir;
}

CheckpointManifest commit_checkpoint(const std::string& root, const std::string& name, int64_t step,
                                     const std::vector<FileRecord>& all_files, const std::string& model_fingerprint) {
  const auto t0 = std::chrono::steady_clock::now();
  MLA_CHECK(parse_step_dir_name(name).has_value(), root, ": '", name, "' is not a step folder name (step-NNNNNNN)");
  const std::string dir = join(root, name);
  MLA_CHECK(is_directory(dir), dir, ": checkpoint folder does not exist");
  MLA_CHECK(!all_files.empty(), dir, ": a checkpoint needs at least one file");
  CheckpointManifest m;
  m.step = step;
  m.model_fingerprint = model_fingerprint;
  m.created_unix = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch()).count();
  std::set<std::string> seen;
  for (const FileRecord& r : all_files) {
    const std::string path = join(dir, r.file);
    MLA_CHECK(is_plain_file_name(r.file) && r.file != kManifestFile, dir, ": '", r.file, "' cannot be listed");
    MLA_CHECK(seen.insert(r.file).second, path, ": listed twice in the records to commit");
    uint32_t crc;
    MLA_CHECK(parse_crc32c_string(r.checksum, &crc), path, ": checksum '", r.checksum, "' is not crc32c:xxxxxxxx");
    const auto size = file_size(path);
    MLA_CHECK(size.has_value(), path, ": missing at commit (did its rank finish writing?)");
    MLA_CHECK(*size == r.bytes, path, ": ", *size, " bytes on disk but written as ", r.bytes, " bytes");
    m.files.push_back(r);
  }
  std::sort(m.files.begin(), m.files.end(), [](const FileRecord& a, const FileRecord& b) { return a.file < b.file; });
  write_file_atomically(join(dir, kManifestFile), m.to_json().dump(2) + "\n");
  write_file_atomically(join(root, kLatestFile), name + "\n");
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  log::debug("checkpoint step ", step, " committed: ", dir, " (", m.files.size(), " files, ",
            static_cast<double>(m.total_bytes()) / (1 << 20), " MiB; commit ", dt * 1000, " ms)");
  return m;
}

// ---- reading and validation -------------------------------------------------------------------------

CheckpointManifest read_manifest(const std::string& step_dir) {
  const std::string path = join(step_dir, kManifestFile);
  MLA_CHECK(file_exists(path), path, ": missing: the checkpoint is incomplete (its writing did not finish)");
  const std::string text = read_text_file(path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    fail(path, ": not valid JSON (", e.what(), ")");
  }
  return CheckpointManifest::from_json(j, path);
}

std::string check_file(const std::string& step_dir, const FileRecord& record, bool verify_checksum) {
  const std::string path = join(step_dir, record.file);
  const auto size = file_size(path);
  if (!size) return path + ": missing (listed in " + kManifestFile + ")";
  if (*size != record.bytes)
    return path + ": " + std::to_string(*size) + " bytes on disk, " + kManifestFile + " lists " +
           std::to_string(record.bytes) + " (truncated or overwritten)";
  if (verify_checksum) {
    FileRecord actual;
    try {
      actual = checksum_file(step_dir, record.file);
    } catch (const Error& e) {
      return e.what();
    }
    if (actual.checksum != record.checksum)
      return path + ": checksum " + actual.checksum + " does not match " + kManifestFile + "'s " + record.checksum +
             " (file corrupt)";
  }
  return {};
}

void verify_checkpoint_files(const std::string& step_dir, const CheckpointManifest& manifest, bool verify_checksums) {
  for (const FileRecord& r : manifest.files) {
    const std::string problem = check_file(step_dir, r, verify_checksums);
    if (!problem.empty()) throw Error(problem);
  }
}

void check_model_fingerprint(const std::string& step_dir, const CheckpointManifest& manifest,
                             const std::string& expected) {
  if (expected.empty()) return;
  MLA_CHECK(manifest.model_fingerprint == expected, step_dir, ": checkpoint was written for model fingerprint '",
            manifest.model_fingerprint, "', this run's model is '", expected,
            "' (a different model or layout; use another output folder or checkpoint.resume: none)");
}

std::optional<std::string> read_latest(const std::string& root) {
  const std::string path = join(root, kLatestFile);
  if (!file_exists(path)) return std::nullopt;
  std::string text;
  try {
    text = read_text_file(path);
  } catch (const Error&) {
    return std::nullopt;
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
  if (!parse_step_dir_name(text)) return std::nullopt;
  return text;
}

std::vector<CheckpointDirInfo> list_checkpoints(const std::string& root) {
  std::vector<CheckpointDirInfo> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    const auto step = parse_step_dir_name(name);
    if (!step || !entry.is_directory(ec)) continue;
    CheckpointDirInfo info{name, entry.path().string(), *step, false};
    try {
      read_manifest(info.path);
      info.complete = true;
    } catch (const Error&) {
    }
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.step < b.step; });
  return out;
}

std::vector<std::string> apply_retention(const std::string& root, int64_t keep_last, int64_t keep_every) {
  MLA_CHECK(keep_last >= 0 && keep_every >= 0, root, ": keep_last and keep_every must be >= 0");
  const std::vector<CheckpointDirInfo> dirs = list_checkpoints(root);
  std::vector<const CheckpointDirInfo*> complete;
  for (const auto& d : dirs)
    if (d.complete) complete.push_back(&d);
  std::vector<std::string> deleted;
  if (complete.empty()) return deleted;  // nothing is known good: delete nothing, not even leftovers
  const int64_t newest = complete.back()->step;

  std::set<std::string> keep;
  for (size_t i = 0; i < complete.size(); ++i) {
    const auto& d = *complete[i];
    const bool recent = keep_last == 0 || complete.size() - i <= static_cast<size_t>(keep_last);
    const bool milestone = keep_every > 0 && d.step % keep_every == 0;
    if (recent || milestone || d.step == newest) keep.insert(d.name);
  }
  for (const auto& d : dirs) {
    std::string why;
    if (d.complete && !keep.count(d.name)) why = "retention (keep_last " + std::to_string(keep_last) +
                                                 ", keep_every " + std::to_string(keep_every) + ")";
    else if (!d.complete && d.step < newest) why = "incomplete, older than the newest complete checkpoint";
    if (why.empty()) continue;
    std::error_code ec;
    // Manifest first: a crash in the middle of remove_all leaves an incomplete folder, never a
    // "complete" checkpoint with files missing.
    fs::remove(fs::path(d.path) / kManifestFile, ec);
    fsync_dir(d.path);
    fs::remove_all(d.path, ec);
    if (ec) {
      log::warn(d.path, ": could not delete (", ec.message(), ")");
      continue;
    }
    log::info("deleted checkpoint ", d.path, ": ", why);
    deleted.push_back(d.path);
  }
  if (!deleted.empty()) fsync_dir(root);
  return deleted;
}

std::optional<std::string> find_resume_checkpoint(const std::string& root, const std::string& expected_fingerprint,
                                                  std::vector<std::string>* warnings, bool verify_checksums) {
  auto warn = [&](const std::string& message) {
    log::warn(message);
    if (warnings) warnings->push_back(message);
  };
  if (file_exists(join(root, kManifestFile))) {
    // A step folder named directly: it must be good, there is nothing to fall back to.
    const CheckpointManifest m = read_manifest(root);
    verify_checkpoint_files(root, m, verify_checksums);
    check_model_fingerprint(root, m, expected_fingerprint);
    return root;
  }
  const std::vector<CheckpointDirInfo> dirs = list_checkpoints(root);
  std::optional<CheckpointDirInfo> chosen;
  std::string latest_problem;  // what was wrong with the folder `latest` names, if we skipped it
  const std::optional<std::string> latest = read_latest(root);
  for (auto it = dirs.rbegin(); it != dirs.rend() && !chosen; ++it) {
    CheckpointManifest m;
    try {
      m = read_manifest(it->path);
      verify_checkpoint_files(it->path, m, verify_checksums);
    } catch (const Error& e) {
      warn(it->path + ": skipped, not a usable checkpoint: " + e.what());
      if (latest && *latest == it->name) latest_problem = e.what();
      continue;
    }
    check_model_fingerprint(it->path, m, expected_fingerprint);
    chosen = *it;
  }
  if (!chosen) {
    if (latest) warn(join(root, kLatestFile) + " names " + *latest + " but no usable checkpoint exists");
    return std::nullopt;
  }
  if (!latest) {
    if (file_exists(join(root, kLatestFile))) warn(join(root, kLatestFile) + ": unreadable; ignored");
  } else if (*latest != chosen->name) {
    const bool exists = std::any_of(dirs.begin(), dirs.end(), [&](const auto& d) { return d.name == *latest; });
    warn(join(root, kLatestFile) + " names " + *latest + " (" +
         (!latest_problem.empty() ? "not usable"
          : exists                ? "not the newest complete checkpoint"
                                  : "missing") +
         "); resuming from " + chosen->name + " instead");
  }
  return chosen->path;
}

}  // namespace mlaforge
