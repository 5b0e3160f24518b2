// Where a dataset's files are: a file, a glob, or a Hugging Face dataset folder (see data/dataset.h).
#include <glob.h>

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "data/dataset.h"

namespace mlaforge {
namespace {

namespace fs = std::filesystem;

bool has_glob_chars(const std::string& path) { return path.find_first_of("*?[") != std::string::npos; }

std::vector<std::string> glob_files(const std::string& pattern) {
  glob_t result{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &result);
  std::vector<std::string> files;
  if (rc == 0)
    for (size_t i = 0; i < result.gl_pathc; ++i)
      if (fs::is_regular_file(result.gl_pathv[i])) files.push_back(result.gl_pathv[i]);
  globfree(&result);
  std::sort(files.begin(), files.end());
  return files;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Data files of a folder (not recursive), sorted by name.
std::vector<std::string> data_files_in(const fs::path& folder) {
  std::vector<std::string> names;
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) return names;
  for (const auto& entry : fs::directory_iterator(folder, ec)) {
    if (!entry.is_regular_file(ec)) continue;
    const std::string name = entry.path().filename().string();
    if (ends_with(name, ".parquet") || ends_with(name, ".jsonl") || ends_with(name, ".json") ||
        ends_with(name, ".txt"))
      names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The split a Hub file name belongs to: "train-00000-of-00002.parquet" and "train.jsonl" -> "train".
std::string split_of(const std::string& name) {
  static const char* const kSplits[] = {"train", "validation", "valid", "test", "dev", "eval"};
  for (const char* split : kSplits) {
    const std::string s = split;
    if (starts_with(name, s) && name.size() > s.size() && (name[s.size()] == '-' || name[s.size()] == '.'))
      return s;
  }
  return "";
}

std::vector<std::string> resolve_folder(const fs::path& folder, const std::string& split) {
  // 1. files named after the split, under data/ (the Hub's layout) and then at the top: shards
  //    (<split>-00000-of-00002.parquet) or one file (<split>.jsonl).
  struct Pattern {
    std::string ext;
    bool sharded;
  };
  const Pattern patterns[] = {{".parquet", true}, {".parquet", false}, {".jsonl", true}, {".jsonl", false},
                              {".json", false}};
  for (const fs::path& dir : {folder / "data", folder}) {
    const std::vector<std::string> names = data_files_in(dir);
    for (const Pattern& p : patterns) {
      std::vector<std::string> found;
      for (const auto& name : names)
        if (p.sharded ? starts_with(name, split + "-") && ends_with(name, p.ext) : name == split + p.ext)
          found.push_back((dir / name).string());
      if (!found.empty()) return found;
    }
  }
  // 2. the parquet-converter layout: <split>/0000.parquet, ... (possibly under a config folder).
  std::vector<std::string> found = glob_files((folder / split / "*.parquet").string());
  if (!found.empty()) return found;
  // 3. a folder of plain data files, none of them named after a split.
  std::vector<std::string> splits_seen;
  for (const fs::path& dir : {folder / "data", folder})
    for (const auto& name : data_files_in(dir))
      if (!split_of(name).empty() &&
          std::find(splits_seen.begin(), splits_seen.end(), split_of(name)) == splits_seen.end())
        splits_seen.push_back(split_of(name));
  if (!splits_seen.empty()) {
    std::string list;
    for (const auto& s : splits_seen) list += (list.empty() ? "" : ", ") + s;
    fail(folder.string(), ": no files for split '", split, "' (the folder has splits: ", list, ")");
  }
  const std::vector<std::string> names = data_files_in(folder);
  for (const char* ext : {".parquet", ".jsonl", ".json", ".txt"}) {
    for (const auto& name : names)
      if (ends_with(name, ext)) found.push_back((folder / name).string());
    if (!found.empty()) return found;
  }
  fail(folder.string(), ": no data files for split '", split, "' (looked for data/", split, "-*.parquet, ",
       split, "-*.parquet, ", split, "-*.jsonl, ", split, ".jsonl, ", split, ".json, ", split,
       "/*.parquet, *.parquet, *.jsonl, *.json, *.txt)");
}

}  // namespace

std::vector<std::string> resolve_data_files(const std::string& path, const std::string& split) {
  MLA_CHECK(!path.empty(), "dataset path is empty");
  std::error_code ec;
  if (fs::is_directory(path, ec)) return resolve_folder(fs::path(path), split);
  if (fs::exists(path, ec)) return {path};
  if (has_glob_chars(path)) {
    std::vector<std::string> files = glob_files(path);
    MLA_CHECK(!files.empty(), path, ": the pattern matches no file");
    return files;
  }
  fail(path, ": no such file or folder");
}

}  // namespace mlaforge
