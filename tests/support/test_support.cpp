#include "tests/support/test_support.h"

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <vector>

#include "core/mmap_file.h"

namespace fs = std::filesystem;

namespace mlaforge {
bool core_file_exists(const std::string& path) { return file_exists(path); }
}  // namespace mlaforge

namespace mlaforge::testing {

std::string assets_dir() {
  if (const char* env = std::getenv("MLAFORGE_ASSETS")) return env;
  const std::string dir = MLAFORGE_ASSETS_DIR;
  return is_directory(dir) ? dir : std::string();
}

bool has_asset(const std::string& relative) {
  const std::string dir = assets_dir();
  return !dir.empty() && fs::exists(dir + "/" + relative);
}

std::string asset_path(const std::string& relative) { return assets_dir() + "/" + relative; }

std::string test_data_dir() {
  if (const char* env = std::getenv("MLAFORGE_TEST_DATA")) return env;
  return MLAFORGE_TEST_DATA;
}

std::string source_dir() { return MLAFORGE_SOURCE_DIR; }

namespace {
struct TempDirs {
  std::mutex mutex;
  std::vector<fs::path> dirs;
  ~TempDirs() {
    std::error_code ec;
    for (auto& d : dirs) fs::remove_all(d, ec);
  }
};
TempDirs& temp_dirs() {
  static TempDirs t;
  return t;
}
}  // namespace

std::string make_temp_dir(const std::string& tag) {
  std::string pattern = (fs::temp_directory_path() / ("mlaforge-" + tag + "-XXXXXX")).string();
  char* made = ::mkdtemp(pattern.data());
  if (made == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
  std::lock_guard<std::mutex> lock(temp_dirs().mutex);
  temp_dirs().dirs.emplace_back(made);
  return made;
}

}  // namespace mlaforge::testing
