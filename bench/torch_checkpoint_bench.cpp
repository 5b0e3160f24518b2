// Sharded checkpoint throughput (trainer/checkpoint_store.h) against plain files in the same process.
//   bench_torch_checkpoint_bench [MiB=1024] [ranks=4] [dir=/tmp] [repeats=5] [keep]
// (`keep`: leave the checkpoint folder behind, e.g. to try `mlaforge inspect` on it)
// Save: write_rank_shards for every simulated rank + training_state.json + commit_checkpoint (temp files,
// fsync, rename, CRC-32C, manifest, latest) vs fwrite + fsync of the same bytes into as many files.
// Load: CheckpointReader::open (sizes + checksums verified) + read() of every global tensor assembled from
// all rank files vs fread of the same files into memory; once with the files evicted from the page cache
// (posix_fadvise DONTNEED after fsync: no root needed) and once warm. Runs alternate; best of `repeats`.
// Also prints the CRC-32C speed alone (hardware three-stream path and the portable slice-by-8).
#include <fcntl.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>

#include "core/log.h"
#include "core/threads.h"
#include "trainer/checkpoint_store.h"
#include "trainer/checksum.h"

namespace fs = std::filesystem;
using namespace mlaforge;

namespace {

double seconds(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void evict(const std::string& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const int fd = ::open(e.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

struct Model {
  std::vector<std::string> names;
  std::vector<at::Tensor> tensors;  // global tensors
  std::vector<std::vector<Slab>> ranks;
  uint64_t bytes = 0;
};

// 16 global matrices (half fp32, half bf16) of 4096 columns adding up to `total` bytes, each split along
// dim 0 over the ranks unevenly (the last rank gets the remainder), as tensor parallelism would.
Model make_model(uint64_t total, int ranks) {
  Model m;
  m.ranks.resize(ranks);
  const int count = 16;
  const int64_t cols = 4096;
  for (int i = 0; i < count; ++i) {
    const auto dtype = i % 2 ? at::kBFloat16 : at::kFloat;
    const int64_t rows = static_cast<int64_t>(total / count / (cols * at::elementSize(dtype)));
    at::Tensor t = torch::randn({rows, cols}).to(dtype);
    m.names.push_back("layers." + std::to_string(i) + ".weight");
    m.tensors.push_back(t);
    m.bytes += t.nbytes();
    const int64_t per = rows / ranks;
    for (int r = 0; r < ranks; ++r) {
      const int64_t begin = r * per, n = r == ranks - 1 ? rows - begin : per;
      m.ranks[r].push_back({m.names.back(), t.narrow(0, begin, n), {rows, cols}, {begin, 0}});
    }
  }
  return m;
}

double save_checkpoint(const Model& m, const std::string& root) {
  fs::remove_all(root + "/step-0000001");  // outside the timing, as for the plain files
  return seconds([&] {
    const std::string dir = prepare_step_dir(root, "step-0000001");
    std::vector<FileRecord> recs;
    for (int r = 0; r < static_cast<int>(m.ranks.size()); ++r)
      recs.push_back(write_rank_shards(dir, r, static_cast<int>(m.ranks.size()), m.ranks[r]));
    recs.push_back(write_json_file(dir, kTrainingStateFile, {{"step", 1}}));
    commit_checkpoint(root, "step-0000001", 1, recs, "bench");
  });
}

double save_plain(const Model& m, const std::string& dir) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  return seconds([&] {
    for (size_t r = 0; r < m.ranks.size(); ++r) {
      const std::string path = dir + "/rank" + std::to_string(r) + ".bin";
      FILE* f = std::fopen(path.c_str(), "wb");
      for (const Slab& s : m.ranks[r]) {
        const at::Tensor c = s.data.contiguous();
        std::fwrite(c.data_ptr(), 1, c.nbytes(), f);
      }
      std::fflush(f);
      ::fsync(fileno(f));
      std::fclose(f);
    }
  });
}

double load_checkpoint(const Model& m, const std::string& dir, bool verify) {
  return seconds([&] {
    const CheckpointReader reader = CheckpointReader::open(dir, verify);
    for (size_t i = 0; i < m.names.size(); ++i) {
      const at::Tensor t = reader.read(m.names[i]);
      if (t.numel() != m.tensors[i].numel()) std::abort();
    }
  });
}

double load_plain(const std::string& dir) {
  return seconds([&] {
    for (const auto& e : fs::directory_iterator(dir)) {
      const size_t n = fs::file_size(e.path());
      at::Tensor buf = at::empty({static_cast<int64_t>(n)}, at::kByte);
      FILE* f = std::fopen(e.path().c_str(), "rb");
      if (std::fread(buf.data_ptr(), 1, n, f) != n) std::abort();
      std::fclose(f);
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t mib = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1024;
  const int ranks = argc > 2 ? std::atoi(argv[2]) : 4;
  const std::string base = argc > 3 ? argv[3] : "/tmp";
  const int repeats = argc > 4 ? std::atoi(argv[4]) : 5;
  torch::set_num_threads(default_num_threads());
  log::set_level(log::Level::warn);
  std::string pattern = base + "/mlaforge-ckpt-bench-XXXXXX";
  if (!::mkdtemp(pattern.data())) {
    std::perror("mkdtemp");
    return 1;
  }
  const std::string root = pattern, plain = root + "/plain", step = root + "/step-0000001";
  torch::manual_seed(0);
  const Model m = make_model(mib << 20, ranks);
  const double gb = static_cast<double>(m.bytes) / 1e9;
  std::printf("%.3f GB in %zu global tensors, %d ranks, %d threads, crc32c %s, folder %s\n", gb, m.names.size(),
              ranks, torch::get_num_threads(), crc32c_implementation(), root.c_str());

  {
    const at::Tensor flat = at::cat({m.tensors[0].flatten().view(at::kByte), m.tensors[1].flatten().view(at::kByte)});
    const double n = static_cast<double>(flat.nbytes());
    uint32_t crc_hw = 0, crc_sw = 0;
    double hw = 1e9, sw = 1e9;
    for (int i = 0; i < 3; ++i) {
      hw = std::min(hw, seconds([&] { crc_hw = crc32c(flat.data_ptr(), flat.nbytes()); }));
      sw = std::min(sw, seconds([&] { crc_sw = crc32c_extend_portable(0, flat.data_ptr(), flat.nbytes()); }));
    }
    std::printf("crc32c over %.0f MB in memory: %s %.2f GB/s, slice-by-8 %.2f GB/s (%s)\n", n / 1e6,
                crc32c_implementation(), n / hw / 1e9, n / sw / 1e9, crc_hw == crc_sw ? "same value" : "DIFFERENT");
  }

  double best_ckpt = 1e9, best_plain = 1e9, cold_ckpt = 1e9, cold_plain = 1e9, warm_ckpt = 1e9, warm_plain = 1e9,
         warm_noverify = 1e9;
  for (int rep = 0; rep < repeats; ++rep) {
    // Alternate which goes first: the disk and the machine's other tenants drift.
    if (rep % 2 == 0) {
      best_ckpt = std::min(best_ckpt, save_checkpoint(m, root));
      best_plain = std::min(best_plain, save_plain(m, plain));
    } else {
      best_plain = std::min(best_plain, save_plain(m, plain));
      best_ckpt = std::min(best_ckpt, save_checkpoint(m, root));
    }
    evict(step);
    evict(plain);
    if (rep % 2 == 0) {
      cold_ckpt = std::min(cold_ckpt, load_checkpoint(m, step, true));
      cold_plain = std::min(cold_plain, load_plain(plain));
    } else {
      cold_plain = std::min(cold_plain, load_plain(plain));
      cold_ckpt = std::min(cold_ckpt, load_checkpoint(m, step, true));
    }
    warm_ckpt = std::min(warm_ckpt, load_checkpoint(m, step, true));
    warm_noverify = std::min(warm_noverify, load_checkpoint(m, step, false));
    warm_plain = std::min(warm_plain, load_plain(plain));
  }
  std::printf("save  checkpoint %.2f GB/s (%.2f s)   fwrite+fsync %.2f GB/s (%.2f s)   ratio %.2f\n", gb / best_ckpt,
              best_ckpt, gb / best_plain, best_plain, best_plain / best_ckpt);
  std::printf("load cold  checkpoint (verify + assemble) %.2f GB/s (%.2f s)   fread %.2f GB/s (%.2f s)   ratio %.2f\n",
              gb / cold_ckpt, cold_ckpt, gb / cold_plain, cold_plain, cold_plain / cold_ckpt);
  std::printf("load warm  checkpoint (verify + assemble) %.2f GB/s, no verify %.2f GB/s   fread %.2f GB/s   "
              "ratios %.2f / %.2f\n",
              gb / warm_ckpt, gb / warm_noverify, gb / warm_plain, warm_plain / warm_ckpt, warm_plain / warm_noverify);

  // A reader with another layout: every tensor in two column halves (strided copies from all rank files).
  {
    const CheckpointReader reader = CheckpointReader::open(step, false);
    const double t = seconds([&] {
      for (size_t i = 0; i < m.names.size(); ++i) {
        const auto shape = reader.global_shape(m.names[i]);
        const int64_t half = shape[1] / 2;
        reader.read(m.names[i], {0, 0}, {shape[0], half});
        reader.read(m.names[i], {0, half}, {shape[0], shape[1] - half});
      }
    });
    std::printf("load warm  re-split along dim 1, no verify: %.2f GB/s\n", gb / t);
  }
  if (argc > 5 && std::string(argv[5]) == "keep") {
    fs::remove_all(plain);
    std::printf("kept %s\n", root.c_str());
  } else {
    fs::remove_all(root);
  }
  return 0;
}
