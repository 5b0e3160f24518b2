#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <tuple>

#include "core/error.h"
#include "core/strings.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace mlaforge {

// ---- TensorInfo / SafetensorsHeader ----------------------------------------------------------------

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

uint64_t TensorInfo::nbytes() const { return static_cast<uint64_t>(numel()) * dtype_size(dtype); }

const TensorInfo* SafetensorsHeader::find(std::string_view name) const {
  auto it = index.find(name);
  return it == index.end() ? nullptr : &tensors[it->second];
}

namespace {

// A valid header nests three levels deep (object -> tensor object -> shape array). Anything much
// deeper is rejected while parsing, before nlohmann builds it.
constexpr int kMaxJsonDepth = 16;

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

std::string offsets_string(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + "," + std::to_string(end) + "]";
}

// A short description of an untrusted JSON value for error messages: scalars verbatim (strings cut
// short), containers by type only, so a hostile header cannot blow up the message.
std::string describe(const json& value) {
  if (value.is_structured()) return std::string("an ") + value.type_name();
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 48) text = text.substr(0, 45) + "...";
  return text;
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

// Non-negative JSON integer, or nullopt (negative numbers, floats and non-numbers are not).
std::optional<uint64_t> as_unsigned(const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer() && value.get<int64_t>() >= 0) return value.get<uint64_t>();
  return std::nullopt;
}

// Parses the header text. nlohmann keeps the last of duplicate keys silently, so a parser callback
// tracks the keys of every open object and rejects repeats; it also bounds the nesting depth.
json parse_header_json(const char* first, const char* last, const std::string& file) {
  std::vector<std::set<std::string>> open_objects;
  bool root_is_object = false;
  std::string top_key;  // the tensor (or __metadata__) being parsed, for messages
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        MLA_CHECK(depth < kMaxJsonDepth, file, ": header JSON nests deeper than ", kMaxJsonDepth,
                  " levels (a safetensors header needs 3)");
        if (depth == 0) root_is_object = event == json::parse_event_t::object_start;
        if (event == json::parse_event_t::object_start) open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        open_objects.pop_back();
        break;
      case json::parse_event_t::key: {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (depth == 1 && root_is_object) top_key = key;
        if (open_objects.back().insert(key).second) break;
        if (depth == 1 && root_is_object) fail(file, ": tensor '", key, "' appears twice in the header");
        if (depth == 2 && root_is_object && top_key == "__metadata__")
          fail(file, ": __metadata__ key '", key, "' appears twice");
        if (depth == 2 && root_is_object) fail(file, ": tensor '", top_key, "': field '", key, "' appears twice");
        fail(file, ": header JSON has the key '", key, "' twice in one object");
      }
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(first, last, callback);
  } catch (const json::exception& e) {
    fail(file, ": header is not valid JSON (", e.what(), ")");
  }
}

std::map<std::string, std::string> parse_metadata(const json& value, const std::string& file) {
  MLA_CHECK(value.is_object(), file, ": __metadata__ is ", describe(value), ", expected an object of strings");
  std::map<std::string, std::string> metadata;
  for (const auto& [key, item] : value.items()) {
    MLA_CHECK(item.is_string(), file, ": __metadata__ '", key, "' is ", describe(item), ", expected a string");
    metadata.emplace(key, item.get<std::string>());
  }
  return metadata;
}

DType parse_dtype(const json& value, const std::string& where) {
  MLA_CHECK(value.is_string(), where, "dtype is ", describe(value), ", expected a string");
  const std::string& name = value.get_ref<const std::string&>();
  const auto dtype = dtype_from_name(name);
  MLA_CHECK(dtype.has_value(), where, "unsupported dtype '", name,
            "' (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
  return *dtype;
}

std::vector<int64_t> parse_shape(const json& value, const std::string& where) {
  MLA_CHECK(value.is_array(), where, "shape is ", describe(value), ", expected an array of integers");
  std::vector<int64_t> shape;
  for (const json& dim : value) {
    // nlohmann stores non-negative integers as unsigned; a huge unsigned must not read as negative.
    if (dim.is_number_integer() && !dim.is_number_unsigned() && dim.get<int64_t>() < 0)
      fail(where, "shape has a negative dimension ", dim.get<int64_t>());
    const auto d = as_unsigned(dim);
    MLA_CHECK(d.has_value(), where, "shape has a dimension ", describe(dim), ", expected a non-negative integer");
    MLA_CHECK(*d <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), where, "shape dimension ", *d,
              " is too large");
    shape.push_back(static_cast<int64_t>(*d));
  }
  return shape;
}

std::pair<uint64_t, uint64_t> parse_offsets(const json& value, const std::string& where) {
  MLA_CHECK(value.is_array() && value.size() == 2, where, "data_offsets is ", describe(value),
            value.is_array() ? " of " + std::to_string(value.size()) + " items" : "", ", expected [begin, end]");
  const auto begin = as_unsigned(value[0]);
  const auto end = as_unsigned(value[1]);
  MLA_CHECK(begin && end, where, "data_offsets [", describe(value[0]), ",", describe(value[1]),
            "] must be non-negative integers");
  MLA_CHECK(*begin <= *end, where, "data_offsets ", offsets_string(*begin, *end), " end before they begin");
  return {*begin, *end};
}

// One "name": {dtype, shape, data_offsets} entry, checked on its own (layout is checked afterwards).
TensorInfo parse_tensor_entry(const std::string& name, const json& value, uint64_t data_size,
                              const std::string& file) {
  const std::string where = file + ": tensor '" + name + "': ";
  MLA_CHECK(value.is_object(), where, "entry is ", describe(value),
            ", expected an object with dtype, shape and data_offsets");
  for (const auto& [key, item] : value.items()) {
    MLA_CHECK(key == "dtype" || key == "shape" || key == "data_offsets", where, "unexpected field '", key,
              "' (expected dtype, shape, data_offsets)");
  }
  for (const char* key : {"dtype", "shape", "data_offsets"})
    MLA_CHECK(value.contains(key), where, "missing field '", key, "'");

  TensorInfo info;
  info.name = name;
  info.dtype = parse_dtype(value["dtype"], where);
  info.shape = parse_shape(value["shape"], where);
  std::tie(info.begin, info.end) = parse_offsets(value["data_offsets"], where);

  uint64_t bytes = dtype_size(info.dtype);
  for (int64_t d : info.shape) {
    MLA_CHECK(checked_mul(bytes, static_cast<uint64_t>(d), &bytes), where, "shape ", shape_string(info.shape),
              " x ", dtype_name(info.dtype), " overflows 64 bits");
  }
  MLA_CHECK(bytes == info.end - info.begin, where, "shape ", shape_string(info.shape), " x ",
            dtype_name(info.dtype), " = ", bytes, " bytes but data_offsets span ", info.end - info.begin);
  MLA_CHECK(info.end <= data_size, where, "data_offsets ", offsets_string(info.begin, info.end),
            " reach past the end of the data section (", data_size, " bytes; truncated file?)");
  return info;
}

// The format requires the spans, sorted by offset, to tile the data section exactly: no overlap, no
// hole, nothing after the last one. `tensors` must be sorted by (begin, end).
void check_layout(const std::vector<TensorInfo>& tensors, uint64_t data_size, const std::string& file) {
  uint64_t covered = 0;  // the data section [0, covered) is accounted for
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& t : tensors) {
    const std::string where = file + ": tensor '" + t.name + "': data_offsets " + offsets_string(t.begin, t.end);
    if (t.begin < covered)
      fail(where, " overlap tensor '", previous->name, "' ", offsets_string(previous->begin, previous->end));
    if (t.begin > covered && previous == nullptr)
      fail(where, " leave bytes [0,", t.begin, ") of the data section unused (tensors must tile it)");
    if (t.begin > covered)
      fail(where, " leave a hole of ", t.begin - covered, " bytes after tensor '", previous->name, "' ",
           offsets_string(previous->begin, previous->end), " (tensors must tile the data section)");
    covered = t.end;
    previous = &t;
  }
  if (covered == data_size) return;
  if (previous == nullptr) fail(file, ": no tensors but a data section of ", data_size, " bytes");
  fail(file, ": ", data_size - covered, " bytes of data after the last tensor '", previous->name, "' ",
       offsets_string(previous->begin, previous->end), " (data section is ", data_size, " bytes)");
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, const std::string& file) {
  MLA_CHECK(size >= 8, file, ": ", size,
            " bytes is too short for a safetensors file (needs an 8-byte header length)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];  // little-endian, host-independent
  MLA_CHECK(header_len <= kMaxSafetensorsHeaderBytes, file, ": header length ", header_len,
            " exceeds the 100 MB limit (not a safetensors file?)");
  MLA_CHECK(header_len <= size - 8, file, ": header length ", header_len, " reaches past the end of the file (",
            size, " bytes; truncated?)");

  const char* text = reinterpret_cast<const char*>(data + 8);
  // nlohmann stops at a NUL byte as if the input ended there, which would hide whatever follows it.
  // Raw NUL can never be part of valid JSON text, so reject it outright (as the reference does).
  if (const void* nul = std::memchr(text, 0, header_len))
    fail(file, ": header contains a NUL byte at offset ", 8 + (static_cast<const char*>(nul) - text),
         " (not valid JSON)");
  const json root = parse_header_json(text, text + header_len, file);
  MLA_CHECK(root.is_object(), file, ": header is ", describe(root), ", expected a JSON object");

  SafetensorsHeader header;
  header.data_start = 8 + header_len;
  const uint64_t data_size = size - header.data_start;
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (!value.is_null())
        header.metadata = parse_metadata(value, file);  // null: none, as the reference reads it
    } else {
      header.tensors.push_back(parse_tensor_entry(key, value, data_size, file));
    }
  }
  std::sort(header.tensors.begin(), header.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  check_layout(header.tensors, data_size, file);
  for (size_t i = 0; i < header.tensors.size(); ++i) header.index.emplace(header.tensors[i].name, i);
  return header;
}

// ---- SafetensorsFile ------------------------------------------------------------------------------

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  header_ = parse_safetensors_header(file_.data(), file_.size(), path);
}

const uint8_t* SafetensorsFile::tensor_data(const TensorInfo& info) const {
  return file_.data() + header_.data_start + info.begin;
}

// ---- SafetensorsCheckpoint ------------------------------------------------------------------------

namespace {

bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

// A name close to `wanted` (a typo, or a missing/extra prefix such as "model."), or "" if none.
template <typename Map>
std::string close_name(const Map& entries, const std::string& wanted) {
  std::string best;
  size_t best_distance = std::max<size_t>(2, wanted.size() / 10) + 1;
  for (const auto& [name, entry] : entries) {
    const size_t d = edit_distance(name, wanted);
    if (d < best_distance) best_distance = d, best = name;
  }
  if (!best.empty()) return best;
  for (const auto& [name, entry] : entries) {
    if (ends_with(name, "." + wanted) || ends_with(wanted, "." + name)) return name;
  }
  return "";
}

// Shard names come from an untrusted index: keep them inside the checkpoint folder.
void check_shard_name(const std::string& shard, const std::string& index_path) {
  const fs::path p(shard);
  bool escapes = shard.empty() || p.is_absolute();
  for (const auto& part : p) escapes = escapes || part == "..";
  MLA_CHECK(!escapes, index_path, ": shard file name '", shard, "' must be a relative path inside the folder");
}

}  // namespace

SafetensorsCheckpoint SafetensorsCheckpoint::open(const std::string& path_or_dir) {
  SafetensorsCheckpoint ckpt;
  ckpt.path_ = path_or_dir;
  if (file_exists(path_or_dir)) {
    if (ends_with(path_or_dir, ".index.json")) {
      ckpt.open_index(fs::path(path_or_dir).parent_path().string(), path_or_dir);
    } else {
      ckpt.add_file(std::make_unique<SafetensorsFile>(path_or_dir));
    }
    return ckpt;
  }
  MLA_CHECK(is_directory(path_or_dir), path_or_dir, ": no such file or directory");

  const fs::path dir(path_or_dir);
  // Same preference as transformers: the single file, then the sharded index.
  if (file_exists((dir / "model.safetensors").string())) {
    ckpt.add_file(std::make_unique<SafetensorsFile>((dir / "model.safetensors").string()));
    return ckpt;
  }
  if (file_exists((dir / "model.safetensors.index.json").string())) {
    ckpt.open_index(dir.string(), (dir / "model.safetensors.index.json").string());
    return ckpt;
  }
  std::vector<std::string> candidates;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_regular_file(ec) && entry.path().extension() == ".safetensors")
      candidates.push_back(entry.path().string());
  }
  MLA_CHECK(!ec, path_or_dir, ": cannot list the folder (", ec.message(), ")");
  MLA_CHECK(candidates.size() == 1, path_or_dir,
            ": expected model.safetensors, model.safetensors.index.json or "
            "exactly one *.safetensors file, found ",
            candidates.size(), " *.safetensors files");
  ckpt.add_file(std::make_unique<SafetensorsFile>(candidates[0]));
  return ckpt;
}

void SafetensorsCheckpoint::add_file(std::unique_ptr<SafetensorsFile> file) {
  for (const TensorInfo& info : file->header().tensors) {
    const auto [it, inserted] = entries_.emplace(info.name, Entry{&info, file.get()});
    MLA_CHECK(inserted, path_, ": tensor '", info.name, "' appears in two files: ", it->second.file->path(),
              " and ", file->path());
  }
  files_.push_back(std::move(file));
}

void SafetensorsCheckpoint::open_index(const std::string& dir, const std::string& index_path) {
  json index;
  try {
    index = json::parse(read_text_file(index_path));
  } catch (const json::exception& e) {
    fail(index_path, ": not valid JSON (", e.what(), ")");
  }
  MLA_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(), index_path,
            ": expected an object with a \"weight_map\" object");
  const json& weight_map = index["weight_map"];
  MLA_CHECK(!weight_map.empty(), index_path, ": weight_map is empty");

  std::map<std::string, std::vector<std::string>> by_shard;  // shard file -> tensor names
  for (const auto& [name, shard] : weight_map.items()) {
    MLA_CHECK(shard.is_string(), index_path, ": weight_map['", name, "'] is ", describe(shard),
              ", expected a file name");
    by_shard[shard.get<std::string>()].push_back(name);
  }
  for (const auto& [shard, names] : by_shard) {
    check_shard_name(shard, index_path);
    const std::string shard_path = (fs::path(dir) / shard).string();
    MLA_CHECK(file_exists(shard_path), index_path, ": shard '", shard, "' (holding tensor '", names.front(),
              "' and ", names.size() - 1, " more) not found: ", shard_path);
  }
  for (const auto& [shard, names] : by_shard) {
    auto file = std::make_unique<SafetensorsFile>((fs::path(dir) / shard).string());
    for (const std::string& name : names) {
      MLA_CHECK(file->header().find(name) != nullptr, index_path, ": tensor '", name, "' is mapped to shard '",
                shard, "' but that file has no such tensor");
    }
    add_file(std::move(file));
  }
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) out.push_back(name);
  return out;
}

bool SafetensorsCheckpoint::contains(const std::string& name) const { return entries_.count(name) != 0; }

SafetensorsCheckpoint::TensorRef SafetensorsCheckpoint::get(const std::string& name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) {
    const std::string suggestion = close_name(entries_, name);
    fail(path_, ": checkpoint has no tensor '", name, "'",
         suggestion.empty() ? std::string() : " (did you mean '" + suggestion + "'?)");
  }
  const Entry& e = it->second;
  return TensorRef{e.info, e.file->tensor_data(*e.info), &e.file->path()};
}

const std::map<std::string, std::string>& SafetensorsCheckpoint::metadata() const {
  static const std::map<std::string, std::string> empty;
  return files_.empty() ? empty : files_.front()->header().metadata;
}

uint64_t SafetensorsCheckpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, entry] : entries_) total += entry.info->nbytes();
  return total;
}

// ---- writing --------------------------------------------------------------------------------------

namespace {

// Writes a file under a temporary name and renames it into place on commit(), so readers never see a
// half-written checkpoint; an uncommitted file is removed on destruction.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    MLA_CHECK(fd_ >= 0, tmp_, ": cannot create (", std::strerror(errno), ")");
  }
  ~AtomicFileWriter() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t size) {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t n = ::write(fd_, p, std::min<size_t>(size, size_t{1} << 30));
      if (n < 0 && errno == EINTR) continue;
      MLA_CHECK(n > 0, tmp_, ": write failed (", std::strerror(errno), ")");
      p += n;
      size -= static_cast<size_t>(n);
    }
  }

  // Appends `size` bytes read from `in` (from its start), in the kernel where it can (copy_file_range).
  void copy_from(int in, uint64_t size, const std::string& in_name) {
    off_t in_offset = 0;
    while (size > 0) {
      const ssize_t n = ::copy_file_range(in, &in_offset, fd_, nullptr, std::min<uint64_t>(size, uint64_t{1} << 30), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL)) break;  // plain copy
      MLA_CHECK(n > 0, tmp_, ": copying from ", in_name, " failed (", n < 0 ? std::strerror(errno) : "end of file", ")");
      size -= static_cast<uint64_t>(n);
    }
    std::vector<char> buffer(size > 0 ? size_t{8} << 20 : 0);
    while (size > 0) {
      const ssize_t n = ::pread(in, buffer.data(), std::min<uint64_t>(size, buffer.size()), in_offset);
      if (n < 0 && errno == EINTR) continue;
      MLA_CHECK(n > 0, in_name, ": read failed (", n < 0 ? std::strerror(errno) : "end of file", ")");
      write(buffer.data(), static_cast<size_t>(n));
      in_offset += n;
      size -= static_cast<uint64_t>(n);
    }
  }

  void commit() {
    MLA_CHECK(::fsync(fd_) == 0, tmp_, ": fsync failed (", std::strerror(errno), ")");
    const int rc = ::close(fd_);
    fd_ = -1;
    MLA_CHECK(rc == 0, tmp_, ": close failed (", std::strerror(errno), ")");
    MLA_CHECK(::rename(tmp_.c_str(), path_.c_str()) == 0, path_, ": cannot rename from ", tmp_, " (",
              std::strerror(errno), ")");
    committed_ = true;
    // Make the rename itself durable; failure here loses nothing already written, so it is not fatal.
    std::string dir = fs::path(path_).parent_path().string();
    if (dir.empty()) dir = ".";
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Data bytes of a tensor to write, validating what the reader would later reject.
uint64_t checked_nbytes(const TensorToWrite& t, const std::string& path) {
  MLA_CHECK(t.name != "__metadata__", path, ": '__metadata__' is reserved and cannot name a tensor");
  uint64_t bytes = dtype_size(t.dtype);
  for (int64_t d : t.shape) {
    MLA_CHECK(d >= 0, path, ": tensor '", t.name, "': negative dimension in shape ", shape_string(t.shape));
    MLA_CHECK(checked_mul(bytes, static_cast<uint64_t>(d), &bytes), path, ": tensor '", t.name, "': shape ",
              shape_string(t.shape), " is too large");
  }
  MLA_CHECK(bytes == 0 || t.data != nullptr, path, ": tensor '", t.name, "' has no data");
  return bytes;
}

void check_unique_names(const std::vector<TensorToWrite>& tensors, const std::string& path) {
  std::set<std::string_view> seen;
  for (const TensorToWrite& t : tensors)
    MLA_CHECK(seen.insert(t.name).second, path, ": tensor '", t.name, "' given twice");
}

// Header text, padded with spaces to a multiple of 8 so the data section starts 8-byte aligned.
std::string build_header(const std::vector<TensorToWrite>& tensors, const std::vector<uint64_t>& sizes,
                         const std::map<std::string, std::string>& metadata, const std::string& path) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    nlohmann::ordered_json entry;
    entry["dtype"] = std::string(dtype_name(tensors[i].dtype));
    entry["shape"] = tensors[i].shape;
    entry["data_offsets"] = {offset, offset + sizes[i]};
    header[tensors[i].name] = std::move(entry);
    offset += sizes[i];
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name that is not valid UTF-8
    fail(path, ": cannot encode the header (", e.what(), ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  check_unique_names(tensors, path);
  std::vector<uint64_t> sizes;
  sizes.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) sizes.push_back(checked_nbytes(t, path));
  const std::string header = build_header(tensors, sizes, metadata, path);
  MLA_CHECK(header.size() <= kMaxSafetensorsHeaderBytes, path, ": header of ", header.size(),
            " bytes exceeds the 100 MB limit readers accept");

  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  AtomicFileWriter out(path);
  out.write(length, sizeof(length));
  out.write(header.data(), header.size());
  for (size_t i = 0; i < tensors.size(); ++i) out.write(tensors[i].data, sizes[i]);
  out.commit();
}

namespace {

std::string shard_file_name(const std::string& prefix, size_t index, size_t count) {
  char suffix[64];
  std::snprintf(suffix, sizeof(suffix), "-%05zu-of-%05zu.safetensors", index, count);
  return prefix + suffix;
}

// True for "<prefix>-NNNNN-of-NNNNN.safetensors".
bool is_shard_file_name(const std::string& name, const std::string& prefix) {
  const std::string tail = ".safetensors";
  if (name.size() != prefix.size() + 15 + tail.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      !ends_with(name, tail))
    return false;
  const std::string middle = name.substr(prefix.size(), 15);  // "-NNNNN-of-NNNNN"
  for (size_t i = 0; i < middle.size(); ++i) {
    const bool digit_slot = (i >= 1 && i <= 5) || i >= 10;
    if (digit_slot ? !std::isdigit(static_cast<unsigned char>(middle[i])) : middle[i] != "-NNNNN-of-"[i])
      return false;
  }
  return true;
}

// Greedy split in the given order, as transformers does: start a new shard when the next tensor would
// overflow a non-empty one. Returns the index of the first tensor of each shard.
std::vector<size_t> plan_shards(const std::vector<uint64_t>& sizes, uint64_t max_shard_bytes) {
  std::vector<size_t> starts;
  uint64_t current = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (starts.empty() || current + sizes[i] > max_shard_bytes) {
      starts.push_back(i);
      current = 0;
    }
    current += sizes[i];
  }
  return starts;
}

// Removes checkpoint files under `prefix` that the write just done did not produce.
void remove_stale_files(const fs::path& dir, const std::string& prefix, const std::set<std::string>& keep) {
  const std::string single = prefix + ".safetensors", index = prefix + ".safetensors.index.json";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (keep.count(name) || !entry.is_regular_file(ec)) continue;
    if (name == single || name == index || is_shard_file_name(name, prefix)) {
      MLA_CHECK(fs::remove(entry.path(), ec), entry.path().string(), ": cannot remove stale file (", ec.message(),
                ")");
    }
  }
  MLA_CHECK(!ec, dir.string(), ": cannot list the folder (", ec.message(), ")");
}

}  // namespace

ShardedWriteResult write_sharded_safetensors(const std::string& dir, const std::string& prefix,
                                             const std::vector<TensorToWrite>& tensors, uint64_t max_shard_bytes,
                                             const std::map<std::string, std::string>& metadata) {
  MLA_CHECK(max_shard_bytes > 0, dir, ": max_shard_bytes must be positive");
  MLA_CHECK(!prefix.empty() && prefix.find('/') == std::string::npos, dir, ": bad checkpoint prefix '", prefix,
            "'");
  check_unique_names(tensors, dir);
  std::vector<uint64_t> sizes;
  ShardedWriteResult result;
  for (const TensorToWrite& t : tensors) {
    sizes.push_back(checked_nbytes(t, dir));
    result.total_bytes += sizes.back();
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  MLA_CHECK(is_directory(dir), dir, ": cannot create directory (", ec.message(), ")");

  std::vector<size_t> starts = plan_shards(sizes, max_shard_bytes);
  if (starts.size() <= 1) {
    const std::string name = prefix + ".safetensors";
    write_safetensors((fs::path(dir) / name).string(), tensors, metadata);
    result.files.push_back((fs::path(dir) / name).string());
    remove_stale_files(dir, prefix, {name});
    return result;
  }

  starts.push_back(tensors.size());
  const size_t count = starts.size() - 1;
  json weight_map = json::object();
  std::set<std::string> written;
  for (size_t s = 0; s < count; ++s) {
    const std::string name = shard_file_name(prefix, s + 1, count);
    const std::vector<TensorToWrite> shard(tensors.begin() + starts[s], tensors.begin() + starts[s + 1]);
    write_safetensors((fs::path(dir) / name).string(), shard, metadata);
    for (const TensorToWrite& t : shard) weight_map[t.name] = name;
    result.files.push_back((fs::path(dir) / name).string());
    written.insert(name);
  }
  // The index last, so that an index on disk always refers to complete shards.
  const std::string index_name = prefix + ".safetensors.index.json";
  const json index = {{"metadata", {{"total_size", result.total_bytes}}}, {"weight_map", weight_map}};
  const std::string text = index.dump(2) + "\n";
  AtomicFileWriter out((fs::path(dir) / index_name).string());
  out.write(text.data(), text.size());
  out.commit();
  written.insert(index_name);
  remove_stale_files(dir, prefix, written);
  return result;
}

StreamingShardWriter::StreamingShardWriter(std::string dir, std::string prefix, uint64_t max_shard_bytes,
                                           std::map<std::string, std::string> metadata)
    : dir_(std::move(dir)), prefix_(std::move(prefix)), max_shard_bytes_(max_shard_bytes), metadata_(std::move(metadata)) {
  MLA_CHECK(max_shard_bytes_ > 0, dir_, ": max_shard_bytes must be positive");
  MLA_CHECK(!prefix_.empty() && prefix_.find('/') == std::string::npos, dir_, ": bad checkpoint prefix '", prefix_, "'");
  std::error_code ec;
  fs::create_directories(dir_, ec);
  MLA_CHECK(is_directory(dir_), dir_, ": cannot create directory (", ec.message(), ")");
}

StreamingShardWriter::~StreamingShardWriter() {
  close_spill();
  if (finished_) return;
  std::error_code ec;
  for (const auto& f : temp_files_) fs::remove(f, ec);
}

void StreamingShardWriter::close_spill() {
  if (spill_fd_ < 0) return;
  ::close(spill_fd_);
  spill_fd_ = -1;
  ::unlink(spill_path_.c_str());
}

void StreamingShardWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                               const void* data) {
  MLA_CHECK(!finished_, dir_, ": add after finish");
  MLA_CHECK(names_.insert(name).second, dir_, ": tensor '", name, "' written twice");
  TensorToWrite t{name, dtype, shape, data};
  const uint64_t bytes = checked_nbytes(t, dir_);
  // Greedy, like plan_shards: a tensor that would overflow a non-empty shard starts the next one.
  if (!pending_.empty() && pending_bytes_ + bytes > max_shard_bytes_) flush();
  // The data goes to the shard's spill file at once (the header, written first in a safetensors file,
  // needs every tensor of the shard): memory holds no shard, only the caller's tensor.
  if (spill_fd_ < 0) {
    spill_path_ = (fs::path(dir_) / ("." + prefix_ + "-part-" + std::to_string(temp_files_.size() + 1) + ".data")).string();
    spill_fd_ = ::open(spill_path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    MLA_CHECK(spill_fd_ >= 0, spill_path_, ": cannot create (", std::strerror(errno), ")");
  }
  const char* p = static_cast<const char*>(data);
  for (uint64_t left = bytes; left > 0;) {
    const ssize_t n = ::write(spill_fd_, p, std::min<uint64_t>(left, uint64_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    MLA_CHECK(n > 0, spill_path_, ": write failed (", std::strerror(errno), ")");
    p += n;
    left -= static_cast<uint64_t>(n);
  }
  pending_.push_back({name, dtype, shape, bytes});
  pending_bytes_ += bytes;
  total_bytes_ += bytes;
}

void StreamingShardWriter::flush() {
  if (pending_.empty()) return;
  const std::string path =
      (fs::path(dir_) / ("." + prefix_ + "-part-" + std::to_string(temp_files_.size() + 1) + ".safetensors")).string();
  static const char kNoData = 0;  // the header needs shapes and sizes only; the bytes are in the spill file
  std::vector<TensorToWrite> tensors;
  std::vector<uint64_t> sizes;
  std::vector<std::string> names;
  for (const Pending& p : pending_) {
    tensors.push_back({p.name, p.dtype, p.shape, &kNoData});
    sizes.push_back(p.bytes);
    names.push_back(p.name);
  }
  const std::string header = build_header(tensors, sizes, metadata_, path);
  MLA_CHECK(header.size() <= kMaxSafetensorsHeaderBytes, path, ": header of ", header.size(),
            " bytes exceeds the 100 MB limit readers accept");
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  AtomicFileWriter out(path);
  out.write(length, sizeof(length));
  out.write(header.data(), header.size());
  if (spill_fd_ >= 0) out.copy_from(spill_fd_, pending_bytes_, spill_path_);
  out.commit();
  close_spill();
  temp_files_.push_back(path);
  shard_names_.push_back(std::move(names));
  pending_.clear();
  pending_bytes_ = 0;
}

ShardedWriteResult StreamingShardWriter::finish() {
  MLA_CHECK(!finished_, dir_, ": finish called twice");
  flush();
  ShardedWriteResult result;
  result.total_bytes = total_bytes_;
  const size_t count = temp_files_.size();
  std::set<std::string> written;
  json weight_map = json::object();
  for (size_t s = 0; s < count; ++s) {
    const std::string name = count == 1 ? prefix_ + ".safetensors" : shard_file_name(prefix_, s + 1, count);
    const fs::path target = fs::path(dir_) / name;
    std::error_code ec;
    fs::rename(temp_files_[s], target, ec);
    MLA_CHECK(!ec, temp_files_[s], ": cannot rename to ", target.string(), " (", ec.message(), ")");
    for (const auto& n : shard_names_[s]) weight_map[n] = name;
    result.files.push_back(target.string());
    written.insert(name);
  }
  finished_ = true;
  if (count > 1) {
    const std::string index_name = prefix_ + ".safetensors.index.json";
    const json index = {{"metadata", {{"total_size", result.total_bytes}}}, {"weight_map", weight_map}};
    const std::string text = index.dump(2) + "\n";
    AtomicFileWriter out((fs::path(dir_) / index_name).string());
    out.write(text.data(), text.size());
    out.commit();
    written.insert(index_name);
  }
  remove_stale_files(dir_, prefix_, written);
  return result;
}

}  // namespace mlaforge
