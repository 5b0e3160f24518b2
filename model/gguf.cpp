#include "model/gguf.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threads.h"

namespace mlaforge {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;             // GGML_MAX_DIMS
constexpr int kMaxArrayNesting = 8;          // arrays of arrays: guard the recursion on hostile input

// Sequential reader over the mapped bytes. `context_` names what is being read (the metadata key or
// tensor) so that every bounds failure says where it happened.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size, const std::string& path) : data_(data), size_(size), path_(path) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }
  void set_context(std::string context) { context_ = std::move(context); }
  const std::string& context() const { return context_; }

  void need(uint64_t bytes) const {
    if (bytes > remaining())
      fail(path_, ": truncated GGUF file while reading ", context_, " (need ", bytes, " bytes at offset ", pos_,
           ", file has ", size_, ")");
  }
  template <typename T>
  T read() {
    need(sizeof(T));
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }
  std::string read_string() {
    const uint64_t length = read<uint64_t>();
    if (length > remaining())
      fail(path_, ": string length ", length, " in ", context_, " runs past the end of the file (offset ", pos_,
           ", ", remaining(), " bytes left)");
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(length));
    pos_ += static_cast<size_t>(length);
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& path_;
  std::string context_ = "the header";
};

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::FLOAT64); }

// Smallest encoding of one element of the given type: bounds array counts before allocating.
uint64_t min_element_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::BOOL: return 1;
    case GgufValueType::UINT16: case GgufValueType::INT16: return 2;
    case GgufValueType::UINT32: case GgufValueType::INT32: case GgufValueType::FLOAT32: return 4;
    case GgufValueType::UINT64: case GgufValueType::INT64: case GgufValueType::FLOAT64: return 8;
    case GgufValueType::STRING: return 8;
    case GgufValueType::ARRAY: return 12;
  }
  return 1;
}

// Reads one integer / bool / float scalar of type t as int64 (integers, bools) or double (floats).
bool read_number(Cursor& in, GgufValueType t, int64_t& i, double& f, bool& is_unsigned_overflow) {
  is_unsigned_overflow = false;
  switch (t) {
    case GgufValueType::UINT8: i = in.read<uint8_t>(); return true;
    case GgufValueType::INT8: i = in.read<int8_t>(); return true;
    case GgufValueType::UINT16: i = in.read<uint16_t>(); return true;
    case GgufValueType::INT16: i = in.read<int16_t>(); return true;
    case GgufValueType::UINT32: i = in.read<uint32_t>(); return true;
    case GgufValueType::INT32: i = in.read<int32_t>(); return true;
    case GgufValueType::UINT64: {
      const uint64_t u = in.read<uint64_t>();
      is_unsigned_overflow = u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
      i = static_cast<int64_t>(u);
      return true;
    }
    case GgufValueType::INT64: i = in.read<int64_t>(); return true;
    case GgufValueType::BOOL: i = in.read<uint8_t>() != 0 ? 1 : 0; return true;
    case GgufValueType::FLOAT32: f = static_cast<double>(in.read<float>()); return false;
    case GgufValueType::FLOAT64: f = in.read<double>(); return false;
    default: break;
  }
  return false;
}

GgufValue read_value(Cursor& in, GgufValueType type, const std::string& path, int depth) {
  GgufValue v;
  v.type = type;
  if (type == GgufValueType::STRING) {
    v.string_value = in.read_string();
    return v;
  }
  if (type != GgufValueType::ARRAY) {
    bool overflow = false;
    read_number(in, type, v.int_value, v.float_value, overflow);
    return v;
  }
  MLA_CHECK(depth < kMaxArrayNesting, path, ": arrays nested more than ", kMaxArrayNesting, " deep in ",
            in.context());
  const uint32_t raw_type = in.read<uint32_t>();
  MLA_CHECK(valid_value_type(raw_type), path, ": unknown array element type ", raw_type, " in ", in.context());
  v.element_type = static_cast<GgufValueType>(raw_type);
  const uint64_t count = in.read<uint64_t>();
  const uint64_t min_bytes = min_element_bytes(v.element_type);
  if (count > in.remaining() / min_bytes)
    fail(path, ": array of ", count, " ", gguf_value_type_name(v.element_type), " in ", in.context(),
         " cannot fit in the ", in.remaining(), " bytes left in the file");
  const size_t n = static_cast<size_t>(count);
  switch (v.element_type) {
    case GgufValueType::STRING:
      v.strings.reserve(n);
      for (size_t k = 0; k < n; ++k) v.strings.push_back(in.read_string());
      break;
    case GgufValueType::ARRAY:
      v.arrays.reserve(n);
      for (size_t k = 0; k < n; ++k) v.arrays.push_back(read_value(in, GgufValueType::ARRAY, path, depth + 1));
      break;
    case GgufValueType::FLOAT32:
    case GgufValueType::FLOAT64:
      v.floats.resize(n);
      for (size_t k = 0; k < n; ++k) {
        int64_t unused = 0;
        bool overflow = false;
        read_number(in, v.element_type, unused, v.floats[k], overflow);
      }
      break;
    default:
      v.ints.resize(n);
      for (size_t k = 0; k < n; ++k) {
        double unused = 0;
        bool overflow = false;
        read_number(in, v.element_type, v.ints[k], unused, overflow);
      }
      break;
  }
  return v;
}

uint64_t align_up(uint64_t x, uint64_t alignment) { return (x + alignment - 1) / alignment * alignment; }

// float16 -> float32 for all 65536 bit patterns, built once: dequantising F16 tensors becomes a lookup.
const float* half_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t h = 0; h < 65536; ++h) t[h] = half_to_float(static_cast<uint16_t>(h));
    return t;
  }();
  return table.data();
}

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// The arithmetic below mirrors ggml's reference dequantisation (and the gguf Python package) operation
// for operation so results are bit-identical; gguf.cpp is compiled with -ffp-contract=off so q*d+m
// stays two roundings.
void dequant_q8_0(const uint8_t* src, float* dst, int64_t blocks, const float* ht) {
  for (int64_t b = 0; b < blocks; ++b, src += 34, dst += 32) {
    const float d = ht[load_u16(src)];
    const int8_t* q = reinterpret_cast<const int8_t*>(src + 2);
    for (int j = 0; j < 32; ++j) dst[j] = static_cast<float>(q[j]) * d;
  }
}

void dequant_q4_0(const uint8_t* src, float* dst, int64_t blocks, const float* ht) {
  for (int64_t b = 0; b < blocks; ++b, src += 18, dst += 32) {
    const float d = ht[load_u16(src)];
    const uint8_t* q = src + 2;
    for (int j = 0; j < 16; ++j) {
      dst[j] = static_cast<float>(static_cast<int>(q[j] & 0x0F) - 8) * d;
      dst[j + 16] = static_cast<float>(static_cast<int>(q[j] >> 4) - 8) * d;
    }
  }
}

void dequant_q4_1(const uint8_t* src, float* dst, int64_t blocks, const float* ht) {
  for (int64_t b = 0; b < blocks; ++b, src += 20, dst += 32) {
    const float d = ht[load_u16(src)];
    const float m = ht[load_u16(src + 2)];
    const uint8_t* q = src + 4;
    for (int j = 0; j < 16; ++j) {
      const float p0 = static_cast<float>(q[j] & 0x0F) * d;
      const float p1 = static_cast<float>(q[j] >> 4) * d;
      dst[j] = p0 + m;
      dst[j + 16] = p1 + m;
    }
  }
}

void dequant_q5_0(const uint8_t* src, float* dst, int64_t blocks, const float* ht) {
  for (int64_t b = 0; b < blocks; ++b, src += 22, dst += 32) {
    const float d = ht[load_u16(src)];
    uint32_t qh;
    std::memcpy(&qh, src + 2, 4);
    const uint8_t* q = src + 6;
    for (int j = 0; j < 16; ++j) {
      const int lo = (q[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (q[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      dst[j] = static_cast<float>(lo - 16) * d;
      dst[j + 16] = static_cast<float>(hi - 16) * d;
    }
  }
}

void dequant_q5_1(const uint8_t* src, float* dst, int64_t blocks, const float* ht) {
  for (int64_t b = 0; b < blocks; ++b, src += 24, dst += 32) {
    const float d = ht[load_u16(src)];
    const float m = ht[load_u16(src + 2)];
    uint32_t qh;
    std::memcpy(&qh, src + 4, 4);
    const uint8_t* q = src + 8;
    for (int j = 0; j < 16; ++j) {
      const int lo = (q[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (q[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      const float p0 = static_cast<float>(lo) * d;
      const float p1 = static_cast<float>(hi) * d;
      dst[j] = p0 + m;
      dst[j + 16] = p1 + m;
    }
  }
}

// K-quant super-blocks of 256: 8 sub-blocks of 32 with 6-bit scales and mins packed into 12 bytes.
// Bytes 0-3: low 6 bits = scale of sub-blocks 0-3, top 2 bits = bits 4-5 of the scale of 4-7; bytes 4-7
// the same for the mins; bytes 8-11: low nibble = bits 0-3 of the scale of 4-7, high nibble of the min.
inline void k_scale_min(const uint8_t* s, int j, int& scale, int& min) {
  if (j < 4) {
    scale = s[j] & 63;
    min = s[j + 4] & 63;
  } else {
    scale = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

void dequant_q4_k(const uint8_t* src, float* dst, int64_t blocks, const float* ht) {
  for (int64_t b = 0; b < blocks; ++b, src += 144, dst += 256) {
    const float d = ht[load_u16(src)];
    const float dmin = ht[load_u16(src + 2)];
    const uint8_t* scales = src + 4;
    const uint8_t* q = src + 16;
    for (int s = 0; s < 8; ++s) {  // sub-block s: bytes 32*(s/2).., low nibbles for even s, high for odd
      int sc, mn;
      k_scale_min(scales, s, sc, mn);
      const float d1 = d * static_cast<float>(sc);
      const float m1 = dmin * static_cast<float>(mn);
      const uint8_t* qs = q + 32 * (s / 2);
      const int shift = 4 * (s % 2);
      for (int l = 0; l < 32; ++l) {
        const float p = d1 * static_cast<float>((qs[l] >> shift) & 0x0F);
        dst[32 * s + l] = p - m1;
      }
    }
  }
}

void dequant_q5_k(const uint8_t* src, float* dst, int64_t blocks, const float* ht) {
  for (int64_t b = 0; b < blocks; ++b, src += 176, dst += 256) {
    const float d = ht[load_u16(src)];
    const float dmin = ht[load_u16(src + 2)];
    const uint8_t* scales = src + 4;
    const uint8_t* qh = src + 16;  // bit s of byte l: fifth bit of element l of sub-block s
    const uint8_t* q = src + 48;
    for (int s = 0; s < 8; ++s) {
      int sc, mn;
      k_scale_min(scales, s, sc, mn);
      const float d1 = d * static_cast<float>(sc);
      const float m1 = dmin * static_cast<float>(mn);
      const uint8_t* qs = q + 32 * (s / 2);
      const int shift = 4 * (s % 2);
      for (int l = 0; l < 32; ++l) {
        const int v = ((qs[l] >> shift) & 0x0F) | (((qh[l] >> s) & 1) << 4);
        const float p = d1 * static_cast<float>(v);
        dst[32 * s + l] = p - m1;
      }
    }
  }
}

void dequant_q6_k(const uint8_t* src, float* dst, int64_t blocks, const float* ht) {
  for (int64_t b = 0; b < blocks; ++b, src += 210, dst += 256) {
    const uint8_t* ql = src;        // 128 bytes: low 4 bits
    const uint8_t* qh = src + 128;  // 64 bytes: high 2 bits
    const int8_t* scales = reinterpret_cast<const int8_t*>(src + 192);  // 16 x int8, one per 16 values
    const float d = ht[load_u16(src + 208)];
    for (int r = 0; r < 8; ++r) {  // rows of 32 values; two halves of 128 values each
      const int half = r / 4;
      const uint8_t* lo = ql + 64 * half + 32 * (r % 2);
      const int lo_shift = 4 * ((r / 2) % 2);
      const uint8_t* hi = qh + 32 * half;
      const int hi_shift = 2 * (r % 4);
      for (int l = 0; l < 32; ++l) {
        const int e = 32 * r + l;
        const int v = (((lo[l] >> lo_shift) & 0x0F) | (((hi[l] >> hi_shift) & 3) << 4)) - 32;
        const float ds = d * static_cast<float>(scales[e / 16]);
        dst[e] = ds * static_cast<float>(v);
      }
    }
  }
}

constexpr const char* kDequantizable = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K";

}  // namespace

std::string_view gguf_value_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::UINT8: return "uint8";
    case GgufValueType::INT8: return "int8";
    case GgufValueType::UINT16: return "uint16";
    case GgufValueType::INT16: return "int16";
    case GgufValueType::UINT32: return "uint32";
    case GgufValueType::INT32: return "int32";
    case GgufValueType::FLOAT32: return "float32";
    case GgufValueType::BOOL: return "bool";
    case GgufValueType::STRING: return "string";
    case GgufValueType::ARRAY: return "array";
    case GgufValueType::UINT64: return "uint64";
    case GgufValueType::INT64: return "int64";
    case GgufValueType::FLOAT64: return "float64";
  }
  return "?";
}

std::string ggml_type_name(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: return "F32";
    case GgmlType::F16: return "F16";
    case GgmlType::Q4_0: return "Q4_0";
    case GgmlType::Q4_1: return "Q4_1";
    case GgmlType::Q5_0: return "Q5_0";
    case GgmlType::Q5_1: return "Q5_1";
    case GgmlType::Q8_0: return "Q8_0";
    case GgmlType::Q8_1: return "Q8_1";
    case GgmlType::Q2_K: return "Q2_K";
    case GgmlType::Q3_K: return "Q3_K";
    case GgmlType::Q4_K: return "Q4_K";
    case GgmlType::Q5_K: return "Q5_K";
    case GgmlType::Q6_K: return "Q6_K";
    case GgmlType::Q8_K: return "Q8_K";
    case GgmlType::IQ2_XXS: return "IQ2_XXS";
    case GgmlType::IQ2_XS: return "IQ2_XS";
    case GgmlType::IQ3_XXS: return "IQ3_XXS";
    case GgmlType::IQ1_S: return "IQ1_S";
    case GgmlType::IQ4_NL: return "IQ4_NL";
    case GgmlType::IQ3_S: return "IQ3_S";
    case GgmlType::IQ2_S: return "IQ2_S";
    case GgmlType::IQ4_XS: return "IQ4_XS";
    case GgmlType::I8: return "I8";
    case GgmlType::I16: return "I16";
    case GgmlType::I32: return "I32";
    case GgmlType::I64: return "I64";
    case GgmlType::F64: return "F64";
    case GgmlType::IQ1_M: return "IQ1_M";
    case GgmlType::BF16: return "BF16";
    case GgmlType::TQ1_0: return "TQ1_0";
    case GgmlType::TQ2_0: return "TQ2_0";
    case GgmlType::MXFP4: return "MXFP4";
  }
  return "type#" + std::to_string(type);
}

std::optional<GgmlBlock> ggml_block(uint32_t type) {
  constexpr int64_t QK_K = 256;
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: return GgmlBlock{1, 4};
    case GgmlType::F16: return GgmlBlock{1, 2};
    case GgmlType::Q4_0: return GgmlBlock{32, 2 + 16};
    case GgmlType::Q4_1: return GgmlBlock{32, 2 + 2 + 16};
    case GgmlType::Q5_0: return GgmlBlock{32, 2 + 4 + 16};
    case GgmlType::Q5_1: return GgmlBlock{32, 2 + 2 + 4 + 16};
    case GgmlType::Q8_0: return GgmlBlock{32, 2 + 32};
    case GgmlType::Q8_1: return GgmlBlock{32, 4 + 4 + 32};
    case GgmlType::Q2_K: return GgmlBlock{QK_K, 2 + 2 + QK_K / 16 + QK_K / 4};
    case GgmlType::Q3_K: return GgmlBlock{QK_K, 2 + QK_K / 4 + QK_K / 8 + 12};
    case GgmlType::Q4_K: return GgmlBlock{QK_K, 2 + 2 + QK_K / 2 + 12};
    case GgmlType::Q5_K: return GgmlBlock{QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12};
    case GgmlType::Q6_K: return GgmlBlock{QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16};
    case GgmlType::Q8_K: return GgmlBlock{QK_K, 4 + QK_K + QK_K / 8};
    case GgmlType::IQ2_XXS: return GgmlBlock{QK_K, 2 + QK_K / 4};
    case GgmlType::IQ2_XS: return GgmlBlock{QK_K, 2 + QK_K / 4 + QK_K / 32};
    case GgmlType::IQ3_XXS: return GgmlBlock{QK_K, 2 + QK_K / 4 + QK_K / 8};
    case GgmlType::IQ1_S: return GgmlBlock{QK_K, 2 + QK_K / 8 + QK_K / 16};
    case GgmlType::IQ4_NL: return GgmlBlock{32, 2 + 16};
    case GgmlType::IQ3_S: return GgmlBlock{QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4};
    case GgmlType::IQ2_S: return GgmlBlock{QK_K, 2 + QK_K / 4 + QK_K / 16};
    case GgmlType::IQ4_XS: return GgmlBlock{QK_K, 2 + 2 + QK_K / 2 + QK_K / 64};
    case GgmlType::I8: return GgmlBlock{1, 1};
    case GgmlType::I16: return GgmlBlock{1, 2};
    case GgmlType::I32: return GgmlBlock{1, 4};
    case GgmlType::I64: return GgmlBlock{1, 8};
    case GgmlType::F64: return GgmlBlock{1, 8};
    case GgmlType::IQ1_M: return GgmlBlock{QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32};
    case GgmlType::BF16: return GgmlBlock{1, 2};
    case GgmlType::TQ1_0: return GgmlBlock{QK_K, 2 + 4 * 13};
    case GgmlType::TQ2_0: return GgmlBlock{QK_K, 2 + 64};
    case GgmlType::MXFP4: return GgmlBlock{32, 1 + 16};
  }
  return std::nullopt;
}

bool ggml_can_dequantize(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16:
    case GgmlType::Q8_0: case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1:
    case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K:
      return true;
    default:
      return false;
  }
}

void dequantize_ggml(uint32_t type, const uint8_t* src, float* dst, int64_t n) {
  const auto block = ggml_block(type);
  MLA_CHECK(block && ggml_can_dequantize(type), "cannot dequantise ggml type ", ggml_type_name(type),
            " (supported: ", kDequantizable, ")");
  MLA_CHECK(n % block->block_size == 0, "dequantize_ggml: ", n, " elements is not a multiple of the ",
            ggml_type_name(type), " block size ", block->block_size);
  if (n == 0) return;
  const int64_t blocks = n / block->block_size;
  const float* ht = half_table();
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      break;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = ht[load_u16(src + 2 * i)];
      break;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(load_u16(src + 2 * i));
      break;
    case GgmlType::Q8_0: dequant_q8_0(src, dst, blocks, ht); break;
    case GgmlType::Q4_0: dequant_q4_0(src, dst, blocks, ht); break;
    case GgmlType::Q4_1: dequant_q4_1(src, dst, blocks, ht); break;
    case GgmlType::Q5_0: dequant_q5_0(src, dst, blocks, ht); break;
    case GgmlType::Q5_1: dequant_q5_1(src, dst, blocks, ht); break;
    case GgmlType::Q4_K: dequant_q4_k(src, dst, blocks, ht); break;
    case GgmlType::Q5_K: dequant_q5_k(src, dst, blocks, ht); break;
    case GgmlType::Q6_K: dequant_q6_k(src, dst, blocks, ht); break;
    default: break;
  }
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::UINT16: case GgufValueType::INT16:
    case GgufValueType::UINT32: case GgufValueType::INT32: case GgufValueType::UINT64: case GgufValueType::INT64:
      return true;
    default:
      return false;
  }
}

size_t GgufValue::array_size() const {
  if (type != GgufValueType::ARRAY) return 0;
  switch (element_type) {
    case GgufValueType::STRING: return strings.size();
    case GgufValueType::ARRAY: return arrays.size();
    case GgufValueType::FLOAT32: case GgufValueType::FLOAT64: return floats.size();
    default: return ints.size();
  }
}

double float32_to_shortest_double(float value) {
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf) - 1, value);
  if (result.ec != std::errc()) return static_cast<double>(value);
  *result.ptr = '\0';
  return std::strtod(buf, nullptr);
}

GgufFile GgufFile::open(const std::string& path) {
  GgufFile f;
  f.file_ = MappedFile(path);
  f.data_ = f.file_.data();
  f.size_ = f.file_.size();
  f.name_ = path;
  f.parse();
  return f;
}

GgufFile GgufFile::from_memory(const uint8_t* data, size_t size, const std::string& name) {
  GgufFile f;
  f.data_ = data;
  f.size_ = size;
  f.name_ = name;
  f.parse();
  return f;
}

void GgufFile::parse() {
  GgufFile& f = *this;
  const std::string& path = name_;
  Cursor in(data_, size_, path);

  in.set_context("the header");
  MLA_CHECK(size_ >= 4, path, ": not a GGUF file (", size_, " bytes, no magic)");
  const uint32_t magic = in.read<uint32_t>();
  MLA_CHECK(magic == kGgufMagic, path, ": not a GGUF file (magic 0x", std::hex, magic, std::dec,
            ", expected \"GGUF\")");
  f.version_ = in.read<uint32_t>();
  if (f.version_ == 0x02000000u || f.version_ == 0x03000000u)
    fail(path, ": big-endian GGUF files are not supported");
  MLA_CHECK(f.version_ != 1, path, ": GGUF version 1 is not supported (re-convert the model; versions 2 and 3 are read)");
  MLA_CHECK(f.version_ == 2 || f.version_ == 3, path, ": unsupported GGUF version ", f.version_,
            " (versions 2 and 3 are read)");
  const uint64_t tensor_count = in.read<uint64_t>();
  const uint64_t kv_count = in.read<uint64_t>();
  // Each key/value needs at least 8 (key length) + 4 (type) + 1 bytes, each tensor info 8 + 4 + 4 + 8.
  MLA_CHECK(kv_count <= in.remaining() / 13, path, ": header claims ", kv_count,
            " metadata entries, more than the file can hold");

  f.metadata_.reserve(static_cast<size_t>(kv_count));
  for (uint64_t k = 0; k < kv_count; ++k) {
    in.set_context("metadata entry #" + std::to_string(k) + " (key)");
    std::string key = in.read_string();
    in.set_context("metadata key '" + key + "'");
    const uint32_t raw_type = in.read<uint32_t>();
    MLA_CHECK(valid_value_type(raw_type), path, ": metadata key '", key, "' has unknown value type ", raw_type);
    GgufValue value = read_value(in, static_cast<GgufValueType>(raw_type), path, 0);
    MLA_CHECK(!f.metadata_index_.count(key), path, ": duplicate metadata key '", key, "'");
    f.metadata_index_.emplace(key, f.metadata_.size());
    f.metadata_.emplace_back(std::move(key), std::move(value));
  }

  if (const GgufValue* a = f.find("general.alignment")) {
    MLA_CHECK(a->is_integer(), path, ": metadata key 'general.alignment' must be an integer, got ",
              gguf_value_type_name(a->type));
    MLA_CHECK(a->int_value > 0 && (a->int_value & (a->int_value - 1)) == 0 && a->int_value <= (1 << 30), path,
              ": metadata key 'general.alignment' must be a power of two, got ", a->int_value);
    f.alignment_ = static_cast<uint64_t>(a->int_value);
  } else {
    f.alignment_ = kDefaultAlignment;
  }

  in.set_context("the tensor infos");
  MLA_CHECK(tensor_count <= in.remaining() / 24, path, ": header claims ", tensor_count,
            " tensors, more than the rest of the file can hold");
  f.tensors_.reserve(static_cast<size_t>(tensor_count));
  for (uint64_t t = 0; t < tensor_count; ++t) {
    in.set_context("tensor info #" + std::to_string(t) + " (name)");
    GgufTensorInfo info;
    info.name = in.read_string();
    in.set_context("tensor '" + info.name + "'");
    const uint32_t n_dims = in.read<uint32_t>();
    MLA_CHECK(n_dims <= kMaxDims, path, ": tensor '", info.name, "' has ", n_dims, " dimensions (at most ",
              kMaxDims, ")");
    info.dims.resize(n_dims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = in.read<uint64_t>();
      MLA_CHECK(dim <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), path, ": tensor '",
                info.name, "' has a negative or huge dimension ", static_cast<int64_t>(dim));
      MLA_CHECK(dim == 0 || numel <= (uint64_t{1} << 62) / dim, path, ": tensor '", info.name,
                "' has too many elements");
      numel *= dim;
      info.dims[d] = static_cast<int64_t>(dim);
    }
    info.numel = static_cast<int64_t>(numel);
    info.type = in.read<uint32_t>();
    info.offset = in.read<uint64_t>();
    const auto block = ggml_block(info.type);
    MLA_CHECK(block.has_value(), path, ": tensor '", info.name, "' has unknown ggml type ", info.type);
    const int64_t row = n_dims > 0 ? info.dims[0] : 1;
    MLA_CHECK(row % block->block_size == 0, path, ": tensor '", info.name, "' of type ",
              ggml_type_name(info.type), " has row length ", row, ", not a multiple of the block size ",
              block->block_size);
    info.nbytes = numel / static_cast<uint64_t>(block->block_size) * static_cast<uint64_t>(block->type_size);
    MLA_CHECK(!f.tensor_index_.count(info.name), path, ": duplicate tensor name '", info.name, "'");
    f.tensor_index_.emplace(info.name, f.tensors_.size());
    f.tensors_.push_back(std::move(info));
  }

  f.data_offset_ = align_up(in.pos(), f.alignment_);
  const uint64_t file_size = size_;
  for (const GgufTensorInfo& info : f.tensors_) {
    MLA_CHECK(info.offset % f.alignment_ == 0, path, ": tensor '", info.name, "' data offset ", info.offset,
              " is not a multiple of the alignment ", f.alignment_);
    const bool fits = f.data_offset_ <= file_size && info.offset <= file_size - f.data_offset_ &&
                      info.nbytes <= file_size - f.data_offset_ - info.offset;
    if (!fits)
      fail(path, ": tensor '", info.name, "' (", ggml_type_name(info.type), ", ", info.nbytes,
           " bytes at data offset ", info.offset, ") extends past the end of the file (data section starts at ",
           f.data_offset_, ", file has ", file_size, " bytes)");
  }
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
const GgufValue& require_key(const GgufFile& f, const std::string& key) {
  const GgufValue* v = f.find(key);
  MLA_CHECK(v != nullptr, f.path(), ": missing GGUF metadata key '", key, "'");
  return *v;
}
[[noreturn]] void wrong_type(const GgufFile& f, const std::string& key, const GgufValue& v, const char* wanted) {
  std::string got(gguf_value_type_name(v.type));
  if (v.is_array()) got = "array of " + std::string(gguf_value_type_name(v.element_type));
  fail(f.path(), ": GGUF metadata key '", key, "' is ", got, ", expected ", wanted);
}
bool integer_type(GgufValueType t) {
  GgufValue probe;
  probe.type = t;
  return probe.is_integer();
}
}  // namespace

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = require_key(*this, key);
  if (v.type != GgufValueType::STRING) wrong_type(*this, key, v, "string");
  return v.string_value;
}

int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue& v = require_key(*this, key);
  if (!v.is_integer()) wrong_type(*this, key, v, "an integer");
  MLA_CHECK(!(v.type == GgufValueType::UINT64 && v.int_value < 0), path(), ": GGUF metadata key '", key,
            "' holds ", static_cast<uint64_t>(v.int_value), ", too large");
  return v.int_value;
}

double GgufFile::get_float(const std::string& key) const {
  const GgufValue& v = require_key(*this, key);
  if (v.is_float()) return v.float_value;
  if (v.is_integer()) return static_cast<double>(v.int_value);
  wrong_type(*this, key, v, "a number");
}

bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue& v = require_key(*this, key);
  if (v.type != GgufValueType::BOOL) wrong_type(*this, key, v, "bool");
  return v.int_value != 0;
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue& v = require_key(*this, key);
  if (!v.is_array() || v.element_type != GgufValueType::STRING) wrong_type(*this, key, v, "array of string");
  return v.strings;
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue& v = require_key(*this, key);
  if (!v.is_array() || !(integer_type(v.element_type) || v.element_type == GgufValueType::BOOL))
    wrong_type(*this, key, v, "array of integers");
  return v.ints;
}

std::vector<double> GgufFile::get_float_array(const std::string& key) const {
  const GgufValue& v = require_key(*this, key);
  if (!v.is_array()) wrong_type(*this, key, v, "array of numbers");
  if (v.element_type == GgufValueType::FLOAT32 || v.element_type == GgufValueType::FLOAT64) return v.floats;
  if (integer_type(v.element_type)) return {v.ints.begin(), v.ints.end()};
  wrong_type(*this, key, v, "array of numbers");
}

std::string GgufFile::get_string(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}
int64_t GgufFile::get_int(const std::string& key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}
double GgufFile::get_float(const std::string& key, double fallback) const {
  return has(key) ? get_float(key) : fallback;
}
bool GgufFile::get_bool(const std::string& key, bool fallback) const {
  return has(key) ? get_bool(key) : fallback;
}

void GgufFile::dequantize(const GgufTensorInfo& info, float* dst, int num_threads) const {
  MLA_CHECK(ggml_can_dequantize(info.type), path(), ": tensor '", info.name, "' has type ",
            ggml_type_name(info.type), ", which mlaforge cannot dequantise (supported: ", kDequantizable, ")");
  const GgmlBlock block = *ggml_block(info.type);
  const int64_t blocks = info.numel / block.block_size;
  const uint8_t* src = tensor_data(info);
  const int threads = num_threads > 0 ? num_threads : default_num_threads();
  constexpr int64_t kParallelElements = 1 << 18;
  if (threads <= 1 || info.numel < kParallelElements) {
    dequantize_ggml(info.type, src, dst, info.numel);
    return;
  }
  // Chunks of whole blocks; each thread writes a disjoint slice of dst.
  const size_t chunks = static_cast<size_t>(std::min<int64_t>(blocks, int64_t{threads} * 4));
  parallel_for(chunks, threads, [&](size_t begin, size_t end) {
    for (size_t c = begin; c < end; ++c) {
      const int64_t b0 = blocks * static_cast<int64_t>(c) / static_cast<int64_t>(chunks);
      const int64_t b1 = blocks * static_cast<int64_t>(c + 1) / static_cast<int64_t>(chunks);
      dequantize_ggml(info.type, src + b0 * block.type_size, dst + b0 * block.block_size,
                      (b1 - b0) * block.block_size);
    }
  });
}

std::vector<float> GgufFile::dequantize(const GgufTensorInfo& info, int num_threads) const {
  std::vector<float> out(static_cast<size_t>(info.numel));
  dequantize(info, out.data(), num_threads);
  return out;
}

}  // namespace mlaforge
