#include "trainer/checkpoint_store.h"

#include <ATen/Parallel.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/log.h"
#include "core/mmap_file.h"
#include "core/strings.h"
#include "model/safetensors.h"
#include "model/tensor_io.h"
#include "trainer/checksum.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace mlaforge {
namespace {

constexpr const char* kSlabsKey = "mlaforge.slabs";

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

std::string shape_str(const std::vector<int64_t>& v) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < v.size(); ++i) out << (i ? ", " : "") << v[i];
  out << "]";
  return out.str();
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// CRC-32C of the file write_safetensors just wrote, without reading the tensor bytes back: the file is
// [8-byte length][header][tensor 0][tensor 1]... in the order given, so only the header is read from disk
// and combined with `data_crc`, the CRC of the tensors' bytes taken from memory (while the file was being
// written). The layout is confirmed from the header's data_offsets and the file size; if it ever differs
// (a change to the writer), the file is read back instead.
FileRecord checksum_written(const std::string& step_dir, const std::string& file,
                            const std::vector<TensorToWrite>& tensors, const std::vector<uint64_t>& sizes,
                            uint32_t data_crc) {
  const std::string path = join(step_dir, file);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MLA_CHECK(fd >= 0, path, ": cannot open after writing (", std::strerror(errno), ")");
  struct stat st;
  uint8_t len_bytes[8];
  bool ok = ::fstat(fd, &st) == 0 && ::pread(fd, len_bytes, 8, 0) == 8;
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(len_bytes[i]) << (8 * i);
  std::string header;
  if (ok && header_len <= kMaxSafetensorsHeaderBytes) {
    header.resize(header_len);
    ok = ::pread(fd, header.data(), header_len, 8) == static_cast<ssize_t>(header_len);
  } else {
    ok = false;
  }
  ::close(fd);
  uint64_t expected_size = 8 + header_len, begin = 0;
  if (ok) {
    try {
      const json h = json::parse(header);
      for (size_t i = 0; i < tensors.size() && ok; ++i) {
        const auto& offs = h.at(tensors[i].name).at("data_offsets");
        ok = offs.at(0).get<uint64_t>() == begin && offs.at(1).get<uint64_t>() == begin + sizes[i];
        begin += sizes[i];
      }
    } catch (const std::exception&) {
      ok = false;
    }
    expected_size += begin;
  }
  if (!ok || static_cast<uint64_t>(st.st_size) != expected_size) {
    log::warn(path, ": unexpected safetensors layout; checksumming the file from disk");
    return checksum_file(step_dir, file);
  }
  uint32_t crc = crc32c_extend(0, len_bytes, 8);
  crc = crc32c_extend(crc, header.data(), header.size());
  return {file, expected_size, crc32c_string(crc32c_combine(crc, data_crc, begin))};
}

// Copies the box `extent` starting at src_start inside a contiguous src of src_shape to dst_start inside a
// contiguous dst of dst_shape (all in elements of esize bytes). Byte copies of the longest runs that are
// contiguous in both, so it needs no alignment (mapped safetensors data need not be aligned) and no
// dtype dispatch; rows are spread over LibTorch's threads.
void copy_box(const uint8_t* src, const std::vector<int64_t>& src_shape, const std::vector<int64_t>& src_start,
              uint8_t* dst, const std::vector<int64_t>& dst_shape, const std::vector<int64_t>& dst_start,
              const std::vector<int64_t>& extent, int64_t esize) {
  const size_t n = extent.size();
  if (n == 0) {
    std::memcpy(dst, src, static_cast<size_t>(esize));
    return;
  }
  std::vector<int64_t> sstride(n, 1), dstride(n, 1);
  for (size_t d = n - 1; d > 0; --d) {
    sstride[d - 1] = sstride[d] * src_shape[d];
    dstride[d - 1] = dstride[d] * dst_shape[d];
  }
  size_t k = n - 1;
  int64_t run = extent[k];
  while (k > 0 && extent[k] == src_shape[k] && extent[k] == dst_shape[k]) {
    --k;
    run *= extent[k];
  }
  int64_t src_base = 0, dst_base = 0, outer = 1;
  for (size_t d = 0; d < n; ++d) {
    src_base += src_start[d] * sstride[d];
    dst_base += dst_start[d] * dstride[d];
  }
  for (size_t d = 0; d < k; ++d) outer *= extent[d];
  const int64_t run_bytes = run * esize;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(run_bytes, 1));
  at::parallel_for(0, outer, grain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> idx(k, 0);
    int64_t rest = begin;
    for (size_t d = k; d-- > 0;) {
      idx[d] = rest % extent[d];
      rest /= extent[d];
    }
    for (int64_t o = begin; o < end; ++o) {
      int64_t s = src_base, t = dst_base;
      for (size_t d = 0; d < k; ++d) {
        s += idx[d] * sstride[d];
        t += idx[d] * dstride[d];
      }
      std::memcpy(dst + t * esize, src + s * esize, static_cast<size_t>(run_bytes));
      for (size_t d = k; d-- > 0;) {  // odometer increment, last outer dimension fastest
        if (++idx[d] < extent[d]) break;
        idx[d] = 0;
      }
    }
  });
}

std::vector<int64_t> int_list(const json& j, const char* key, const std::string& where) {
  MLA_CHECK(j.contains(key) && j.at(key).is_array(), where, ": '", key, "' must be a list of integers");
  std::vector<int64_t> out;
  for (const json& v : j.at(key)) {
    MLA_CHECK(v.is_number_integer(), where, ": '", key, "' must be a list of integers");
    out.push_back(v.get<int64_t>());
  }
  return out;
}

}  // namespace

// ---- writing ----------------------------------------------------------------------------------------

Slab Slab::whole(std::string name, at::Tensor data) {
  std::vector<int64_t> shape = data.sizes().vec();
  std::vector<int64_t> offsets(shape.size(), 0);
  return {std::move(name), std::move(data), std::move(shape), std::move(offsets)};
}

std::string rank_local_name(const std::string& base, int rank) { return base + "/rank" + std::to_string(rank); }

std::string rank_file_name(int rank, int world_size) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "rank-%05d-of-%05d.safetensors", rank, world_size);
  return buf;
}

FileRecord write_rank_shards(const std::string& step_dir, int rank, int world_size, const std::vector<Slab>& slabs) {
  const auto t0 = std::chrono::steady_clock::now();
  MLA_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, step_dir, ": rank ", rank, " of world size ",
            world_size, " is out of range");
  const std::string file = rank_file_name(rank, world_size);
  const std::string path = join(step_dir, file);
  std::error_code ec;
  fs::create_directories(step_dir, ec);
  MLA_CHECK(is_directory(step_dir), step_dir, ": cannot create folder (", ec.message(), ")");

  std::vector<at::Tensor> keep_alive;  // the CPU contiguous copies the TensorToWrite pointers refer to
  std::vector<TensorToWrite> tensors;
  std::vector<uint64_t> sizes;
  std::map<std::string, int> seen;
  json slab_meta = json::object();
  for (const Slab& s : slabs) {
    MLA_CHECK(!s.name.empty() && s.name.find('#') == std::string::npos, path, ": slab name '", s.name,
              "' must be non-empty and contain no '#' (it marks further slabs of one tensor)");
    MLA_CHECK(s.data.defined(), path, ": slab '", s.name, "' has no data");
    const std::vector<int64_t> shape = s.data.sizes().vec();
    MLA_CHECK(s.global_shape.size() == shape.size() && s.offsets.size() == shape.size(), path, ": slab '", s.name,
              "': data of shape ", shape_str(shape), " with global_shape ", shape_str(s.global_shape), " and offsets ",
              shape_str(s.offsets), " (all three need the same number of dimensions)");
    for (size_t d = 0; d < shape.size(); ++d)
      MLA_CHECK(s.offsets[d] >= 0 && s.offsets[d] + shape[d] <= s.global_shape[d], path, ": slab '", s.name,
                "': offsets ", shape_str(s.offsets), " + shape ", shape_str(shape), " exceed global_shape ",
                shape_str(s.global_shape), " in dimension ", d);
    const int k = seen[s.name]++;
    const std::string key = k == 0 ? s.name : s.name + "#" + std::to_string(k);
    at::Tensor c = s.data.detach();
    if (!c.device().is_cpu()) c = c.to(at::kCPU);
    c = c.contiguous();
    DType dtype;
    try {
      dtype = from_torch_dtype(c.scalar_type());
    } catch (const Error& e) {
      fail(path, ": slab '", s.name, "': ", e.what());
    }
    keep_alive.push_back(c);
    tensors.push_back({key, dtype, shape, c.data_ptr()});
    sizes.push_back(static_cast<uint64_t>(c.nbytes()));
    slab_meta[key] = {{"name", s.name}, {"global_shape", s.global_shape}, {"offsets", s.offsets}};
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                       {kSlabsKey, slab_meta.dump()},
                                                       {"mlaforge.rank", std::to_string(rank)},
                                                       {"mlaforge.world_size", std::to_string(world_size)}};
  // The checksum runs on a second thread while this one writes: the write is bound by the kernel's copy
  // and the disk, the CRC by memory bandwidth, so together they take about as long as the write alone.
  uint32_t data_crc = 0;
  std::thread crc_thread([&] {
    for (size_t i = 0; i < tensors.size(); ++i) data_crc = crc32c_extend(data_crc, tensors[i].data, sizes[i]);
  });
  try {
    write_safetensors(path, tensors, metadata);
  } catch (...) {
    crc_thread.join();
    throw;
  }
  crc_thread.join();
  FileRecord record = checksum_written(step_dir, file, tensors, sizes, data_crc);
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  log::debug(path, ": ", slabs.size(), " slabs, ", record.bytes, " bytes in ", dt, " s");
  return record;
}

// ---- reading ----------------------------------------------------------------------------------------

struct CheckpointReader::Impl {
  struct Entry {
    size_t file = 0;  // index into files
    const TensorInfo* info = nullptr;
    std::vector<int64_t> offsets;
  };
  struct Global {
    DType dtype = DType::F32;
    std::vector<int64_t> global_shape;
    std::vector<Entry> slabs;
  };

  std::string dir;
  CheckpointManifest manifest;
  json state = json::object();
  std::vector<std::unique_ptr<SafetensorsFile>> files;  // unique_ptr: entries point into their headers
  std::vector<std::string> file_names;
  std::map<std::string, Global> tensors;

  const Global& get(const std::string& name) const {
    auto it = tensors.find(name);
    if (it != tensors.end()) return it->second;
    std::string close;
    size_t best = name.size() / 3 + 2;
    for (const auto& [other, g] : tensors) {
      const size_t d = edit_distance(name, other);
      if (d < best) best = d, close = other;
    }
    fail(dir, ": checkpoint has no tensor '", name, "'", close.empty() ? "" : " (did you mean '" + close + "'?)");
  }

  void add_file(const std::string& name) {
    const std::string path = join(dir, name);
    auto file = std::make_unique<SafetensorsFile>(path);
    const auto& meta = file->header().metadata;
    auto it = meta.find(kSlabsKey);
    MLA_CHECK(it != meta.end(), path, ": no '", kSlabsKey, "' metadata: not a rank file written by write_rank_shards");
    json slabs;
    try {
      slabs = json::parse(it->second);
    } catch (const json::parse_error& e) {
      fail(path, ": '", kSlabsKey, "' metadata is not valid JSON (", e.what(), ")");
    }
    MLA_CHECK(slabs.is_object(), path, ": '", kSlabsKey, "' metadata must be a JSON object");
    const size_t index = files.size();
    for (const TensorInfo& info : file->header().tensors) {
      const std::string where = path + ": tensor '" + info.name + "'";
      MLA_CHECK(slabs.contains(info.name), where, " is not described in the '", kSlabsKey, "' metadata");
      const json& s = slabs.at(info.name);
      MLA_CHECK(s.is_object() && s.contains("name") && s.at("name").is_string(), where, ": slab entry needs a 'name'");
      const std::string global = s.at("name").get<std::string>();
      std::vector<int64_t> gshape = int_list(s, "global_shape", where), offsets = int_list(s, "offsets", where);
      MLA_CHECK(gshape.size() == info.shape.size() && offsets.size() == info.shape.size(), where, ": shape ",
                shape_str(info.shape), ", global_shape ", shape_str(gshape), " and offsets ", shape_str(offsets),
                " disagree in the number of dimensions");
      for (size_t d = 0; d < gshape.size(); ++d)
        MLA_CHECK(offsets[d] >= 0 && info.shape[d] <= gshape[d] && offsets[d] <= gshape[d] - info.shape[d], where,
                  ": offsets ", shape_str(offsets), " + shape ", shape_str(info.shape), " exceed global_shape ",
                  shape_str(gshape));
      auto [g, inserted] = tensors.try_emplace(global);
      if (inserted) {
        g->second.dtype = info.dtype;
        g->second.global_shape = gshape;
      } else {
        const std::string other = file_names[g->second.slabs.front().file];
        MLA_CHECK(g->second.dtype == info.dtype, where, ": dtype ", dtype_name(info.dtype), " but ", other,
                  " stores '", global, "' as ", dtype_name(g->second.dtype));
        MLA_CHECK(g->second.global_shape == gshape, where, ": global_shape ", shape_str(gshape), " but ", other,
                  " stores '", global, "' with ", shape_str(g->second.global_shape));
      }
      g->second.slabs.push_back({index, &info, std::move(offsets)});
    }
    MLA_CHECK(slabs.size() == file->header().tensors.size(), path, ": '", kSlabsKey,
              "' metadata describes tensors the file does not hold");
    files.push_back(std::move(file));
    file_names.push_back(name);
  }
};

CheckpointReader::CheckpointReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CheckpointReader::CheckpointReader(CheckpointReader&&) noexcept = default;
CheckpointReader& CheckpointReader::operator=(CheckpointReader&&) noexcept = default;
CheckpointReader::~CheckpointReader() = default;

CheckpointReader CheckpointReader::open(const std::string& dir, bool verify_checksums,
                                        const std::optional<std::string>& expected_fingerprint) {
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  impl->manifest = read_manifest(dir);
  if (expected_fingerprint) check_model_fingerprint(dir, impl->manifest, *expected_fingerprint);
  verify_checkpoint_files(dir, impl->manifest, verify_checksums);
  for (const FileRecord& r : impl->manifest.files) {
    if (ends_with(r.file, ".safetensors")) {
      impl->add_file(r.file);
    } else if (r.file == kTrainingStateFile) {
      const std::string path = join(dir, r.file);
      try {
        impl->state = json::parse(read_text_file(path));
      } catch (const json::parse_error& e) {
        fail(path, ": not valid JSON (", e.what(), ")");
      }
    }
  }
  return CheckpointReader(std::move(impl));
}

const std::string& CheckpointReader::dir() const { return impl_->dir; }
int64_t CheckpointReader::step() const { return impl_->manifest.step; }
const std::string& CheckpointReader::model_fingerprint() const { return impl_->manifest.model_fingerprint; }
const CheckpointManifest& CheckpointReader::manifest() const { return impl_->manifest; }
const std::vector<FileRecord>& CheckpointReader::files() const { return impl_->manifest.files; }
const json& CheckpointReader::training_state() const { return impl_->state; }

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  for (const auto& [name, g] : impl_->tensors) out.push_back(name);
  return out;
}

bool CheckpointReader::contains(const std::string& name) const { return impl_->tensors.count(name) > 0; }

std::vector<int64_t> CheckpointReader::global_shape(const std::string& name) const {
  return impl_->get(name).global_shape;
}

at::ScalarType CheckpointReader::dtype(const std::string& name) const {
  return to_torch_dtype(impl_->get(name).dtype);
}

std::vector<StoredSlab> CheckpointReader::slabs(const std::string& name) const {
  std::vector<StoredSlab> out;
  for (const auto& e : impl_->get(name).slabs)
    out.push_back({impl_->file_names[e.file], e.info->name, e.offsets, e.info->shape});
  return out;
}

at::Tensor CheckpointReader::read(const std::string& name, std::optional<at::ScalarType> dtype) const {
  const auto& g = impl_->get(name);
  return read(name, std::vector<int64_t>(g.global_shape.size(), 0), g.global_shape, dtype);
}

at::Tensor CheckpointReader::read(const std::string& name, const std::vector<int64_t>& offsets,
                                  const std::vector<int64_t>& sizes, std::optional<at::ScalarType> dtype) const {
  const Impl::Global& g = impl_->get(name);
  const std::string where = impl_->dir + ": tensor '" + name + "'";
  const size_t n = g.global_shape.size();
  MLA_CHECK(offsets.size() == n && sizes.size() == n, where, ": region offsets ", shape_str(offsets), " sizes ",
            shape_str(sizes), " for a tensor of global shape ", shape_str(g.global_shape));
  for (size_t d = 0; d < n; ++d)
    MLA_CHECK(offsets[d] >= 0 && sizes[d] >= 0 && offsets[d] <= g.global_shape[d] - sizes[d], where,
              ": region offsets ", shape_str(offsets), " sizes ", shape_str(sizes), " exceeds the global shape ",
              shape_str(g.global_shape));
  at::Tensor out = at::empty(sizes, at::TensorOptions().dtype(to_torch_dtype(g.dtype)));
  const int64_t volume = out.numel();
  auto finish = [&](at::Tensor t) { return dtype && *dtype != t.scalar_type() ? t.to(*dtype) : t; };
  if (volume == 0) return finish(out);

  // The part of each stored slab inside the region: [lo, hi) per dimension.
  struct Hit {
    const Impl::Entry* entry;
    std::vector<int64_t> lo, hi;
  };
  std::vector<Hit> hits;
  int64_t covered = 0;
  for (const auto& e : g.slabs) {
    Hit h{&e, std::vector<int64_t>(n), std::vector<int64_t>(n)};
    int64_t v = 1;
    for (size_t d = 0; d < n; ++d) {
      h.lo[d] = std::max(offsets[d], e.offsets[d]);
      h.hi[d] = std::min(offsets[d] + sizes[d], e.offsets[d] + e.info->shape[d]);
      v *= std::max<int64_t>(0, h.hi[d] - h.lo[d]);
    }
    if (v == 0) continue;
    covered += v;
    hits.push_back(std::move(h));
  }
  // Coverage: disjoint pieces cover the region exactly when their volumes add up to it. Overlapping
  // pieces (replicas) need an element mask instead (1 byte per element, only in that case).
  bool overlap = false;
  for (size_t i = 0; i < hits.size() && !overlap; ++i)
    for (size_t j = i + 1; j < hits.size() && !overlap; ++j) {
      bool meet = true;
      for (size_t d = 0; d < n && meet; ++d)
        meet = std::max(hits[i].lo[d], hits[j].lo[d]) < std::min(hits[i].hi[d], hits[j].hi[d]);
      overlap = meet;
    }
  bool complete = covered == volume;
  if (overlap) {
    at::Tensor mask = at::zeros(sizes, at::kBool);
    for (const Hit& h : hits) {
      at::Tensor view = mask;
      for (size_t d = 0; d < n; ++d) view = view.narrow(d, h.lo[d] - offsets[d], h.hi[d] - h.lo[d]);
      view.fill_(true);
    }
    complete = mask.all().item<bool>();
  }
  if (!complete) {
    std::ostringstream stored;
    for (size_t i = 0; i < g.slabs.size() && i < 8; ++i)
      stored << (i ? ", " : "") << impl_->file_names[g.slabs[i].file] << " offsets " << shape_str(g.slabs[i].offsets)
             << " shape " << shape_str(g.slabs[i].info->shape);
    if (g.slabs.size() > 8) stored << ", ... (" << g.slabs.size() << " slabs)";
    fail(where, ": region offsets ", shape_str(offsets), " sizes ", shape_str(sizes),
         " is not fully covered by the stored slabs (", stored.str(), ")");
  }

  const int64_t esize = static_cast<int64_t>(dtype_size(g.dtype));
  auto* dst = static_cast<uint8_t*>(out.data_ptr());
  for (const Hit& h : hits) {
    const Impl::Entry& e = *h.entry;
    std::vector<int64_t> src_start(n), dst_start(n), extent(n);
    for (size_t d = 0; d < n; ++d) {
      src_start[d] = h.lo[d] - e.offsets[d];
      dst_start[d] = h.lo[d] - offsets[d];
      extent[d] = h.hi[d] - h.lo[d];
    }
    const uint8_t* src = impl_->files[e.file]->tensor_data(*e.info);
    copy_box(src, e.info->shape, src_start, dst, sizes, dst_start, extent, esize);
  }
  return finish(out);
}

}  // namespace mlaforge
