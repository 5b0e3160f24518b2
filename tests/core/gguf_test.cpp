// GGUF and llama2.c readers (torch-free). References come from tests/python/refs_gguf.py (the real `gguf`
// package); the corrupt-file cases are built here byte by byte and need nothing external.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>

#include "core/dtype.h"
#include "core/error.h"
#include "core/mmap_file.h"
#include "model/gguf.h"
#include "model/llama2c.h"
#include "model/safetensors.h"
#include "tests/support/test_support.h"

namespace mlaforge {
namespace {

std::string data_path(const std::string& rel) { return testing::test_data_dir() + "/" + rel; }

// The error message of `fn`, or "" when it does not throw mlaforge::Error.
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string read_file(const std::string& path) { return read_text_file(path); }

// Reference tensor from a safetensors file as float32 values.
std::vector<float> ref_values(const SafetensorsFile& file, const TensorInfo& info) {
  EXPECT_EQ(info.dtype, DType::F32) << info.name;
  std::vector<float> out(static_cast<size_t>(info.numel()));
  std::memcpy(out.data(), file.tensor_data(info), out.size() * 4);
  return out;
}

// Number of positions where the float32 bit patterns differ (NaNs compare by bits too).
size_t bit_mismatches(const float* a, const float* b, size_t n, size_t* first = nullptr) {
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t x, y;
    std::memcpy(&x, a + i, 4);
    std::memcpy(&y, b + i, 4);
    if (x != y) {
      if (bad == 0 && first) *first = i;
      ++bad;
    }
  }
  return bad;
}

// ---- a tiny GGUF writer for hand-made (and deliberately broken) files ------------------------------
class GgufBuilder {
 public:
  explicit GgufBuilder(uint32_t version = 3) { u32(0x46554747); u32(version); }
  GgufBuilder& counts(uint64_t tensors, uint64_t kvs) { u64(tensors); u64(kvs); return *this; }
  GgufBuilder& str(const std::string& s) { u64(s.size()); bytes_ += s; return *this; }
  GgufBuilder& u8(uint8_t v) { return raw(&v, 1); }
  GgufBuilder& u32(uint32_t v) { return raw(&v, 4); }
  GgufBuilder& u64(uint64_t v) { return raw(&v, 8); }
  GgufBuilder& f32(float v) { return raw(&v, 4); }
  GgufBuilder& raw(const void* p, size_t n) { bytes_.append(static_cast<const char*>(p), n); return *this; }
  // kv of type uint32
  GgufBuilder& kv_u32(const std::string& key, uint32_t v) { str(key); u32(4); return u32(v); }
  GgufBuilder& kv_str(const std::string& key, const std::string& v) { str(key); u32(8); return str(v); }
  // tensor info
  GgufBuilder& tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
    str(name);
    u32(static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) u64(d);
    u32(type);
    return u64(offset);
  }
  GgufBuilder& pad(size_t alignment) {
    while (bytes_.size() % alignment) bytes_.push_back('\0');
    return *this;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

// A valid file: two kvs, an F32 [4] tensor and an F16 [2, 32] tensor.
std::string valid_file_bytes() {
  GgufBuilder b;
  b.counts(2, 2).kv_str("general.architecture", "llama").kv_u32("llama.block_count", 3);
  b.tensor("vec", {4}, 0, 0).tensor("blk.0.attn_q.weight", {32, 2}, 1, 32);
  b.pad(32);
  const float v[4] = {1.5f, -2.0f, 0.25f, 8.0f};
  b.raw(v, sizeof(v)).pad(32);
  for (int i = 0; i < 64; ++i) {
    const uint16_t h = float_to_half(static_cast<float>(i) * 0.5f - 4.0f);
    b.raw(&h, 2);
  }
  return b.bytes();
}

class GgufCorrupt : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::make_temp_dir("gguf"); }
  std::string write(const std::string& name, const std::string& bytes) {
    const std::string path = dir_ + "/" + name;
    write_file(path, bytes);
    return path;
  }
  std::string dir_;
};

}  // namespace

// ---- hand-made files -------------------------------------------------------------------------------

TEST_F(GgufCorrupt, HandMadeFileReads) {
  const std::string path = write("ok.gguf", valid_file_bytes());
  GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("llama.block_count"), 3);
  ASSERT_EQ(f.tensors().size(), 2u);
  const GgufTensorInfo* q = f.find_tensor("blk.0.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->shape(), (std::vector<int64_t>{2, 32}));
  EXPECT_EQ(q->nbytes, 128u);
  const auto values = f.dequantize(*q);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(values[i], static_cast<float>(i) * 0.5f - 4.0f) << i;
  const auto vec = f.dequantize(*f.find_tensor("vec"));
  EXPECT_EQ(vec, (std::vector<float>{1.5f, -2.0f, 0.25f, 8.0f}));
}

TEST_F(GgufCorrupt, EveryTruncationIsAnError) {
  const std::string full = valid_file_bytes();
  for (size_t n = 0; n < full.size(); ++n) {
    const std::string path = write("trunc.gguf", full.substr(0, n));
    const std::string msg = error_of([&] { GgufFile::open(path); });
    ASSERT_FALSE(msg.empty()) << "prefix of " << n << " bytes was accepted";
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
  }
  // Cut inside the data section: the error names the tensor that no longer fits.
  const std::string path = write("trunc.gguf", full.substr(0, full.size() - 10));
  const std::string msg = error_of([&] { GgufFile::open(path); });
  EXPECT_NE(msg.find("blk.0.attn_q.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("past the end"), std::string::npos) << msg;
  // Cut inside the metadata: the error names the key being read.
  const std::string path2 = write("trunc2.gguf", full.substr(0, 24 + 8 + 20 + 4 + 8 + 2));
  const std::string msg2 = error_of([&] { GgufFile::open(path2); });
  EXPECT_NE(msg2.find("general.architecture"), std::string::npos) << msg2;
}

TEST_F(GgufCorrupt, HugeStringLength) {
  GgufBuilder b;
  b.counts(0, 1).u64(uint64_t{1} << 62).raw("abcdefghijklmnop", 16);
  const std::string path = write("huge_key.gguf", b.bytes());
  const std::string msg = error_of([&] { GgufFile::open(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("string length"), std::string::npos) << msg;

  GgufBuilder c;
  c.counts(0, 1).str("general.name").u32(8).u64(uint64_t{1} << 40).raw("xyzxyzxyzxyzxyz", 15);
  const std::string path2 = write("huge_value.gguf", c.bytes());
  const std::string msg2 = error_of([&] { GgufFile::open(path2); });
  EXPECT_NE(msg2.find("general.name"), std::string::npos) << msg2;
}

TEST_F(GgufCorrupt, HugeCountsAndArrays) {
  GgufBuilder b;
  b.counts(uint64_t{1} << 60, 0);
  EXPECT_NE(error_of([&] { GgufFile::open(write("tcount.gguf", b.bytes())); }).find("tensors"), std::string::npos);
  GgufBuilder c;
  c.counts(0, 1).str("tokenizer.ggml.tokens").u32(9).u32(8).u64(uint64_t{1} << 59);
  const std::string msg = error_of([&] { GgufFile::open(write("arr.gguf", c.bytes())); });
  EXPECT_NE(msg.find("tokenizer.ggml.tokens"), std::string::npos) << msg;
  GgufBuilder d;
  d.counts(0, 1).str("x").u32(77).u32(0);
  const std::string msg3 = error_of([&] { GgufFile::open(write("vtype.gguf", d.bytes())); });
  EXPECT_NE(msg3.find("unknown value type 77"), std::string::npos) << msg3;
}

TEST_F(GgufCorrupt, TensorOffsetBeyondFile) {
  GgufBuilder b;
  b.counts(1, 0).tensor("blk.3.ffn_up.weight", {32, 4}, 0, 1ull << 20).pad(32);
  b.raw(std::string(512, '\0').data(), 512);
  const std::string path = write("offset.gguf", b.bytes());
  const std::string msg = error_of([&] { GgufFile::open(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("blk.3.ffn_up.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("past the end"), std::string::npos) << msg;
  // An offset near 2^64 must not wrap around.
  GgufBuilder c;
  c.counts(1, 0).tensor("w", {32}, 0, ~uint64_t{31}).pad(32);
  EXPECT_NE(error_of([&] { GgufFile::open(write("wrap.gguf", c.bytes())); }).find("'w'"), std::string::npos);
  // Misaligned offset.
  GgufBuilder d;
  d.counts(1, 0).tensor("w", {4}, 0, 4).pad(32).raw(std::string(64, '\0').data(), 64);
  EXPECT_NE(error_of([&] { GgufFile::open(write("misaligned.gguf", d.bytes())); }).find("alignment"),
            std::string::npos);
}

TEST_F(GgufCorrupt, UnknownTypeAndBadShapes) {
  GgufBuilder b;
  b.counts(1, 0).tensor("token_embd.weight", {32, 2}, 99, 0).pad(32).raw(std::string(256, '\0').data(), 256);
  const std::string path = write("type.gguf", b.bytes());
  const std::string msg = error_of([&] { GgufFile::open(path); });
  EXPECT_NE(msg.find("token_embd.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown ggml type 99"), std::string::npos) << msg;
  GgufBuilder c;  // Q8_0 row of 40 elements: not a multiple of 32
  c.counts(1, 0).tensor("blk.0.attn_k.weight", {40, 1}, 8, 0).pad(32).raw(std::string(64, '\0').data(), 64);
  const std::string msg2 = error_of([&] { GgufFile::open(write("row.gguf", c.bytes())); });
  EXPECT_NE(msg2.find("blk.0.attn_k.weight"), std::string::npos) << msg2;
  EXPECT_NE(msg2.find("block size 32"), std::string::npos) << msg2;
  GgufBuilder d;
  d.counts(1, 0).tensor("t", {1, 1, 1, 1, 1}, 0, 0);
  EXPECT_NE(error_of([&] { GgufFile::open(write("dims.gguf", d.bytes())); }).find("5 dimensions"),
            std::string::npos);
  GgufBuilder e;  // 2^32 * 2^32 elements overflows
  e.counts(1, 0).tensor("t", {1ull << 32, 1ull << 32}, 0, 0);
  EXPECT_NE(error_of([&] { GgufFile::open(write("numel.gguf", e.bytes())); }).find("'t'"), std::string::npos);
}

TEST_F(GgufCorrupt, HeaderProblems) {
  EXPECT_NE(error_of([&] { GgufFile::open(write("magic.gguf", "GGML\x03\0\0\0")); }).find("not a GGUF file"),
            std::string::npos);
  GgufBuilder v1(1);
  v1.counts(0, 0);
  EXPECT_NE(error_of([&] { GgufFile::open(write("v1.gguf", v1.bytes())); }).find("version 1"), std::string::npos);
  GgufBuilder be(0x03000000u);
  be.counts(0, 0);
  EXPECT_NE(error_of([&] { GgufFile::open(write("be.gguf", be.bytes())); }).find("big-endian"), std::string::npos);
  GgufBuilder dup;
  dup.counts(0, 2).kv_u32("a.b", 1).kv_u32("a.b", 2);
  EXPECT_NE(error_of([&] { GgufFile::open(write("dup.gguf", dup.bytes())); }).find("duplicate metadata key 'a.b'"),
            std::string::npos);
  GgufBuilder align;
  align.counts(0, 1).kv_u32("general.alignment", 48);
  EXPECT_NE(error_of([&] { GgufFile::open(write("align.gguf", align.bytes())); }).find("power of two"),
            std::string::npos);
  GgufBuilder nested;  // arrays nested 100 deep: rejected without exhausting the stack
  nested.counts(0, 1).str("deep").u32(9);
  for (int i = 0; i < 100; ++i) nested.u32(9).u64(1);
  EXPECT_NE(error_of([&] { GgufFile::open(write("nested.gguf", nested.bytes())); }).find("nested"),
            std::string::npos);
}

TEST_F(GgufCorrupt, TypedGettersNameTheKey) {
  GgufFile f = GgufFile::open(write("ok.gguf", valid_file_bytes()));
  EXPECT_NE(error_of([&] { f.get_int("general.architecture"); }).find("'general.architecture' is string"),
            std::string::npos);
  EXPECT_NE(error_of([&] { f.get_string("llama.nope"); }).find("missing GGUF metadata key 'llama.nope'"),
            std::string::npos);
  EXPECT_EQ(f.get_int("llama.nope", 42), 42);
  EXPECT_EQ(f.get_string("llama.nope", "x"), "x");
}

// ---- dequantisation by hand (independent of the Python package) ------------------------------------

TEST(GgufDequant, BlockLayoutsByHand) {
  // Q4_0: d = 0.5; byte j holds element j (low nibble) and element j + 16 (high nibble).
  uint8_t q40[18];
  const uint16_t half = float_to_half(0.5f);
  std::memcpy(q40, &half, 2);
  for (int j = 0; j < 16; ++j) q40[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float out[32];
  dequantize_ggml(static_cast<uint32_t>(GgmlType::Q4_0), q40, out, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], (j - 8) * 0.5f) << j;
    EXPECT_EQ(out[j + 16], (15 - j - 8) * 0.5f) << j;
  }
  // Q4_1: d = 0.25, m = -1.
  uint8_t q41[20];
  const uint16_t d = float_to_half(0.25f), m = float_to_half(-1.0f);
  std::memcpy(q41, &d, 2);
  std::memcpy(q41 + 2, &m, 2);
  for (int j = 0; j < 16; ++j) q41[4 + j] = static_cast<uint8_t>(j | (3 << 4));
  dequantize_ggml(static_cast<uint32_t>(GgmlType::Q4_1), q41, out, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], j * 0.25f - 1.0f) << j;
    EXPECT_EQ(out[j + 16], 3 * 0.25f - 1.0f) << j;
  }
  // Q8_0: d = 2, int8 values.
  uint8_t q80[34];
  const uint16_t two = float_to_half(2.0f);
  std::memcpy(q80, &two, 2);
  for (int j = 0; j < 32; ++j) q80[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j * 8 - 128));
  dequantize_ggml(static_cast<uint32_t>(GgmlType::Q8_0), q80, out, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], (j * 8 - 128) * 2.0f) << j;
  // BF16
  const uint16_t bf[2] = {0x4049, 0xc000};
  dequantize_ggml(static_cast<uint32_t>(GgmlType::BF16), reinterpret_cast<const uint8_t*>(bf), out, 2);
  EXPECT_EQ(out[0], 3.140625f);
  EXPECT_EQ(out[1], -2.0f);
  // Anything else is refused by name.
  EXPECT_NE(error_of([&] { dequantize_ggml(static_cast<uint32_t>(GgmlType::Q3_K), q80, out, 256); }).find("Q3_K"),
            std::string::npos);
  EXPECT_EQ(ggml_type_name(3), "Q4_1");
  EXPECT_EQ(ggml_type_name(4), "type#4");
  EXPECT_FALSE(ggml_block(4).has_value());
  EXPECT_EQ(ggml_block(static_cast<uint32_t>(GgmlType::Q4_1))->type_size, 20);
  EXPECT_EQ(float32_to_shortest_double(1e-5f), 1e-5);
  EXPECT_EQ(float32_to_shortest_double(500000.0f), 500000.0);
}

// ---- against the gguf Python package ---------------------------------------------------------------

TEST(GgufReference, DequantMatchesGgufPackageBitForBit) {
  REQUIRE_TEST_DATA("gguf/types_ref.safetensors");
  for (const char* file : {"gguf/types.gguf", "gguf/types_v2.gguf"}) {
    SCOPED_TRACE(file);
    GgufFile f = GgufFile::open(data_path(file));
    EXPECT_EQ(f.version(), std::string(file).find("v2") != std::string::npos ? 2u : 3u);
    SafetensorsFile ref(data_path("gguf/types_ref.safetensors"));
    std::map<std::string, int> types_seen;
    ASSERT_EQ(ref.header().tensors.size(), f.tensors().size());
    for (const TensorInfo& r : ref.header().tensors) {
      SCOPED_TRACE(r.name);
      const GgufTensorInfo* t = f.find_tensor(r.name);
      ASSERT_NE(t, nullptr);
      EXPECT_EQ(t->shape(), r.shape);
      ++types_seen[ggml_type_name(t->type)];
      const std::vector<float> expected = ref_values(ref, r);
      for (int threads : {1, 2, 3}) {
        const std::vector<float> got = f.dequantize(*t, threads);
        ASSERT_EQ(got.size(), expected.size());
        size_t first = 0;
        EXPECT_EQ(bit_mismatches(got.data(), expected.data(), got.size(), &first), 0u)
            << "threads=" << threads << " first mismatch at " << first << ": " << got[first] << " vs "
            << expected[first];
      }
    }
    for (const char* type : {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"})
      EXPECT_GE(types_seen[type], 1) << type;
  }
}

TEST(GgufReference, MetadataOfEveryType) {
  REQUIRE_TEST_DATA("gguf/types.gguf");
  GgufFile f = GgufFile::open(data_path("gguf/types.gguf"));
  EXPECT_EQ(f.get_string("general.architecture"), "testarch");
  EXPECT_EQ(f.find("test.u8")->type, GgufValueType::UINT8);
  EXPECT_EQ(f.get_int("test.u8"), 200);
  EXPECT_EQ(f.get_int("test.i8"), -100);
  EXPECT_EQ(f.get_int("test.u16"), 60000);
  EXPECT_EQ(f.get_int("test.i16"), -30000);
  EXPECT_EQ(f.get_int("test.u32"), 4000000000LL);
  EXPECT_EQ(f.get_int("test.i32"), -2000000000LL);
  EXPECT_EQ(f.find("test.f32")->type, GgufValueType::FLOAT32);
  EXPECT_EQ(f.get_float("test.f32"), static_cast<double>(1e-5f));
  // uint64 above INT64_MAX: kept as bits, refused by get_int.
  EXPECT_EQ(static_cast<uint64_t>(f.find("test.u64")->int_value), (uint64_t{1} << 63) + 5);
  EXPECT_NE(error_of([&] { f.get_int("test.u64"); }).find("too large"), std::string::npos);
  EXPECT_EQ(f.get_int("test.i64"), -(int64_t{1} << 40));
  EXPECT_EQ(f.get_float("test.f64"), -2.5e-300);
  EXPECT_TRUE(f.get_bool("test.bool"));
  EXPECT_EQ(f.get_string("test.string"), "h\xc3\xa9llo \xe2\x9c\x93 GGUF");
  EXPECT_EQ(f.get_string("test.empty_string"), "");
  EXPECT_EQ(f.get_int_array("test.arr_i16"), (std::vector<int64_t>{-1, 2, -3}));
  EXPECT_EQ(f.find("test.arr_i16")->element_type, GgufValueType::INT16);
  EXPECT_EQ(f.get_int_array("test.arr_u64"), (std::vector<int64_t>{1, int64_t{1} << 40}));
  EXPECT_EQ(f.get_float_array("test.arr_f32"), (std::vector<double>{0.5, -1.25, 3.0}));
  EXPECT_EQ(f.get_float_array("test.arr_f64"), (std::vector<double>{1e300}));
  EXPECT_EQ(f.get_int_array("test.arr_bool"), (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(f.get_string_array("test.arr_str"), (std::vector<std::string>{"a", "", "\xc3\xbcn\xc3\xaf"}));
  const GgufValue* nested = f.find("test.arr_nested");
  ASSERT_NE(nested, nullptr);
  ASSERT_EQ(nested->arrays.size(), 2u);
  EXPECT_EQ(nested->arrays[0].ints, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(nested->arrays[1].ints, (std::vector<int64_t>{3}));
  EXPECT_EQ(nested->array_size(), 2u);
  // Metadata keeps file order.
  EXPECT_EQ(f.metadata().front().first, "general.architecture");
}

TEST(GgufReference, CustomAlignment) {
  REQUIRE_TEST_DATA("gguf/align64.gguf");
  GgufFile f = GgufFile::open(data_path("gguf/align64.gguf"));
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  const GgufTensorInfo* b = f.find_tensor("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->offset, 64u);
  const auto values = f.dequantize(*b);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(values[i], i * 0.5f);
  EXPECT_EQ(f.dequantize(*f.find_tensor("a")), (std::vector<float>{0.0f, 1.0f, 2.0f}));
}

TEST(GgufReference, UnsupportedTypeNamesTensorAndType) {
  REQUIRE_TEST_DATA("gguf/unsupported.gguf");
  GgufFile f = GgufFile::open(data_path("gguf/unsupported.gguf"));
  const std::string msg = error_of([&] { f.dequantize(f.tensors().at(0)); });
  EXPECT_NE(msg.find("blk.0.attn_q.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Q2_K"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unsupported.gguf"), std::string::npos) << msg;
}

TEST(GgufReference, SmolLM2Q4_1) {
  REQUIRE_TEST_DATA("gguf/smollm2_path.txt");
  const std::string path = read_file(data_path("gguf/smollm2_path.txt"));
  if (!file_exists(path)) GTEST_SKIP() << path << " not present";
  const auto start = std::chrono::steady_clock::now();
  GgufFile f = GgufFile::open(path);
  const double parse_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("llama.block_count"), 30);
  EXPECT_EQ(f.get_int("llama.embedding_length"), 576);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.find("tokenizer.ggml.tokens")->array_size(), 49152u);
  EXPECT_EQ(f.find("tokenizer.ggml.merges")->array_size(), 48900u);
  ASSERT_EQ(f.tensors().size(), 272u);
  std::map<std::string, int> counts;
  for (const auto& t : f.tensors()) ++counts[ggml_type_name(t.type)];
  EXPECT_EQ(counts["Q4_1"], 210);
  EXPECT_EQ(counts["F32"], 61);
  EXPECT_EQ(counts["Q8_0"], 1);

  SafetensorsFile ref(data_path("gguf/smollm2_ref.safetensors"));
  for (const TensorInfo& r : ref.header().tensors) {
    if (r.name.rfind("hf:", 0) == 0) continue;  // HF-layout copies: checked by the torch import test
    SCOPED_TRACE(r.name);
    const std::string name = r.name.substr(0, r.name.find('['));
    const GgufTensorInfo* t = f.find_tensor(name);
    ASSERT_NE(t, nullptr);
    const std::vector<float> expected = ref_values(ref, r);
    std::vector<float> got(expected.size());
    if (name != r.name) {  // first rows only: dequantise their bytes
      const GgmlBlock block = *ggml_block(t->type);
      EXPECT_EQ(static_cast<int64_t>(got.size()) % t->dims[0], 0);
      dequantize_ggml(t->type, f.tensor_data(*t), got.data(), static_cast<int64_t>(got.size()));
      (void)block;
    } else {
      EXPECT_EQ(t->shape(), r.shape);
      got = f.dequantize(*t);
    }
    EXPECT_EQ(bit_mismatches(got.data(), expected.data(), got.size()), 0u);
  }

  // Throughput of the whole model's dequantisation (informational).
  size_t total = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& t : f.tensors()) {
    std::vector<float> out = f.dequantize(t);
    total += out.size();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("SmolLM2-135M Q4_1: parsed in %.1f ms, dequantised %zu values in %.2f s (%.0f M/s)\n", parse_ms,
              total, secs, total / secs / 1e6);
}

// ---- llama2.c --------------------------------------------------------------------------------------

TEST(Llama2c, Stories260KHeaderAndLayout) {
  REQUIRE_ASSET("models/stories260K/stories260K.bin");
  Llama2cFile f = Llama2cFile::open(testing::asset_path("models/stories260K/stories260K.bin"));
  const Llama2cHeader& h = f.header();
  EXPECT_EQ(h.dim, 64);
  EXPECT_EQ(h.hidden_dim, 172);
  EXPECT_EQ(h.n_layers, 5);
  EXPECT_EQ(h.n_heads, 8);
  EXPECT_EQ(h.n_kv_heads, 4);
  EXPECT_EQ(h.vocab_size, 512);
  EXPECT_EQ(h.seq_len, 512);
  EXPECT_TRUE(h.shared_classifier);
  EXPECT_EQ(h.head_size(), 8);
  EXPECT_EQ(h.kv_dim(), 32);
  EXPECT_TRUE(f.has_freq_cis());
  EXPECT_EQ(f.find("wcls"), nullptr);
  EXPECT_EQ(f.get("wk").shape, (std::vector<int64_t>{5, 32, 64}));
  EXPECT_EQ(f.get("w2").shape, (std::vector<int64_t>{5, 64, 172}));
  const Llama2cArray& last = f.arrays().back();
  EXPECT_EQ(last.name, "freq_cis_imag");
  EXPECT_EQ(last.offset + static_cast<uint64_t>(last.numel) * 4, 1056540u);
  // freq_cis_real[pos][i] = cos(pos * 10000^(-2i/head)): position 0 is all ones.
  const float* re = f.data(f.get("freq_cis_real"));
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(re[i], 1.0f);
  EXPECT_NEAR(re[4 * 3 + 1], std::cos(3.0 * std::pow(10000.0, -2.0 / 8.0)), 1e-6);

  if (::mlaforge::core_file_exists(data_path("gguf/stories260K_hf.safetensors"))) {
    SafetensorsFile ref(data_path("gguf/stories260K_hf.safetensors"));
    const TensorInfo* emb = ref.header().find("model.embed_tokens.weight");
    ASSERT_NE(emb, nullptr);
    const auto expected = ref_values(ref, *emb);
    EXPECT_EQ(std::memcmp(expected.data(), f.data(f.get("token_embedding_table")), expected.size() * 4), 0);
  }
}

TEST(Llama2c, SizeMismatchIsAClearError) {
  REQUIRE_ASSET("models/stories260K/stories260K.bin");
  const std::string bytes = read_file(testing::asset_path("models/stories260K/stories260K.bin"));
  const std::string dir = testing::make_temp_dir("llama2c");
  const std::string path = dir + "/truncated.bin";
  write_file(path, bytes.substr(0, 500000));
  const std::string msg = error_of([&] { Llama2cFile::open(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("500000"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1056540"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  // Without the freq_cis tables is fine; one float more is not.
  write_file(path, bytes.substr(0, 1056540 - 2 * 512 * 4 * 4));
  Llama2cFile no_freq = Llama2cFile::open(path);
  EXPECT_FALSE(no_freq.has_freq_cis());
  write_file(path, bytes + std::string(4, '\0'));
  EXPECT_NE(error_of([&] { Llama2cFile::open(path); }).find("1056544"), std::string::npos);
  // Header garbage and the newer export format.
  write_file(path, std::string("\x00\x00\x00\x00", 4) + bytes.substr(4));
  EXPECT_NE(error_of([&] { Llama2cFile::open(path); }).find("dim = 0"), std::string::npos);
  write_file(path, std::string("24ka\x01\0\0\0", 8) + bytes.substr(8));
  EXPECT_NE(error_of([&] { Llama2cFile::open(path); }).find("ak42"), std::string::npos);
  write_file(path, "abc");
  EXPECT_NE(error_of([&] { Llama2cFile::open(path); }).find("too small"), std::string::npos);
}

TEST(Llama2c, UntiedClassifier) {
  REQUIRE_TEST_DATA("gguf/tiny_untied.bin");
  Llama2cFile f = Llama2cFile::open(data_path("gguf/tiny_untied.bin"));
  EXPECT_FALSE(f.header().shared_classifier);
  EXPECT_EQ(f.header().vocab_size, 40);
  const Llama2cArray* wcls = f.find("wcls");
  ASSERT_NE(wcls, nullptr);
  EXPECT_EQ(wcls->shape, (std::vector<int64_t>{40, 32}));
  SafetensorsFile ref(data_path("gguf/tiny_untied_hf.safetensors"));
  const auto expected = ref_values(ref, *ref.header().find("lm_head.weight"));
  EXPECT_EQ(std::memcmp(expected.data(), f.data(*wcls), expected.size() * 4), 0);
}

}  // namespace mlaforge
