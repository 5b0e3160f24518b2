#include "model/safetensors.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <numeric>

#include "core/error.h"
#include "tests/support/test_support.h"

namespace fs = std::filesystem;

namespace mlaforge {
namespace {

// ---- helpers ---------------------------------------------------------------------------------------

std::string le64(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

// A safetensors file image with the given header text (unpadded) and `data_bytes` bytes of data.
std::string raw_file(const std::string& header, size_t data_bytes) {
  std::string out = le64(header.size()) + header;
  for (size_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<char>(i * 7));
  return out;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The message of the mlaforge::Error `fn` throws ("" and a test failure if it does not throw).
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected mlaforge::Error";
  return "";
}

void expect_contains(const std::string& text, std::initializer_list<std::string> parts) {
  for (const std::string& part : parts)
    EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

// Parses an in-memory file image named bad.safetensors and returns the error message.
std::string parse_error(const std::string& header, size_t data_bytes) {
  const std::string bytes = raw_file(header, data_bytes);
  return error_of([&] {
    parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "bad.safetensors");
  });
}

std::vector<uint8_t> pattern_bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(seed + i * 13);
  return out;
}

// Tensors of several dtypes and shapes (including a scalar and an empty one) over owned buffers.
struct Sample {
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<TensorToWrite> tensors;

  void add(const std::string& name, DType dtype, std::vector<int64_t> shape) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    buffers.push_back(
        pattern_bytes(static_cast<size_t>(numel) * dtype_size(dtype), static_cast<uint8_t>(buffers.size())));
    tensors.push_back({name, dtype, std::move(shape), nullptr});
  }
  // Pointers are taken last: `buffers` may reallocate while tensors are added.
  const std::vector<TensorToWrite>& finish() {
    for (size_t i = 0; i < tensors.size(); ++i) tensors[i].data = buffers[i].data();
    return tensors;
  }
};

Sample mixed_sample() {
  Sample s;
  s.add("w.f32", DType::F32, {2, 3});
  s.add("w.f16", DType::F16, {5});  // 10 bytes: the next tensor starts unaligned, as the caller asked
  s.add("w.bf16", DType::BF16, {3, 1});
  s.add("w.i64", DType::I64, {2});
  s.add("scalar", DType::F32, {});
  s.add("empty", DType::F32, {0, 4});
  return s;
}

void expect_same_tensor(const TensorToWrite& want, const TensorInfo& got, const uint8_t* data) {
  EXPECT_EQ(got.name, want.name);
  EXPECT_EQ(got.dtype, want.dtype) << want.name;
  EXPECT_EQ(got.shape, want.shape) << want.name;
  int64_t numel = 1;
  for (int64_t d : want.shape) numel *= d;
  const size_t bytes = static_cast<size_t>(numel) * dtype_size(want.dtype);
  ASSERT_EQ(got.nbytes(), bytes) << want.name;
  EXPECT_EQ(std::memcmp(data, want.data, bytes), 0) << want.name;
}

// ---- writer + reader round trip ----------------------------------------------------------------------

TEST(Safetensors, RoundTripPreservesBytesShapesAndMetadata) {
  const std::string dir = testing::make_temp_dir("st-roundtrip");
  Sample sample = mixed_sample();
  const auto& tensors = sample.finish();
  const std::string path = dir + "/rt.safetensors";
  write_safetensors(path, tensors, {{"format", "pt"}, {"note", "round trip"}});
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  SafetensorsFile file(path);
  const SafetensorsHeader& h = file.header();
  ASSERT_EQ(h.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo* info = h.find(tensors[i].name);
    ASSERT_NE(info, nullptr) << tensors[i].name;
    expect_same_tensor(tensors[i], *info, file.tensor_data(*info));
  }
  EXPECT_EQ(h.metadata, (std::map<std::string, std::string>{{"format", "pt"}, {"note", "round trip"}}));
  EXPECT_EQ(h.find("absent"), nullptr);
  EXPECT_EQ(h.find("scalar")->numel(), 1);
  EXPECT_EQ(h.find("empty")->numel(), 0);

  // Laid out in the given order, header padded with spaces to a multiple of 8, keys in order.
  EXPECT_EQ(h.data_start % 8, 0u);
  EXPECT_EQ(h.tensors.front().name, "w.f32");
  EXPECT_EQ(h.find("w.f16")->begin, 24u);
  EXPECT_EQ(h.find("w.bf16")->begin, 34u);
  const std::string bytes = read_bytes(path);
  EXPECT_EQ(bytes.size(), h.data_start + 24 + 10 + 6 + 16 + 4);
  const std::string header = bytes.substr(8, h.data_start - 8);
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"pt\",\"note\":\"round trip\"},\"w.f32\":"
                         "{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},",
                         0),
            0u)
      << header;
  EXPECT_LT(header.find("\"w.f16\""), header.find("\"w.bf16\""));
  EXPECT_EQ(header.find_last_not_of(' '), header.find_last_of('}'));
}

TEST(Safetensors, WriterRejectsInvalidInput) {
  const std::string dir = testing::make_temp_dir("st-writer-bad");
  const float value = 1.0f;
  const std::string path = dir + "/x.safetensors";
  expect_contains(error_of([&] {
                    write_safetensors(path, {{"a", DType::F32, {1}, &value}, {"a", DType::F32, {1}, &value}});
                  }),
                  {path, "tensor 'a' given twice"});
  expect_contains(error_of([&] {
                    write_safetensors(path, {{"b", DType::F32, {-1}, &value}});
                  }),
                  {path, "tensor 'b'", "negative"});
  expect_contains(error_of([&] {
                    write_safetensors(path, {{"c", DType::F32, {2}, nullptr}});
                  }),
                  {path, "tensor 'c' has no data"});
  expect_contains(error_of([&] {
                    write_safetensors(path, {{"__metadata__", DType::F32, {1}, &value}});
                  }),
                  {path, "reserved"});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(Safetensors, EmptyFileHasNoTensors) {
  const std::string dir = testing::make_temp_dir("st-empty");
  write_safetensors(dir + "/e.safetensors", {});
  SafetensorsFile file(dir + "/e.safetensors");
  EXPECT_TRUE(file.header().tensors.empty());
  EXPECT_TRUE(file.header().metadata.empty());
  EXPECT_EQ(read_bytes(dir + "/e.safetensors"), le64(8) + "{}      ");
}

// ---- interop with the reference implementation ----------------------------------------------------

TEST(Safetensors, ReadsTinyRandomLlamaAsset) {
  REQUIRE_ASSET("models/tiny-random-llama-2/model.safetensors");
  const std::string path = testing::asset_path("models/tiny-random-llama-2/model.safetensors");
  SafetensorsFile file(path);
  const SafetensorsHeader& h = file.header();
  EXPECT_EQ(h.tensors.size(), 21u);
  ASSERT_NE(h.find("model.embed_tokens.weight"), nullptr);
  EXPECT_EQ(h.find("model.embed_tokens.weight")->shape, (std::vector<int64_t>{3000, 16}));
  EXPECT_EQ(h.find("model.embed_tokens.weight")->dtype, DType::BF16);
  ASSERT_NE(h.find("model.layers.0.self_attn.q_proj.weight"), nullptr);
  EXPECT_EQ(h.find("model.layers.0.self_attn.q_proj.weight")->shape, (std::vector<int64_t>{16, 16}));
  uint64_t total = 0;
  for (const TensorInfo& t : h.tensors) {
    EXPECT_EQ(t.dtype, DType::BF16) << t.name;
    total += t.nbytes();
  }
  EXPECT_EQ(total, fs::file_size(path) - h.data_start);

  auto ckpt = SafetensorsCheckpoint::open(fs::path(path).parent_path().string());
  EXPECT_EQ(ckpt.names().size(), 21u);
  EXPECT_EQ(ckpt.total_bytes(), total);
  const auto ref = ckpt.get("model.embed_tokens.weight");
  EXPECT_EQ(*ref.file, path);
  EXPECT_EQ(std::memcmp(ref.data, file.tensor_data(*h.find("model.embed_tokens.weight")), ref.info->nbytes()), 0);
}

// Values as written by tests/python/refs_safetensors.py.
TEST(Safetensors, ReadsFileWrittenByPython) {
  REQUIRE_TEST_DATA("safetensors/py_written.safetensors");
  SafetensorsFile file(testing::test_data_dir() + "/safetensors/py_written.safetensors");
  const SafetensorsHeader& h = file.header();
  EXPECT_EQ(h.metadata,
            (std::map<std::string, std::string>{{"format", "pt"}, {"written_by", "refs_safetensors"}}));
  ASSERT_EQ(h.tensors.size(), 6u);

  const TensorInfo* f32 = h.find("f32");
  ASSERT_NE(f32, nullptr);
  EXPECT_EQ(f32->shape, (std::vector<int64_t>{3, 4}));
  for (int i = 0; i < 12; ++i) {
    float v;
    std::memcpy(&v, file.tensor_data(*f32) + 4 * i, 4);
    EXPECT_EQ(v, i * 0.5f - 1.0f) << i;
  }
  const TensorInfo* f16 = h.find("f16");
  ASSERT_NE(f16, nullptr);
  const float f16_want[] = {1.0f, -2.0f, 0.5f, 65504.0f, 6.103515625e-05f};
  for (int i = 0; i < 5; ++i) {
    uint16_t bits;
    std::memcpy(&bits, file.tensor_data(*f16) + 2 * i, 2);
    EXPECT_EQ(half_to_float(bits), f16_want[i]) << i;
  }
  const TensorInfo* bf16 = h.find("bf16");
  ASSERT_NE(bf16, nullptr);
  EXPECT_EQ(bf16->shape, (std::vector<int64_t>{2, 2}));
  const float bf16_want[] = {3.140625f, -1.0f, 0.0f, 256.0f};
  for (int i = 0; i < 4; ++i) {
    uint16_t bits;
    std::memcpy(&bits, file.tensor_data(*bf16) + 2 * i, 2);
    EXPECT_EQ(bf16_to_float(bits), bf16_want[i]) << i;
  }
  const TensorInfo* i64 = h.find("i64");
  ASSERT_NE(i64, nullptr);
  int64_t ints[3];
  std::memcpy(ints, file.tensor_data(*i64), sizeof(ints));
  EXPECT_EQ(ints[0], -1);
  EXPECT_EQ(ints[1], 0);
  EXPECT_EQ(ints[2], int64_t{1} << 40);
  EXPECT_TRUE(h.find("scalar")->shape.empty());
  float scalar;
  std::memcpy(&scalar, file.tensor_data(*h.find("scalar")), 4);
  EXPECT_EQ(scalar, 7.0f);
  EXPECT_EQ(h.find("empty")->shape, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(h.find("empty")->nbytes(), 0u);
}

// The other direction: the reference library loads a file we wrote (via tests/python/dump_safetensors.py).
TEST(Safetensors, PythonReadsFileWeWrite) {
  const std::string python = MLAFORGE_PYTHON;
  if (python.empty()) GTEST_SKIP() << "MLAFORGE_PYTHON not set";
  const std::string dir = testing::make_temp_dir("st-pyread");
  const float f32[] = {1.5f, -2.25f, 3.0f, 1e-3f, 0.0f, -0.0f};
  const uint16_t f16[] = {float_to_half(1.0f), float_to_half(-0.5f), float_to_half(65504.0f)};
  const uint16_t bf16[] = {float_to_bf16(3.140625f), float_to_bf16(-256.0f)};
  const int64_t i64[] = {-7, int64_t{1} << 50};
  const std::vector<TensorToWrite> tensors = {
      {"a.f16", DType::F16, {3}, f16},  // odd size: F32 after it is unaligned
      {"b.f32", DType::F32, {2, 3}, f32},
      {"c.bf16", DType::BF16, {1, 2}, bf16},
      {"d.i64", DType::I64, {2}, i64}};
  write_safetensors(dir + "/ours.safetensors", tensors, {{"format", "pt"}, {"by", "mlaforge"}});

  const std::string command = "'" + python + "' '" + testing::source_dir() +
                              "/tests/python/dump_safetensors.py' '" + dir + "/ours.safetensors' '" + dir +
                              "/dump.json'";
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  const auto dump = nlohmann::json::parse(read_bytes(dir + "/dump.json"));
  EXPECT_EQ(dump["metadata"], (nlohmann::json{{"format", "pt"}, {"by", "mlaforge"}}));
  const auto& t = dump["tensors"];
  ASSERT_EQ(t.size(), 4u);
  EXPECT_EQ(t["a.f16"]["dtype"], "F16");
  EXPECT_EQ(t["a.f16"]["values"], (nlohmann::json{1.0, -0.5, 65504.0}));
  EXPECT_EQ(t["b.f32"]["shape"], (nlohmann::json{2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(t["b.f32"]["values"][i].get<double>(), static_cast<double>(f32[i])) << i;
  EXPECT_EQ(t["c.bf16"]["dtype"], "BF16");
  EXPECT_EQ(t["c.bf16"]["values"], (nlohmann::json{3.140625, -256.0}));
  EXPECT_EQ(t["d.i64"]["values"], (nlohmann::json{-7, int64_t{1} << 50}));
}

// ---- sharding and checkpoints ----------------------------------------------------------------------------

TEST(Safetensors, ShardedWriteSplitsAndCheckpointReadsBack) {
  const std::string dir = testing::make_temp_dir("st-sharded");
  Sample s;
  s.add("layers.0.w", DType::F32, {10, 10});   // 400 bytes
  s.add("layers.0.b", DType::F32, {10});       // 40  -> shard 1: 440
  s.add("layers.1.w", DType::BF16, {10, 20});  // 400 -> shard 2 (440 + 400 > 500)
  s.add("big", DType::F32, {200});             // 800, larger than the limit: a shard of its own (3)
  s.add("tail", DType::I64, {4});              // 32  -> shard 4
  const auto& tensors = s.finish();
  const auto result = write_sharded_safetensors(dir, "model", tensors, 500, {{"format", "pt"}});

  ASSERT_EQ(result.files.size(), 4u);
  EXPECT_EQ(result.files[0], dir + "/model-00001-of-00004.safetensors");
  EXPECT_EQ(result.files[3], dir + "/model-00004-of-00004.safetensors");
  EXPECT_EQ(result.total_bytes, 400u + 40 + 400 + 800 + 32);
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  EXPECT_EQ(SafetensorsFile(result.files[2]).header().tensors.size(), 1u);
  EXPECT_EQ(SafetensorsFile(result.files[2]).header().tensors[0].name, "big");

  const auto index = nlohmann::json::parse(read_bytes(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], result.total_bytes);
  EXPECT_EQ(index["weight_map"].size(), 5u);
  EXPECT_EQ(index["weight_map"]["layers.0.b"], "model-00001-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["layers.1.w"], "model-00002-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["tail"], "model-00004-of-00004.safetensors");

  const auto ckpt = SafetensorsCheckpoint::open(dir);
  EXPECT_EQ(ckpt.num_files(), 4u);
  EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"big", "layers.0.b", "layers.0.w", "layers.1.w", "tail"}));
  EXPECT_EQ(ckpt.total_bytes(), result.total_bytes);
  EXPECT_EQ(ckpt.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  for (const TensorToWrite& t : tensors) {
    ASSERT_TRUE(ckpt.contains(t.name));
    const auto ref = ckpt.get(t.name);
    expect_same_tensor(t, *ref.info, ref.data);
  }
  EXPECT_EQ(*ckpt.get("big").file, dir + "/model-00003-of-00004.safetensors");
  // The index file itself is accepted as a path too.
  EXPECT_EQ(SafetensorsCheckpoint::open(dir + "/model.safetensors.index.json").names().size(), 5u);
}

// The streaming writer (tensor bytes spilled to a file per shard, copied behind the header) writes the
// same bytes as the in-memory sharded writer, and leaves no temporary or spill file behind.
TEST(Safetensors, StreamingWriterEqualsShardedWriteByteForByte) {
  const std::string whole = testing::make_temp_dir("st-whole"), streamed = testing::make_temp_dir("st-streamed");
  Sample s;
  s.add("layers.0.w", DType::F32, {10, 10});
  s.add("layers.0.b", DType::F32, {10});
  s.add("layers.1.w", DType::BF16, {10, 20});
  s.add("empty", DType::F32, {0, 3});
  s.add("big", DType::F32, {200});
  s.add("tail", DType::I64, {4});
  const auto& tensors = s.finish();
  const auto expected = write_sharded_safetensors(whole, "model", tensors, 500, {{"format", "pt"}});
  StreamingShardWriter writer(streamed, "model", 500, {{"format", "pt"}});
  for (const TensorToWrite& t : tensors) writer.add(t.name, t.dtype, t.shape, t.data);
  const auto result = writer.finish();
  ASSERT_EQ(result.files.size(), expected.files.size());
  EXPECT_EQ(result.total_bytes, expected.total_bytes);
  for (size_t i = 0; i < result.files.size(); ++i) {
    EXPECT_EQ(fs::path(result.files[i]).filename(), fs::path(expected.files[i]).filename());
    EXPECT_EQ(read_bytes(result.files[i]), read_bytes(expected.files[i])) << result.files[i];
  }
  EXPECT_EQ(read_bytes(streamed + "/model.safetensors.index.json"), read_bytes(whole + "/model.safetensors.index.json"));
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(streamed)) {
    EXPECT_NE(entry.path().filename().string().front(), '.') << "left behind: " << entry.path();
    ++files;
  }
  EXPECT_EQ(files, result.files.size() + 1);  // shards + index
}

TEST(Safetensors, ShardedWriteThatFitsWritesOneFileAndRemovesStaleShards) {
  const std::string dir = testing::make_temp_dir("st-oneshard");
  Sample s = mixed_sample();
  const auto& tensors = s.finish();
  write_sharded_safetensors(dir, "model", tensors, 16);  // several shards first
  ASSERT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
  write_bytes(dir + "/other-00001-of-00002.safetensors", "not ours");  // another prefix: left alone

  const auto result = write_sharded_safetensors(dir, "model", tensors, 1 << 20);
  EXPECT_EQ(result.files, std::vector<std::string>{dir + "/model.safetensors"});
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir)) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"model.safetensors", "other-00001-of-00002.safetensors"}));
  const auto ckpt = SafetensorsCheckpoint::open(dir);
  EXPECT_EQ(ckpt.names().size(), tensors.size());
  EXPECT_EQ(ckpt.total_bytes(), result.total_bytes);
}

TEST(Safetensors, CheckpointOpensFileOrLoneSafetensorsInFolder) {
  const std::string dir = testing::make_temp_dir("st-lone");
  const float v[2] = {1, 2};
  write_safetensors(dir + "/weights.safetensors", {{"x", DType::F32, {2}, v}});
  EXPECT_EQ(SafetensorsCheckpoint::open(dir).names(), std::vector<std::string>{"x"});
  EXPECT_EQ(SafetensorsCheckpoint::open(dir + "/weights.safetensors").names(), std::vector<std::string>{"x"});

  write_safetensors(dir + "/second.safetensors", {{"y", DType::F32, {2}, v}});
  expect_contains(error_of([&] { SafetensorsCheckpoint::open(dir); }), {dir, "found 2 *.safetensors files"});
  expect_contains(error_of([&] { SafetensorsCheckpoint::open(dir + "/nope"); }), {dir + "/nope", "no such file"});
}

TEST(Safetensors, CheckpointGetNamesMissingTensorAndSuggests) {
  const std::string dir = testing::make_temp_dir("st-missing");
  const float v[2] = {1, 2};
  write_safetensors(dir + "/model.safetensors", {{"model.layers.0.mlp.up_proj.weight", DType::F32, {2}, v},
                                                 {"lm_head.weight", DType::F32, {2}, v}});
  const auto ckpt = SafetensorsCheckpoint::open(dir);
  expect_contains(
      error_of([&] { ckpt.get("model.layers.0.mlp.upproj.weight"); }),
      {dir, "no tensor 'model.layers.0.mlp.upproj.weight'", "did you mean 'model.layers.0.mlp.up_proj.weight'"});
  expect_contains(error_of([&] { ckpt.get("layers.0.mlp.up_proj.weight"); }),
                  {"did you mean 'model.layers.0.mlp.up_proj.weight'"});
  const std::string unrelated = error_of([&] { ckpt.get("totally.different"); });
  expect_contains(unrelated, {"no tensor 'totally.different'"});
  EXPECT_EQ(unrelated.find("did you mean"), std::string::npos) << unrelated;
  EXPECT_FALSE(ckpt.contains("totally.different"));
}

// Two shards a.safetensors {a1, a2} and b.safetensors {b1}, with the given index text.
std::string sharded_folder_with_index(const std::string& tag, const std::string& index_text) {
  const std::string dir = testing::make_temp_dir(tag);
  const float v[2] = {1, 2};
  write_safetensors(dir + "/a.safetensors", {{"a1", DType::F32, {2}, v}, {"a2", DType::F32, {1}, v}});
  write_safetensors(dir + "/b.safetensors", {{"b1", DType::F32, {2}, v}});
  write_bytes(dir + "/model.safetensors.index.json", index_text);
  return dir;
}

TEST(Safetensors, IndexNamingMissingShardIsRejected) {
  const std::string dir = sharded_folder_with_index(
      "st-idx-shard", R"({"weight_map": {"a1": "a.safetensors", "a2": "a.safetensors", "b1": "c.safetensors"}})");
  expect_contains(error_of([&] { SafetensorsCheckpoint::open(dir); }),
                  {dir + "/model.safetensors.index.json", "shard 'c.safetensors'", "tensor 'b1'", "not found"});
}

TEST(Safetensors, IndexNamingTensorAbsentFromShardIsRejected) {
  const std::string dir = sharded_folder_with_index(
      "st-idx-absent", R"({"weight_map": {"a1": "a.safetensors", "a2": "b.safetensors", "b1": "b.safetensors"}})");
  // a2 really lives in a.safetensors; the index claims b.safetensors.
  const std::string message = error_of([&] { SafetensorsCheckpoint::open(dir); });
  expect_contains(message, {"model.safetensors.index.json", "tensor 'a2'", "'b.safetensors'", "no such tensor"});
}

TEST(Safetensors, TensorInTwoShardsIsRejected) {
  const std::string dir =
      sharded_folder_with_index("st-idx-dup", R"({"weight_map": {"a1": "a.safetensors", "b1": "b.safetensors"}})");
  const float v[2] = {1, 2};
  write_safetensors(dir + "/b.safetensors", {{"b1", DType::F32, {2}, v}, {"a1", DType::F32, {2}, v}});
  expect_contains(error_of([&] { SafetensorsCheckpoint::open(dir); }),
                  {dir, "tensor 'a1' appears in two files", "a.safetensors", "b.safetensors"});
}

TEST(Safetensors, IndexWithBadShardNameOrJsonIsRejected) {
  std::string dir = sharded_folder_with_index("st-idx-escape", R"({"weight_map": {"a1": "../a.safetensors"}})");
  expect_contains(error_of([&] { SafetensorsCheckpoint::open(dir); }),
                  {"'../a.safetensors'", "inside the folder"});
  dir = sharded_folder_with_index("st-idx-json", R"({"weight_map": )");
  expect_contains(error_of([&] { SafetensorsCheckpoint::open(dir); }),
                  {"model.safetensors.index.json", "not valid JSON"});
  dir = sharded_folder_with_index("st-idx-type", R"({"weight_map": {"a1": 3}})");
  expect_contains(error_of([&] { SafetensorsCheckpoint::open(dir); }),
                  {"weight_map['a1']", "expected a file name"});
}

// ---- header validation: one test per rule ------------------------------------------------------------

const std::string kGood = R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                          R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}})";

TEST(SafetensorsValidation, BaselineIsValid) {
  const std::string bytes = raw_file(kGood, 22);
  const auto h = parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "good");
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[1].name, "b");
  EXPECT_EQ(h.tensors[1].begin, 16u);
  EXPECT_EQ(h.data_start, 8 + kGood.size());
  EXPECT_EQ(h.metadata.at("k"), "v");
}

TEST(SafetensorsValidation, FileShorterThanEightBytes) {
  const std::string dir = testing::make_temp_dir("st-short");
  write_bytes(dir + "/short.safetensors", "abc");
  expect_contains(error_of([&] { SafetensorsFile f(dir + "/short.safetensors"); }),
                  {dir + "/short.safetensors", "3 bytes is too short"});
  write_bytes(dir + "/empty.safetensors", "");
  expect_contains(error_of([&] { SafetensorsFile f(dir + "/empty.safetensors"); }),
                  {"empty.safetensors", "too short"});
}

TEST(SafetensorsValidation, TruncatedFileWithHeaderLengthBeyondEnd) {
  const std::string dir = testing::make_temp_dir("st-trunc");
  const std::string whole = raw_file(kGood, 22);
  write_bytes(dir + "/t.safetensors", whole.substr(0, 40));
  expect_contains(
      error_of([&] { SafetensorsFile f(dir + "/t.safetensors"); }),
      {dir + "/t.safetensors", "header length " + std::to_string(kGood.size()), "past the end of the file"});
}

TEST(SafetensorsValidation, HeaderLengthOverLimit) {
  const std::string bytes = le64(uint64_t{1} << 62) + "{}";
  expect_contains(error_of([&] {
                    parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                             "huge.safetensors");
                  }),
                  {"huge.safetensors", "exceeds the 100 MB limit"});
}

TEST(SafetensorsValidation, TruncatedDataSection) {
  expect_contains(parse_error(kGood, 20), {"bad.safetensors", "tensor 'b'", "data_offsets [16,22]",
                                           "past the end of the data section (20 bytes"});
}

TEST(SafetensorsValidation, BadJson) {
  expect_contains(parse_error(R"({"a":{"dtype":"F32",)", 0), {"bad.safetensors", "header is not valid JSON"});
  expect_contains(parse_error("{\"a\":\"\xff\"}", 0), {"bad.safetensors", "not valid JSON"});  // bad UTF-8
  expect_contains(parse_error(R"([1,2])", 0), {"bad.safetensors", "expected a JSON object"});
  // nlohmann would stop at the NUL and ignore the rest.
  expect_contains(parse_error(std::string("{}\0{\"a\":1}", 10), 0), {"bad.safetensors", "NUL byte at offset 10"});
  expect_contains(parse_error(std::string(40, '[') + std::string(40, ']'), 0),
                  {"bad.safetensors", "nests deeper"});
}

TEST(SafetensorsValidation, UnknownDtype) {
  expect_contains(parse_error(R"({"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", 4),
                  {"bad.safetensors", "tensor 'w'", "unsupported dtype 'F8_E4M3'"});
  expect_contains(parse_error(R"({"w":{"dtype":"U32","shape":[1],"data_offsets":[0,4]}})", 4),
                  {"tensor 'w'", "unsupported dtype 'U32'"});
  expect_contains(parse_error(R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", 4),
                  {"tensor 'w'", "dtype is 7"});
}

TEST(SafetensorsValidation, NegativeOrNonIntegerShape) {
  expect_contains(parse_error(R"({"w":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,0]}})", 0),
                  {"bad.safetensors", "tensor 'w'", "negative dimension -1"});
  expect_contains(parse_error(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
                  {"tensor 'w'", "dimension 2.0", "non-negative integer"});
  expect_contains(parse_error(R"({"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", 8),
                  {"tensor 'w'", "shape is \"2\""});
}

TEST(SafetensorsValidation, ShapeProductOverflow) {
  expect_contains(parse_error(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0),
                  {"tensor 'w'", "overflows 64 bits"});
  expect_contains(parse_error(R"({"w":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,0]}})", 0),
                  {"tensor 'w'", "dimension 9223372036854775808 is too large"});
}

TEST(SafetensorsValidation, ShapeAndOffsetsSizeMismatch) {
  expect_contains(
      parse_error(
          R"({"model.layers.0.self_attn.q_proj.weight":{"dtype":"BF16","shape":[16,16],"data_offsets":[0,510]}})",
          510),
      {"bad.safetensors: tensor 'model.layers.0.self_attn.q_proj.weight': shape [16,16] x BF16 = 512 bytes but "
       "data_offsets span 510"});
}

TEST(SafetensorsValidation, MalformedOffsets) {
  expect_contains(parse_error(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[2,0]}})", 2),
                  {"tensor 'w'", "[2,0] end before they begin"});
  expect_contains(parse_error(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2,4]}})", 4),
                  {"tensor 'w'", "of 3 items", "expected [begin, end]"});
  expect_contains(parse_error(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[-2,0]}})", 4),
                  {"tensor 'w'", "non-negative integers"});
}

TEST(SafetensorsValidation, WrongEntryFields) {
  expect_contains(parse_error(R"({"w":{"dtype":"U8","shape":[2]}})", 0),
                  {"tensor 'w'", "missing field 'data_offsets'"});
  expect_contains(parse_error(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"x":1}})", 2),
                  {"tensor 'w'", "unexpected field 'x'"});
  expect_contains(parse_error(R"({"w":[1,2]})", 0), {"tensor 'w'", "entry is an array"});
}

TEST(SafetensorsValidation, OverlappingSpans) {
  expect_contains(parse_error(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                              R"("b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}})",
                              12),
                  {"bad.safetensors", "tensor 'b'", "data_offsets [4,12] overlap tensor 'a' [0,8]"});
  // A zero-size tensor may not sit inside another one either.
  expect_contains(parse_error(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                              R"("z":{"dtype":"U8","shape":[0],"data_offsets":[3,3]}})",
                              8),
                  {"tensor 'z'", "overlap tensor 'a'"});
}

TEST(SafetensorsValidation, HolesInDataSection) {
  expect_contains(parse_error(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                              R"("b":{"dtype":"U8","shape":[4],"data_offsets":[12,16]}})",
                              16),
                  {"bad.safetensors", "tensor 'b'", "hole of 4 bytes after tensor 'a' [0,8]"});
  expect_contains(parse_error(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", 8),
                  {"bad.safetensors", "tensor 'a'", "leave bytes [0,4) of the data section unused"});
}

TEST(SafetensorsValidation, BytesAfterLastTensor) {
  expect_contains(parse_error(kGood, 30),
                  {"bad.safetensors", "8 bytes of data after the last tensor 'b' [16,22]"});
  expect_contains(parse_error("{}", 3), {"bad.safetensors", "no tensors but a data section of 3 bytes"});
}

TEST(SafetensorsValidation, DuplicateNamesAndFields) {
  expect_contains(parse_error(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                              R"("a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
                              4),
                  {"bad.safetensors", "tensor 'a' appears twice"});
  expect_contains(parse_error(R"({"a":{"dtype":"U8","dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 2),
                  {"tensor 'a'", "field 'dtype' appears twice"});
  expect_contains(parse_error(R"({"__metadata__":{"k":"1","k":"2"}})", 0), {"__metadata__ key 'k' appears twice"});
}

TEST(SafetensorsValidation, MetadataMustBeStrings) {
  const std::string null_metadata = raw_file(R"({"__metadata__":null})", 0);
  EXPECT_TRUE(
      parse_safetensors_header(reinterpret_cast<const uint8_t*>(null_metadata.data()), null_metadata.size(), "n")
          .metadata.empty());
  expect_contains(parse_error(R"({"__metadata__":{"n":1}})", 0), {"bad.safetensors", "__metadata__ 'n' is 1"});
  expect_contains(parse_error(R"({"__metadata__":[]})", 0), {"bad.safetensors", "__metadata__ is an array"});
}

}  // namespace
}  // namespace mlaforge
