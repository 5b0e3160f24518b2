#pragma once
// Shared helpers for the tests: where assets and generated reference data live.
#include <gtest/gtest.h>

#include <string>

namespace mlaforge::testing {

// ../shared/assets (or $MLAFORGE_ASSETS). Empty string when absent.
std::string assets_dir();
// Path under the assets dir; GTEST_SKIPs the calling test (via the macro below) when missing.
std::string asset_path(const std::string& relative);
bool has_asset(const std::string& relative);
// Build-tree folder where tests/python/make_references.py writes its outputs.
std::string test_data_dir();
std::string source_dir();
// A fresh empty temporary directory, removed at process exit.
std::string make_temp_dir(const std::string& tag);

}  // namespace mlaforge::testing

// Skips the current test with a clear message when an asset under ../shared/assets is absent.
#define REQUIRE_ASSET(rel)                                                                         \
  do {                                                                                             \
    if (!::mlaforge::testing::has_asset(rel))                                                      \
      GTEST_SKIP() << "asset " << (rel) << " not found under ../shared/assets (set MLAFORGE_ASSETS)"; \
  } while (0)

// Skips when a reference file produced by tests/python/make_references.py is absent.
#define REQUIRE_TEST_DATA(rel)                                                                     \
  do {                                                                                             \
    if (!::mlaforge::core_file_exists(::mlaforge::testing::test_data_dir() + "/" + (rel)))          \
      GTEST_SKIP() << "reference " << (rel) << " not generated (needs the Python test venv)";      \
  } while (0)

namespace mlaforge {
bool core_file_exists(const std::string& path);
}
