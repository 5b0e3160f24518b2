#pragma once
// Read-only memory-mapped file. Checkpoints are mapped, never read whole, so loading a model costs
// page-cache, not a second copy in anonymous memory.
#include <cstddef>
#include <cstdint>
#include <string>

namespace mlaforge {

class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);  // throws mlaforge::Error naming the path
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release();
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Drops the pages of [begin, begin + bytes) of a read-only mapping from this process's resident set
// (they stay in the page cache and fault back in on the next read). Streaming readers call it after
// copying a tensor out, so reading a checkpoint tensor by tensor never holds the whole file in RSS.
void drop_mapped_pages(const void* begin, size_t bytes);

// Whole-file read for small text files (config.json, tokenizer.json). Throws naming the path.
std::string read_text_file(const std::string& path);
bool file_exists(const std::string& path);
bool is_directory(const std::string& path);

}  // namespace mlaforge
