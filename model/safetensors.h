#pragma once
// Safetensors reading and writing (torch-free).
//
// Format: 8-byte little-endian header length N, then N bytes of UTF-8 JSON (an object mapping tensor
// names to {dtype, shape, data_offsets}, plus an optional "__metadata__" object of strings), then the
// data section. Offsets are relative to the data section and must tile it exactly.
//
// Files are memory-mapped, and the header is validated completely before any offset is trusted: a
// checkpoint is untrusted input, and parse_safetensors_header is the function the fuzzer exercises.
#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/mmap_file.h"

namespace mlaforge {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data section

  int64_t numel() const;
  uint64_t nbytes() const;
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in file order of data offsets
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // 8 + header length

  // nullptr when absent.
  const TensorInfo* find(std::string_view name) const;

  // name -> index into `tensors`; filled by parse_safetensors_header.
  std::map<std::string, size_t, std::less<>> index;
};

// Largest header accepted, as in the reference implementation.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// Parses and validates the header of a complete safetensors file held in [data, data + size).
// Throws mlaforge::Error naming `file_name` (and the tensor, where one is at fault) on any violation.
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, const std::string& file_name);

// One memory-mapped, validated safetensors file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // throws mlaforge::Error

  const SafetensorsHeader& header() const { return header_; }
  // Start of the tensor's bytes inside the mapping (not necessarily aligned for its dtype).
  const uint8_t* tensor_data(const TensorInfo& info) const;
  const std::string& path() const { return file_.path(); }

 private:
  MappedFile file_;
  SafetensorsHeader header_;
};

// A model's weights: one safetensors file, or a folder with model.safetensors, a sharded
// model.safetensors.index.json, or exactly one *.safetensors file.
class SafetensorsCheckpoint {
 public:
  struct TensorRef {
    const TensorInfo* info;
    const uint8_t* data;
    const std::string* file;  // path of the file holding it
  };

  // Throws mlaforge::Error naming the path (and shard/tensor) on any problem.
  static SafetensorsCheckpoint open(const std::string& path_or_dir);

  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  // Throws naming the checkpoint and the tensor (and a close name, if any) when absent.
  TensorRef get(const std::string& name) const;
  // The first file's __metadata__ (for a sharded checkpoint: the first shard in name order).
  const std::map<std::string, std::string>& metadata() const;
  uint64_t total_bytes() const;  // sum of all tensors' data bytes
  const std::string& path() const { return path_; }
  size_t num_files() const { return files_.size(); }

 private:
  struct Entry {
    const TensorInfo* info;
    const SafetensorsFile* file;
  };
  void add_file(std::unique_ptr<SafetensorsFile> file);
  void open_index(const std::string& dir, const std::string& index_path);

  std::string path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;  // unique_ptr: entries point into them
  std::map<std::string, Entry> entries_;
};

// ---- writing ---------------------------------------------------------------------------------------

struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // numel * dtype_size bytes, little-endian
};

// Writes tensors in the given order (header keys: __metadata__ first, then the tensors in that order;
// header padded with spaces to a multiple of 8 bytes). Written to path + ".tmp", fsynced, renamed.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

struct ShardedWriteResult {
  std::vector<std::string> files;  // full paths of the safetensors files written, in order
  uint64_t total_bytes = 0;        // sum of tensor data bytes (the index's total_size)
};

// Splits tensors, in order, into shards of at most max_shard_bytes of tensor data (a tensor larger than
// that gets a shard of its own). One shard: writes dir/<prefix>.safetensors and no index. Several:
// <prefix>-00001-of-0000N.safetensors ... plus <prefix>.safetensors.index.json. Stale files of the
// other layout (or of a different shard count) under the same prefix are removed afterwards, so a
// folder never holds two conflicting checkpoints. `metadata` goes into every shard.
ShardedWriteResult write_sharded_safetensors(const std::string& dir, const std::string& prefix,
                                             const std::vector<TensorToWrite>& tensors, uint64_t max_shard_bytes,
                                             const std::map<std::string, std::string>& metadata = {});

// Writes tensors as they are produced, holding none of them in memory: each tensor's bytes go to the
// current shard's spill file at once, and a full shard is written as header + the spill file's bytes
// (copy_file_range) — what lets a conversion stream a model larger than RAM. Shards are written under temporary names as they fill and
// renamed to the final <prefix>-0000k-of-0000N layout (or <prefix>.safetensors when one shard suffices)
// by finish(), which writes the index last; stale files of other layouts are then removed, as in
// write_sharded_safetensors. Until finish() the folder's previous checkpoint files are untouched.
class StreamingShardWriter {
 public:
  StreamingShardWriter(std::string dir, std::string prefix, uint64_t max_shard_bytes,
                       std::map<std::string, std::string> metadata = {{"format", "pt"}});
  ~StreamingShardWriter();  // removes unfinished temporary shards
  StreamingShardWriter(const StreamingShardWriter&) = delete;
  StreamingShardWriter& operator=(const StreamingShardWriter&) = delete;

  // Copies the bytes; throws on a duplicate name or a size that does not match dtype and shape.
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data);
  ShardedWriteResult finish();
  uint64_t bytes_added() const { return total_bytes_; }

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t bytes = 0;  // in the spill file, in order
  };
  void flush();
  void close_spill();  // closes and removes the spill file

  std::string dir_, prefix_;
  uint64_t max_shard_bytes_;
  std::map<std::string, std::string> metadata_;
  std::vector<Pending> pending_;
  std::string spill_path_;  // the current shard's tensor data, copied behind its header by flush()
  int spill_fd_ = -1;
  uint64_t pending_bytes_ = 0, total_bytes_ = 0;
  std::vector<std::string> temp_files_;                  // written shards, in order
  std::vector<std::vector<std::string>> shard_names_;    // tensor names of each written shard
  std::set<std::string> names_;
  bool finished_ = false;
};

}  // namespace mlaforge
