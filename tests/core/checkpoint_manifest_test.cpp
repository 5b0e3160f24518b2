// The torch-free half of training checkpoints (trainer/checksum.h, checkpoint_manifest.h,
// checkpoint_async.h): CRC-32C against the RFC 3720 vectors and against its portable path, manifest
// parsing, the latest pointer, retention, and the bounded background writer. The tensor half (rank files,
// slab assembly, corruption, resume choice) is tests/torch/checkpoint_store_test.cpp.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "core/error.h"
#include "core/mmap_file.h"
#include "tests/support/test_support.h"
#include "trainer/checkpoint_async.h"
#include "trainer/checkpoint_manifest.h"
#include "trainer/checksum.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace mlaforge {
namespace {

uint32_t crc_of(const std::vector<uint8_t>& v) { return crc32c(v.data(), v.size()); }

TEST(Crc32c, StandardVectors) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  // RFC 3720 (iSCSI) appendix B.4.
  EXPECT_EQ(crc_of(std::vector<uint8_t>(32, 0x00)), 0x8A9136AAu);
  EXPECT_EQ(crc_of(std::vector<uint8_t>(32, 0xFF)), 0x62A8AB43u);
  std::vector<uint8_t> inc(32), dec(32);
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<uint8_t>(i), dec[i] = static_cast<uint8_t>(31 - i);
  EXPECT_EQ(crc_of(inc), 0x46DD794Eu);
  EXPECT_EQ(crc_of(dec), 0x113FDB5Cu);
  EXPECT_EQ(crc32c_extend_portable(0, "123456789", 9), 0xE3069283u);
}

// The three-stream hardware path (blocks of 3 x 8 KiB, joined by the zero-shift operator) must agree with
// the byte table on every length and alignment, including lengths around the block size.
TEST(Crc32c, FastPathMatchesPortableAndChains) {
  std::mt19937 rng(7);
  std::vector<uint8_t> buf(200000);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  const size_t lengths[] = {0, 1, 7, 8, 9, 63, 4096, 24575, 24576, 24577, 49152 + 13, 150000};
  for (size_t offset : {0, 1, 3, 8}) {
    for (size_t n : lengths) {
      const uint8_t* p = buf.data() + offset;
      EXPECT_EQ(crc32c(p, n), crc32c_extend_portable(0, p, n)) << "offset " << offset << " length " << n;
      const size_t cut = n / 3;
      EXPECT_EQ(crc32c_extend(crc32c(p, cut), p + cut, n - cut), crc32c(p, n)) << "chained at " << cut;
      EXPECT_EQ(crc32c_combine(crc32c(p, cut), crc32c(p + cut, n - cut), n - cut), crc32c(p, n)) << "combined at " << cut;
    }
  }
  std::cout << "crc32c implementation: " << crc32c_implementation() << std::endl;
}

TEST(Crc32c, StringForm) {
  EXPECT_EQ(crc32c_string(0xE3069283u), "crc32c:e3069283");
  uint32_t v = 0;
  EXPECT_TRUE(parse_crc32c_string("crc32c:e3069283", &v));
  EXPECT_EQ(v, 0xE3069283u);
  EXPECT_FALSE(parse_crc32c_string("crc32c:E3069283", &v));
  EXPECT_FALSE(parse_crc32c_string("crc32:e3069283", &v));
  EXPECT_FALSE(parse_crc32c_string("crc32c:e306928", &v));
}

TEST(CheckpointManifest, StepNames) {
  EXPECT_EQ(step_dir_name(120), "step-0000120");
  EXPECT_EQ(step_dir_name(123456789), "step-123456789");
  EXPECT_EQ(parse_step_dir_name("step-0000120"), 120);
  EXPECT_EQ(parse_step_dir_name("step-123456789"), 123456789);
  EXPECT_FALSE(parse_step_dir_name("step-"));
  EXPECT_FALSE(parse_step_dir_name("step-12a"));
  EXPECT_FALSE(parse_step_dir_name("latest"));
  EXPECT_FALSE(parse_step_dir_name("step-0000120.tmp"));
}

TEST(CheckpointManifest, ParseRejectsBadManifests) {
  const json good = {{"format", "mlaforge-checkpoint"}, {"version", 1}, {"step", 5}, {"model_fingerprint", "fp"},
                     {"files", {{{"file", "b.json"}, {"bytes", 3}, {"checksum", "crc32c:00000001"}},
                                {{"file", "a.json"}, {"bytes", 4}, {"checksum", "crc32c:00000002"}}}}};
  const CheckpointManifest m = CheckpointManifest::from_json(good, "m.json");
  ASSERT_EQ(m.files.size(), 2u);
  EXPECT_EQ(m.files[0].file, "a.json");  // sorted
  EXPECT_EQ(m.total_bytes(), 7u);
  EXPECT_EQ(CheckpointManifest::from_json(m.to_json(), "again").files, m.files);

  auto expect_error = [&](json j, const std::string& needle) {
    try {
      CheckpointManifest::from_json(j, "m.json");
      ADD_FAILURE() << "accepted a manifest that should fail with " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("m.json"), std::string::npos) << e.what();
    }
  };
  json j = good;
  j.erase("step");
  expect_error(j, "missing field 'step'");
  j = good;
  j["format"] = "something-else";
  expect_error(j, "format 'something-else'");
  j = good;
  j["version"] = 99;
  expect_error(j, "version 99 is not supported");
  j = good;
  j["files"][0]["file"] = "../escape";
  expect_error(j, "not a plain name");
  j = good;
  j["files"][0]["checksum"] = "md5:abc";
  expect_error(j, "crc32c:xxxxxxxx");
  j = good;
  j["files"][1]["file"] = "b.json";
  expect_error(j, "listed twice");
}

// A checkpoint made of one JSON file: enough for everything that does not look inside rank files.
void json_checkpoint(const std::string& root, int64_t step, bool commit = true) {
  const std::string dir = prepare_step_dir(root, step_dir_name(step));
  const FileRecord r = write_json_file(dir, kTrainingStateFile, {{"step", step}});
  if (commit) commit_checkpoint(root, step_dir_name(step), step, {r}, "fp");
}

std::vector<int64_t> steps_on_disk(const std::string& root) {
  std::vector<int64_t> out;
  for (const auto& d : list_checkpoints(root)) out.push_back(d.complete ? d.step : -d.step);  // negative: incomplete
  return out;
}

TEST(CheckpointManifest, CommitWritesManifestAndLatest) {
  const std::string root = testing::make_temp_dir("ckpt-commit");
  json_checkpoint(root, 10);
  EXPECT_EQ(read_text_file(root + "/latest"), "step-0000010\n");
  const CheckpointManifest m = read_manifest(root + "/step-0000010");
  EXPECT_EQ(m.step, 10);
  EXPECT_EQ(m.model_fingerprint, "fp");
  ASSERT_EQ(m.files.size(), 1u);
  EXPECT_EQ(m.files[0], checksum_file(root + "/step-0000010", kTrainingStateFile));
  json_checkpoint(root, 20);
  EXPECT_EQ(read_latest(root), "step-0000020");
  EXPECT_FALSE(fs::exists(root + "/latest.tmp"));

  // A record whose file is not there (a rank that never finished) stops the commit, naming the file.
  const std::string dir = prepare_step_dir(root, step_dir_name(30));
  FileRecord ghost{"rank-00001-of-00002.safetensors", 10, "crc32c:00000000"};
  try {
    commit_checkpoint(root, "step-0000030", 30, {ghost}, "fp");
    ADD_FAILURE() << "commit accepted a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank-00001-of-00002.safetensors: missing at commit"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(dir + "/manifest.json"));
  EXPECT_EQ(read_latest(root), "step-0000020");

  // Re-preparing a complete step folder removes its manifest first: it reads as incomplete from then on.
  prepare_step_dir(root, "step-0000020");
  EXPECT_FALSE(fs::exists(root + "/step-0000020/manifest.json"));
  EXPECT_FALSE(fs::exists(root + "/step-0000020/training_state.json"));
}

TEST(CheckpointManifest, RetentionKeepsLastAndMilestones) {
  const std::string root = testing::make_temp_dir("ckpt-retention");
  for (int64_t s : {1, 2, 3, 4, 6, 7}) json_checkpoint(root, s);
  json_checkpoint(root, 5, /*commit=*/false);  // a crash's leftover, older than the newest complete
  json_checkpoint(root, 8, /*commit=*/false);  // possibly still being written: kept
  const auto deleted = apply_retention(root, /*keep_last=*/2, /*keep_every=*/3);
  EXPECT_EQ(deleted.size(), 4u);
  EXPECT_EQ(steps_on_disk(root), (std::vector<int64_t>{3, 6, 7, -8}));

  // keep_last counts complete checkpoints: newer incomplete folders do not push the newest complete out.
  json_checkpoint(root, 9, /*commit=*/false);
  apply_retention(root, 1, 0);
  EXPECT_EQ(steps_on_disk(root), (std::vector<int64_t>{7, -8, -9}));
  // keep_last 0 keeps every complete checkpoint.
  json_checkpoint(root, 10);
  json_checkpoint(root, 11);
  EXPECT_TRUE(apply_retention(root, 0, 0).size() == 2u);  // only the stale incomplete 8 and 9
  EXPECT_EQ(steps_on_disk(root), (std::vector<int64_t>{7, 10, 11}));

  // Nothing complete: nothing is deleted, not even incomplete folders.
  const std::string fresh = testing::make_temp_dir("ckpt-retention-fresh");
  json_checkpoint(fresh, 1, false);
  EXPECT_TRUE(apply_retention(fresh, 1, 0).empty());
  EXPECT_EQ(steps_on_disk(fresh), (std::vector<int64_t>{-1}));
}

TEST(AsyncCheckpointWriter, SubmitBlocksBeyondTheBound) {
  AsyncCheckpointWriter writer(2);
  std::atomic<bool> release{false};
  auto blocked_job = [&](uint64_t bytes) {
    return [&release, bytes] {
      while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      return FileRecord{"f" + std::to_string(bytes), bytes, "crc32c:00000000"};
    };
  };
  writer.submit("a", blocked_job(1));  // running
  writer.submit("b", blocked_job(2));  // queued: 2 outstanding, the bound
  EXPECT_EQ(writer.outstanding(), 2u);
  std::atomic<bool> third_submitted{false};
  std::thread submitter([&] {
    writer.submit("c", blocked_job(3));
    third_submitted = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(third_submitted.load()) << "submit returned while the queue was full";
  release = true;
  submitter.join();
  EXPECT_TRUE(third_submitted.load());
  const auto results = writer.wait_all();
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0].bytes, 1u);  // submission order
  EXPECT_EQ(results[2].bytes, 3u);
  EXPECT_EQ(writer.outstanding(), 0u);
}

TEST(AsyncCheckpointWriter, FirstErrorIsRethrownWithItsLabel) {
  AsyncCheckpointWriter writer(4);
  std::atomic<int> ran{0};
  writer.submit("ok-1", [&] { ++ran; return FileRecord{"a", 1, "crc32c:00000000"}; });
  writer.submit("step-0000005/rank-00001", [&]() -> FileRecord { ++ran; fail("disk full"); });
  writer.submit("second-failure", [&]() -> FileRecord { ++ran; throw std::runtime_error("later"); });
  writer.submit("ok-2", [&] { ++ran; return FileRecord{"b", 2, "crc32c:00000000"}; });
  try {
    writer.wait_all();
    ADD_FAILURE() << "wait_all did not rethrow";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "checkpoint write step-0000005/rank-00001: disk full");
  }
  EXPECT_EQ(ran.load(), 4);  // a failure does not stop the independent jobs after it
  // The error was collected: the writer is usable again.
  writer.submit("ok-3", [] { return FileRecord{"c", 3, "crc32c:00000000"}; });
  EXPECT_EQ(writer.wait_all().at(0).bytes, 3u);
}

TEST(AsyncCheckpointWriter, DestructorFinishesQueuedJobsAndCancelDropsThem) {
  std::atomic<int> ran{0};
  std::atomic<bool> release{false}, started{false};
  {
    AsyncCheckpointWriter writer(3);
    writer.submit("slow", [&] {
      started = true;
      while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      ++ran;
      return FileRecord{};
    });
    writer.submit("queued-1", [&] { ++ran; return FileRecord{}; });
    writer.submit("queued-2", [&] { ++ran; return FileRecord{}; });
    while (!started.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // "slow" is running
    EXPECT_EQ(writer.cancel_pending(), 2u);
    writer.submit("queued-3", [&] { ++ran; return FileRecord{}; });
    release = true;
  }  // destructor: runs queued-3, joins
  EXPECT_EQ(ran.load(), 2);
}

}  // namespace
}  // namespace mlaforge
