#pragma once
// GGUF (llama.cpp) reader, torch-free: header, metadata key/values, tensor infos and dequantisation to
// float32. Versions 2 and 3 (little-endian) are read; the file is memory-mapped, never read whole.
//
// Layout: "GGUF" u32 version, u64 tensor_count, u64 kv_count, then kv_count x (string key, u32 type,
// value), tensor_count x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset), padding
// to general.alignment (default 32), then the data section; tensor offsets are relative to its start.
// Strings are u64 length + bytes (no terminator). Arrays are u32 element type, u64 count, elements.
//
// Every count, length, offset and size is checked against the file: a malformed file throws
// mlaforge::Error naming the file and the key or tensor at fault.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/mmap_file.h"

namespace mlaforge {

enum class GgufValueType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};
std::string_view gguf_value_type_name(GgufValueType type);

// ggml tensor element types (ggml.h numbering). Only some can be dequantised (see ggml_can_dequantize).
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
};

// "Q4_1", "BF16", ...; "type#N" for numbers ggml does not (or no longer) define.
std::string ggml_type_name(uint32_t type);
// Elements per block and bytes per block; nullopt for unknown type numbers.
struct GgmlBlock {
  int64_t block_size;  // elements
  int64_t type_size;   // bytes
};
std::optional<GgmlBlock> ggml_block(uint32_t type);
// Types dequantize_ggml understands: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants
// Q4_K, Q5_K, Q6_K (what Q4_K_M / Q5_K_M / Q6_K files are made of). Results are bit-identical to ggml's
// reference dequantisation (and the gguf Python package).
bool ggml_can_dequantize(uint32_t type);
// Dequantises n elements (n a multiple of the block size) from src to dst, single-threaded.
// Throws for types ggml_can_dequantize rejects.
void dequantize_ggml(uint32_t type, const uint8_t* src, float* dst, int64_t n);

// One metadata value. Integers are widened to int64 (uint64 values above INT64_MAX keep their bits and
// `is_unsigned`), floats to double, bools to int 0/1 in `ints` arrays. Arrays keep their element type
// and store elements in the vector for that kind; arrays of arrays are kept in `arrays`.
struct GgufValue {
  GgufValueType type = GgufValueType::UINT8;
  GgufValueType element_type = GgufValueType::UINT8;  // arrays only
  int64_t int_value = 0;    // integer and bool scalars
  double float_value = 0;   // FLOAT32 / FLOAT64 scalars (FLOAT32 converted exactly)
  std::string string_value;
  std::vector<int64_t> ints;           // arrays of integers / bools
  std::vector<double> floats;          // arrays of FLOAT32 / FLOAT64
  std::vector<std::string> strings;    // arrays of strings
  std::vector<GgufValue> arrays;       // arrays of arrays

  bool is_integer() const;  // integer scalar types (not bool)
  bool is_float() const { return type == GgufValueType::FLOAT32 || type == GgufValueType::FLOAT64; }
  bool is_array() const { return type == GgufValueType::ARRAY; }
  size_t array_size() const;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the innermost (row length)
  uint32_t type = 0;          // GgmlType number
  uint64_t offset = 0;        // relative to the data section
  int64_t numel = 0;
  uint64_t nbytes = 0;
  // Row-major (PyTorch / Hugging Face) shape: dims reversed. A HF [out, in] matrix has dims [in, out].
  std::vector<int64_t> shape() const { return {dims.rbegin(), dims.rend()}; }
};

class GgufFile {
 public:
  // Maps and parses; throws mlaforge::Error naming the file (and the key / tensor) on malformed input.
  static GgufFile open(const std::string& path);
  // Parses bytes owned by the caller, who keeps them alive while the GgufFile is used (tests, fuzzing).
  // `name` stands for the file in error messages.
  static GgufFile from_memory(const uint8_t* data, size_t size, const std::string& name);

  const std::string& path() const { return name_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute start of the data section
  size_t file_size() const { return size_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }
  // Typed getters: throw naming the file and key when absent or of another type.
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;     // any integer type (uint64 > INT64_MAX rejected)
  double get_float(const std::string& key) const;    // FLOAT32/FLOAT64 (or an integer)
  bool get_bool(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  std::vector<double> get_float_array(const std::string& key) const;
  // With a fallback when the key is absent (still throws when present with the wrong type).
  std::string get_string(const std::string& key, const std::string& fallback) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  const uint8_t* tensor_data(const GgufTensorInfo& info) const { return data_ + data_offset_ + info.offset; }

  // Dequantises a tensor into dst (info.numel floats), split over num_threads (0: default_num_threads())
  // for large tensors. Throws naming the tensor and its type when the type is not supported.
  void dequantize(const GgufTensorInfo& info, float* dst, int num_threads = 0) const;
  std::vector<float> dequantize(const GgufTensorInfo& info, int num_threads = 0) const;

 private:
  GgufFile() = default;
  void parse();
  MappedFile file_;  // empty for from_memory
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string name_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::unordered_map<std::string, size_t> metadata_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

// FLOAT32 metadata (rms eps 1e-5 stored as 9.99999975e-06) as the double with the shortest decimal
// spelling that rounds to the same float, so configs read 1e-05 as written by the converter's source.
double float32_to_shortest_double(float value);

}  // namespace mlaforge
