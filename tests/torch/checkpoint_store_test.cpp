// Sharded training checkpoints (trainer/checkpoint_store.h): slabs written by several "ranks" and read back
// with another split, bitwise; the manifest-last protocol (incomplete folders skipped), corruption caught
// and named (flipped byte, truncation, missing file, bad manifest, wrong fingerprint), the resume choice
// falling back past bad checkpoints, and `mlaforge inspect` on a checkpoint (cli/inspect_checkpoint.h).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "cli/inspect_checkpoint.h"
#include "core/error.h"
#include "core/mmap_file.h"
#include "tests/support/test_support.h"
#include "trainer/checkpoint_store.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace mlaforge {
namespace {

// Bitwise equality whatever the dtype: compare the raw bytes.
bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

#define EXPECT_HAS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

// The global tensors of a small "model" and how two ranks split them.
struct Globals {
  at::Tensor w32, w16, cube, norm, counter;
  at::Tensor rng0, rng1;
  Globals() {
    torch::manual_seed(3);
    w32 = torch::randn({7, 10});
    w16 = torch::randn({7, 10}).to(torch::kBFloat16);
    cube = torch::randn({4, 6, 5}).to(torch::kFloat64);
    norm = torch::randn({10});
    counter = torch::tensor(int64_t{123456789012});
    rng0 = torch::randint(256, {16}, torch::kUInt8);
    rng1 = torch::randint(256, {5}, torch::kUInt8);
  }
  // Rank 0: rows [0, 3) of the matrices, cube[:, 0:2], the replicated norm, the scalar, its RNG bytes.
  std::vector<Slab> rank0() const {
    return {{"w32", w32.narrow(0, 0, 3), {7, 10}, {0, 0}},
            {"w16", w16.narrow(0, 0, 3), {7, 10}, {0, 0}},
            {"cube", cube.narrow(1, 0, 2), {4, 6, 5}, {0, 0, 0}},  // not contiguous: the writer copies
            Slab::whole("norm", norm),
            Slab::whole("counter", counter),
            Slab::whole(rank_local_name("rng", 0), rng0)};
  }
  // Rank 1: rows [3, 7) of w32 as two slabs in one file (keys w32, w32#1), w16 rows [3, 7), cube[:, 2:6],
  // the norm again (a replica: overlapping slabs), its RNG bytes.
  std::vector<Slab> rank1() const {
    return {{"w32", w32.narrow(0, 3, 2), {7, 10}, {3, 0}},
            {"w32", w32.narrow(0, 5, 2), {7, 10}, {5, 0}},
            {"w16", w16.narrow(0, 3, 4), {7, 10}, {3, 0}},
            {"cube", cube.narrow(1, 2, 4), {4, 6, 5}, {0, 2, 0}},
            Slab::whole("norm", norm),
            Slab::whole(rank_local_name("rng", 1), rng1)};
  }
};

// Writes ROOT/step-N as two ranks would and commits it. Returns the step folder.
std::string write_checkpoint(const std::string& root, int64_t step, const Globals& g, const std::string& fp = "fp-A",
                             bool commit = true) {
  const std::string name = step_dir_name(step);
  const std::string dir = prepare_step_dir(root, name);
  std::vector<FileRecord> records = {write_rank_shards(dir, 0, 2, g.rank0()), write_rank_shards(dir, 1, 2, g.rank1())};
  records.push_back(write_json_file(dir, kTrainingStateFile,
                                    {{"step", step}, {"tokens", step * 1000}, {"layout", {{"tp", 2}, {"dp", 1}}}}));
  if (commit) commit_checkpoint(root, name, step, records, fp);
  return dir;
}

void flip_byte(const std::string& path, int64_t from_end) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(-from_end, std::ios::end);
  char c;
  f.get(c);
  f.seekp(-from_end, std::ios::end);
  f.put(static_cast<char>(c ^ 0x10));
}

const char* kRank1 = "rank-00001-of-00002.safetensors";

TEST(CheckpointStore, SlabsReassembleBitwiseUnderAnotherSplit) {
  const std::string root = testing::make_temp_dir("ckpt-slabs");
  Globals g;
  const std::string dir = write_checkpoint(root, 120, g);
  const CheckpointReader r = CheckpointReader::open(dir, /*verify_checksums=*/true, std::string("fp-A"));
  EXPECT_EQ(r.step(), 120);
  EXPECT_EQ(r.training_state().at("tokens"), 120000);
  EXPECT_EQ(r.names(), (std::vector<std::string>{"counter", "cube", "norm", "rng/rank0", "rng/rank1", "w16", "w32"}));
  EXPECT_EQ(r.global_shape("w16"), (std::vector<int64_t>{7, 10}));
  EXPECT_EQ(r.dtype("w16"), at::kBFloat16);
  EXPECT_EQ(r.slabs("w32").size(), 3u);
  EXPECT_EQ(r.files().size(), 3u);

  for (const char* name : {"w32", "w16"}) {
    const at::Tensor& src = std::string(name) == "w32" ? g.w32 : g.w16;
    EXPECT_TRUE(bitwise_equal(r.read(name), src)) << name;
    // Split along dim 1 instead of dim 0 (as a reader with another TP layout would), unevenly.
    EXPECT_TRUE(bitwise_equal(r.read(name, {0, 0}, {7, 4}), src.narrow(1, 0, 4))) << name;
    EXPECT_TRUE(bitwise_equal(r.read(name, {0, 4}, {7, 6}), src.narrow(1, 4, 6))) << name;
    // A region crossing both rank files (rows 2..4) and, for w32, both of rank 1's slabs (rows 3..6).
    EXPECT_TRUE(bitwise_equal(r.read(name, {2, 3}, {3, 5}), src.narrow(0, 2, 3).narrow(1, 3, 5))) << name;
    EXPECT_TRUE(bitwise_equal(r.read(name, {1, 0}, {6, 10}), src.narrow(0, 1, 6))) << name;
  }
  // Dtype conversion on read.
  EXPECT_TRUE(bitwise_equal(r.read("w16", at::kFloat), g.w16.to(at::kFloat)));
  // 3-d, split along the middle dimension, read back along the first and a box in the middle.
  EXPECT_TRUE(bitwise_equal(r.read("cube"), g.cube));
  EXPECT_TRUE(bitwise_equal(r.read("cube", {1, 1, 2}, {2, 4, 3}), g.cube.slice(0, 1, 3).slice(1, 1, 5).slice(2, 2, 5)));
  // Replicated slabs overlap: still read, once.
  EXPECT_TRUE(bitwise_equal(r.read("norm"), g.norm));
  EXPECT_TRUE(bitwise_equal(r.read("counter"), g.counter));
  EXPECT_EQ(r.read("counter").item<int64_t>(), 123456789012);
  EXPECT_TRUE(bitwise_equal(r.read("rng/rank0"), g.rng0));
  EXPECT_TRUE(bitwise_equal(r.read("rng/rank1"), g.rng1));

  // Errors name the tensor.
  EXPECT_HAS(error_of([&] { r.read("w33"); }), "no tensor 'w33' (did you mean 'w32'?)");
  EXPECT_HAS(error_of([&] { r.read("w32", {5, 0}, {3, 10}); }), "tensor 'w32': region offsets [5, 0] sizes [3, 10] exceeds");
}

TEST(CheckpointStore, UncoveredRegionIsAnErrorNamingTheTensor) {
  const std::string root = testing::make_temp_dir("ckpt-uncovered");
  const at::Tensor w = torch::arange(70, torch::kFloat32).reshape({7, 10});
  const std::string dir = prepare_step_dir(root, "step-0000001");
  // Rows 0..2 and 5..6 stored, rows 3..4 lost (a rank that held them was not written).
  std::vector<FileRecord> recs = {
      write_rank_shards(dir, 0, 2, {{"w", w.narrow(0, 0, 3), {7, 10}, {0, 0}}}),
      write_rank_shards(dir, 1, 2, {{"w", w.narrow(0, 5, 2), {7, 10}, {5, 0}}, {"w", w.narrow(0, 5, 2), {7, 10}, {5, 0}}})};
  commit_checkpoint(root, "step-0000001", 1, recs, "");
  const CheckpointReader r = CheckpointReader::open(dir);
  EXPECT_TRUE(bitwise_equal(r.read("w", {0, 2}, {3, 8}), w.narrow(0, 0, 3).narrow(1, 2, 8)));
  EXPECT_TRUE(bitwise_equal(r.read("w", {5, 0}, {2, 10}), w.narrow(0, 5, 2)));  // duplicate slabs (mask path)
  const std::string e = error_of([&] { r.read("w"); });
  EXPECT_HAS(e, "tensor 'w': region offsets [0, 0] sizes [7, 10] is not fully covered");
  EXPECT_HAS(e, "rank-00000-of-00002.safetensors offsets [0, 0] shape [3, 10]");
  EXPECT_HAS(error_of([&] { r.read("w", {4, 0}, {2, 10}); }), "not fully covered");  // overlapping pieces, gap
  EXPECT_HAS(error_of([&] { r.read("w", {2, 0}, {2, 1}); }), "not fully covered");   // disjoint pieces, gap
}

TEST(CheckpointStore, WriterRejectsInconsistentSlabs) {
  const std::string dir = testing::make_temp_dir("ckpt-badslab") + "/step-0000001";
  const at::Tensor t = torch::zeros({3, 4});
  EXPECT_HAS(error_of([&] { write_rank_shards(dir, 0, 1, {{"w", t, {7, 4}, {5, 0}}}); }),
             "slab 'w': offsets [5, 0] + shape [3, 4] exceed global_shape [7, 4]");
  EXPECT_HAS(error_of([&] { write_rank_shards(dir, 0, 1, {{"w", t, {7}, {0}}}); }), "slab 'w': data of shape [3, 4]");
  EXPECT_HAS(error_of([&] { write_rank_shards(dir, 2, 2, {Slab::whole("w", t)}); }), "rank 2 of world size 2");
  EXPECT_HAS(error_of([&] { write_rank_shards(dir, 0, 1, {Slab::whole("w#1", t)}); }), "contain no '#'");
  EXPECT_HAS(error_of([&] { write_rank_shards(dir, 0, 1, {Slab::whole("c", torch::zeros({2}, torch::kComplexFloat))}); }),
             "slab 'c'");
}

TEST(CheckpointStore, CorruptionIsCaughtAndNamesTheFile) {
  const std::string root = testing::make_temp_dir("ckpt-corrupt");
  Globals g;
  const std::string dir = write_checkpoint(root, 5, g);
  const std::string rank1 = dir + "/" + kRank1;

  // Flipped byte in the tensor data: only the checksum can see it.
  flip_byte(rank1, 3);
  std::string e = error_of([&] { CheckpointReader::open(dir, true); });
  EXPECT_HAS(e, rank1 + ": checksum crc32c:");
  EXPECT_HAS(e, "(file corrupt)");
  EXPECT_NO_THROW(CheckpointReader::open(dir, /*verify_checksums=*/false));  // sizes still match
  flip_byte(rank1, 3);  // undo
  EXPECT_NO_THROW(CheckpointReader::open(dir, true));

  // Truncated.
  const auto size = fs::file_size(rank1);
  fs::resize_file(rank1, size - 100);
  e = error_of([&] { CheckpointReader::open(dir, false); });
  EXPECT_HAS(e, rank1 + ": " + std::to_string(size - 100) + " bytes on disk, manifest.json lists " + std::to_string(size));
  // Missing.
  fs::remove(rank1);
  EXPECT_HAS(error_of([&] { CheckpointReader::open(dir, false); }), rank1 + ": missing (listed in manifest.json)");

  // Wrong model fingerprint.
  const std::string dir2 = write_checkpoint(root, 6, g, "fp-A");
  e = error_of([&] { CheckpointReader::open(dir2, true, std::string("fp-B")); });
  EXPECT_HAS(e, "step-0000006: checkpoint was written for model fingerprint 'fp-A', this run's model is 'fp-B'");
  // Bad manifest JSON.
  std::ofstream(dir2 + "/manifest.json") << "{\"format\": \"mlaforge-checkpoint\", ";
  EXPECT_HAS(error_of([&] { CheckpointReader::open(dir2, true); }), dir2 + "/manifest.json: not valid JSON");
  // No manifest at all.
  fs::remove(dir2 + "/manifest.json");
  EXPECT_HAS(error_of([&] { CheckpointReader::open(dir2, true); }),
             dir2 + "/manifest.json: missing: the checkpoint is incomplete");
}

TEST(CheckpointStore, ResumeSkipsIncompleteAndCorruptCheckpoints) {
  const std::string root = testing::make_temp_dir("ckpt-resume");
  Globals g;
  std::vector<std::string> warnings;
  EXPECT_FALSE(find_resume_checkpoint(root, "fp-A", &warnings).has_value());  // fresh run
  EXPECT_TRUE(warnings.empty());

  write_checkpoint(root, 100, g);
  const std::string dir200 = write_checkpoint(root, 200, g);
  EXPECT_EQ(read_text_file(root + "/latest"), "step-0000200\n");
  write_checkpoint(root, 300, g, "fp-A", /*commit=*/false);  // rank files, no manifest: a crash mid-save
  EXPECT_EQ(read_latest(root), "step-0000200");              // latest only moves on commit
  EXPECT_EQ(find_resume_checkpoint(root, "fp-A", &warnings), dir200);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_HAS(warnings[0], "step-0000300: skipped, not a usable checkpoint");

  // Corrupt the newest complete one: the resume falls back to step 100, naming the bad file.
  flip_byte(dir200 + "/" + kRank1, 7);
  warnings.clear();
  EXPECT_EQ(find_resume_checkpoint(root, "fp-A", &warnings), root + "/step-0000100");
  ASSERT_EQ(warnings.size(), 3u);
  EXPECT_HAS(warnings[0], "step-0000300");
  EXPECT_HAS(warnings[1], dir200 + "/" + kRank1 + ": checksum");
  EXPECT_HAS(warnings[2], "latest names step-0000200 (not usable); resuming from step-0000100");
  // Without checksums a flipped byte goes unseen (the sizes match): the documented trade-off.
  EXPECT_EQ(find_resume_checkpoint(root, "fp-A", nullptr, /*verify_checksums=*/false), dir200);

  // A usable checkpoint of another model is an error, not a silent fallback.
  EXPECT_HAS(error_of([&] { find_resume_checkpoint(root, "fp-OTHER"); }), "model fingerprint 'fp-A'");
  // A step folder given directly must itself be good.
  EXPECT_EQ(find_resume_checkpoint(root + "/step-0000100", "fp-A"), root + "/step-0000100");
  EXPECT_HAS(error_of([&] { find_resume_checkpoint(dir200, "fp-A"); }), "checksum");

  // Retention after a new good checkpoint: keep_last 2 keeps 400 and 200 (complete by its manifest; retention
  // does not read checksums, so the corrupt 200 counts and 100 goes), and removes the stale incomplete 300.
  write_checkpoint(root, 400, g);
  apply_retention(root, 2, 0);
  std::vector<std::string> left;
  for (const auto& d : list_checkpoints(root)) left.push_back(d.name);
  EXPECT_EQ(left, (std::vector<std::string>{"step-0000200", "step-0000400"}));
}

TEST(CheckpointStore, AsyncWriterWritesRankFiles) {
  const std::string root = testing::make_temp_dir("ckpt-async");
  Globals g;
  const std::string dir = prepare_step_dir(root, step_dir_name(9));
  AsyncCheckpointWriter writer(1);
  // The host copies the jobs capture are what the trainer makes before submitting.
  writer.submit("rank0", [dir, slabs = g.rank0()] { return write_rank_shards(dir, 0, 2, slabs); });
  writer.submit("rank1", [dir, slabs = g.rank1()] { return write_rank_shards(dir, 1, 2, slabs); });
  std::vector<FileRecord> recs = writer.wait_all();
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[1].file, kRank1);
  EXPECT_EQ(recs[1], checksum_file(dir, kRank1));  // checksum from memory == checksum of the file
  commit_checkpoint(root, step_dir_name(9), 9, recs, "fp");
  EXPECT_TRUE(bitwise_equal(CheckpointReader::open(dir).read("w32"), g.w32));
  // A job that fails (bad slab) surfaces in wait_all with its label.
  writer.submit("rank7", [dir] { return write_rank_shards(dir, 7, 2, {}); });
  EXPECT_HAS(error_of([&] { writer.wait_all(); }), "checkpoint write rank7: ");
}

TEST(CheckpointStore, InspectReportsEveryFile) {
  const std::string root = testing::make_temp_dir("ckpt-inspect");
  Globals g;
  write_checkpoint(root, 10, g);
  const std::string dir = write_checkpoint(root, 20, g);
  write_checkpoint(root, 30, g, "fp-A", false);
  EXPECT_TRUE(cli::is_checkpoint_path(root));
  EXPECT_TRUE(cli::is_checkpoint_path(dir));
  EXPECT_TRUE(cli::is_checkpoint_path(root + "/step-0000030"));
  EXPECT_FALSE(cli::is_checkpoint_path(testing::make_temp_dir("ckpt-empty")));

  json j = cli::describe_checkpoint(root);
  EXPECT_EQ(j["checkpoint"], dir);
  EXPECT_EQ(j["step"], 20);
  EXPECT_EQ(j["ok"], true);
  EXPECT_EQ(j["files_ok"], 3);
  EXPECT_EQ(j["run"]["latest"], "step-0000020");
  EXPECT_EQ(j["run"]["checkpoints"].size(), 3u);
  EXPECT_EQ(j["run"]["checkpoints"][2]["complete"], false);
  EXPECT_EQ(j["training_state"]["layout"]["tp"], 2);
  EXPECT_EQ(j["tensors"]["count"], 7);
  EXPECT_EQ(j["tensors"]["slabs"], 12);
  // 2 x 70 x 4 (w32) + 70 x 2 (w16) + 120 x 8 (cube) + 2 x 10 x 4 (norm, replicated) + 8 + 16 + 5
  EXPECT_EQ(j["tensors"]["bytes"], 280 + 140 + 960 + 80 + 8 + 16 + 5);

  flip_byte(dir + "/" + kRank1, 1);
  j = cli::describe_checkpoint(dir);
  EXPECT_EQ(j["ok"], false);
  EXPECT_EQ(j["files_ok"], 2);
  for (const auto& f : j["files"]) EXPECT_EQ(f["status"], f["file"] == kRank1 ? "FAILED" : "OK") << f.dump();
  EXPECT_HAS(j["first_problem"].get<std::string>(), kRank1);
  EXPECT_HAS(error_of([&] { cli::describe_checkpoint(root + "/step-0000030"); }), "missing: the checkpoint is incomplete");
}

}  // namespace
}  // namespace mlaforge
