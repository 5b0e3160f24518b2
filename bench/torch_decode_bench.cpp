// Decode throughput of a GQA model and its MLA conversion side by side, against the memory-bandwidth bound.
// Run through bench/decode_bench.sh (which converts the default model first); see bench/README.md.
//
//   bench_torch_decode_bench --gqa MODEL --mla MODEL [--contexts 1024,4096,16384,32768] [--batches 1,8,32]
//       [--steps 4] [--warmup 1] [--device cpu|cuda] [--dtype float32|bfloat16] [--threads N]
//       [--max-cache-gb X] [--seed-len 256] [--json FILE]
//
// For every (context length, batch size) and each model: a KV cache holding `context` positions per row is
// filled, then `warmup + steps` decode steps run (forward of B new tokens through the cache, greedy argmax),
// and the median step time gives tokens/s = B / step time.
//
// Filling the cache. Decode speed depends on how many positions the cache holds, not on their values, and a
// real 32K-token prefill of 32 rows would take hours on a CPU. So each model runs one real prefill of
// --seed-len random tokens (one row) and the cache is filled by copying those entries, tiled along the
// positions up to the context length and broadcast to every row. The entries are real keys/values (for MLA:
// real latents and rope keys) of the model, just repeated.
//
// The bound. A decode step must read every weight once (the batch shares them; an untied embedding table
// is only gathered, so it is left out) and every cached entry of every row once. With the machine's read
// bandwidth BW, measured in this process as the best of 5 sums over a 1 GiB tensor on the same device and
// thread count, no implementation can beat
//     step time >= (weight bytes + B * cached positions * KV bytes per position) / BW,
// so the bound on tokens/s is B over that; the table prints the achieved fraction. That bound ignores
// compute, which matters on a CPU: MLA's absorbed attention does 2 H (2R + rope) FLOPs per cached position
// per layer against GQA's 2 H (2d) (SmolLM2 converted: 3,456 vs 1,152), i.e. about 9 FLOPs per cache byte,
// above a 2-core CPU's FLOP/byte ratio (and far below a GPU's). So the table also prints a roofline bound:
// step time >= max(bytes / BW, FLOPs / matmul throughput), the matmul throughput measured in the same
// process (best of 4 products of 1024 x 2048 by 2048 x 2048 in the model's dtype).
//
// Memory. A configuration whose cache would exceed --max-cache-gb (default: 40% of MemAvailable on the CPU;
// required on CUDA, where the script derives it from nvidia-smi) is printed as skipped with its size.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "model/decoder.h"
#include "model/tensor_io.h"

namespace mlaforge {
namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  std::string gqa, mla;
  std::vector<int64_t> contexts = {1024, 4096, 16384, 32768};
  std::vector<int64_t> batches = {1, 8, 32};
  int steps = 4, warmup = 1;
  std::string device = "cpu", dtype;
  int threads = 0;
  double max_cache_gb = 0;
  int64_t seed_len = 256;
  std::string json;
};

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    MLA_CHECK(!item.empty(), "empty entry in the list '", s, "'");
    int64_t v = std::stoll(item);
    if (item.back() == 'K' || item.back() == 'k') v *= 1024;
    MLA_CHECK(v > 0, "list '", s, "': entries must be positive");
    out.push_back(v);
  }
  return out;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      MLA_CHECK(i + 1 < argc, k, " needs a value");
      return argv[++i];
    };
    if (k == "--gqa") a.gqa = value();
    else if (k == "--mla") a.mla = value();
    else if (k == "--contexts") a.contexts = parse_list(value());
    else if (k == "--batches") a.batches = parse_list(value());
    else if (k == "--steps") a.steps = std::stoi(value());
    else if (k == "--warmup") a.warmup = std::stoi(value());
    else if (k == "--device") a.device = value();
    else if (k == "--dtype") a.dtype = value();
    else if (k == "--threads") a.threads = std::stoi(value());
    else if (k == "--max-cache-gb") a.max_cache_gb = std::stod(value());
    else if (k == "--seed-len") a.seed_len = std::stoll(value());
    else if (k == "--json") a.json = value();
    else fail("unknown option ", k, " (see the comment at the top of bench/torch_decode_bench.cpp)");
  }
  MLA_CHECK(!a.gqa.empty() || !a.mla.empty(), "give --gqa MODEL and/or --mla MODEL");
  MLA_CHECK(a.steps > 0 && a.warmup >= 0 && a.seed_len > 0, "--steps > 0, --warmup >= 0, --seed-len > 0");
  if (a.dtype.empty()) a.dtype = a.device == "cpu" ? "float32" : "bfloat16";
  return a;
}

void sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize(d.index());
}

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Read bandwidth (bytes/s): best of 10 full sums over a 1 GiB float32 tensor (the first one warms up). Best,
// not median: the bound is what the machine can do; on a shared VM single sums vary by 2x.
double measure_read_bandwidth(const torch::Device& device) {
  const int64_t n = int64_t{1} << 28;  // 1 GiB of float32
  auto t = torch::ones({n}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  double best = 1e30;
  for (int r = 0; r < 11; ++r) {
    sync(device);
    const auto t0 = Clock::now();
    const double s = t.sum().item<double>();
    const auto t1 = Clock::now();
    MLA_CHECK(s == static_cast<double>(n), "bandwidth probe: wrong sum");
    if (r > 0) best = std::min(best, seconds(t0, t1));
  }
  return static_cast<double>(n) * 4 / best;
}

double mem_available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1024.0 * 1024 * 1024));
  return buf;
}

struct ModelInfo {
  std::string label, path, attention;
  int64_t parameters = 0;
  int64_t weight_bytes_read = 0;     // per decode step
  int64_t kv_bytes_per_token = 0;    // all layers, cache dtype (measured from a real cache)
  int64_t kv_values_per_token = 0;   // from the config
  // FLOPs per decode token: 2 per weight read, plus per cached position (all layers) the attention's
  // score and value products: GQA 2 H (d + d); MLA absorbed 2 H ((R + rope) + R).
  double weight_flops_per_token = 0, attention_flops_per_position = 0;
};

struct Measurement {
  bool skipped = false;
  std::string reason;
  double step_seconds = 0, tokens_per_second = 0;
  double bound_tokens_per_second = 0;     // memory bandwidth alone
  double roofline_tokens_per_second = 0;  // bandwidth and compute: max of the two times
  int64_t cache_bytes = 0;
};

class Bench {
 public:
  Bench(const Args& args, torch::Device device, torch::Dtype dtype, double bandwidth, double peak_flops,
        double cap_bytes)
      : args_(args), device_(device), dtype_(dtype), bandwidth_(bandwidth), peak_flops_(peak_flops),
        cap_bytes_(cap_bytes) {}

  ModelInfo run_model(const std::string& label, const std::string& path,
                      std::map<std::pair<int64_t, int64_t>, std::map<std::string, Measurement>>& table) {
    LoadOptions load;
    load.load_tokenizer = false;
    ModelSource src = load_model_source(path, load);
    Decoder model = build_model(src, dtype_, device_);
    model->eval();
    src.weights.clear();  // the model holds its own copy
    const ModelConfig& c = model->config();
    torch::NoGradGuard no_grad;

    ModelInfo info;
    info.label = label;
    info.path = path;
    info.attention = c.is_mla() ? "MLA (absorbed decode over the latent cache)" : "GQA";
    for (const auto& p : model->parameters()) {
      info.parameters += p.numel();
      info.weight_bytes_read += p.numel() * static_cast<int64_t>(p.element_size());
    }
    if (model->lm_head)  // untied: the embedding table is only gathered (B rows per step)
      info.weight_bytes_read -= model->embed->weight.numel() * static_cast<int64_t>(model->embed->weight.element_size());
    info.kv_values_per_token = c.kv_cache_values_per_token();
    info.weight_flops_per_token = 2.0 * static_cast<double>(info.weight_bytes_read) /
                                  static_cast<double>(torch::elementSize(dtype_));
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const double H = static_cast<double>(c.num_attention_heads);
      info.attention_flops_per_position +=
          c.is_mla() ? 2 * H * static_cast<double>(2 * c.kv_lora_rank_at(l) + c.qk_rope_head_dim)
                     : 2 * H * static_cast<double>(2 * c.head_dim);
    }

    // The seed: one real prefill of random tokens, whose entries fill every cache below.
    torch::manual_seed(0);
    KVCache seed = model->make_cache(args_.seed_len);
    auto prompt = torch::randint(c.vocab_size, {1, args_.seed_len}, torch::TensorOptions().dtype(torch::kInt64).device(device_));
    ForwardOptions fwd;
    fwd.cache = &seed;
    model->hidden(prompt, fwd);
    info.kv_bytes_per_token = seed.allocated_bytes() / args_.seed_len;
    MLA_CHECK(info.kv_bytes_per_token == info.kv_values_per_token * static_cast<int64_t>(torch::elementSize(dtype_)),
              label, ": the cache holds ", info.kv_bytes_per_token, " bytes per token, the config says ",
              info.kv_values_per_token, " values");
    std::fprintf(stderr, "%s: %s, %s, %lld parameters, %.1f MB of weights read per step, KV %lld B/token\n",
                 label.c_str(), path.c_str(), info.attention.c_str(), static_cast<long long>(info.parameters),
                 info.weight_bytes_read / 1e6, static_cast<long long>(info.kv_bytes_per_token));

    for (int64_t ctx : args_.contexts) {
      for (int64_t B : args_.batches) {
        Measurement m = measure(*model, seed, info, ctx, B);
        if (m.skipped) {
          std::fprintf(stderr, "  %s ctx %lld batch %lld: skipped (%s)\n", label.c_str(), static_cast<long long>(ctx),
                       static_cast<long long>(B), m.reason.c_str());
        } else {
          std::fprintf(stderr, "  %s ctx %lld batch %lld: %.1f ms/step, %.1f tok/s (bound %.1f, %.0f%%)\n",
                       label.c_str(), static_cast<long long>(ctx), static_cast<long long>(B), m.step_seconds * 1e3,
                       m.tokens_per_second, m.bound_tokens_per_second,
                       100 * m.tokens_per_second / m.bound_tokens_per_second);
        }
        table[{ctx, B}][label] = m;
      }
    }
    return info;
  }

 private:
  Measurement measure(DecoderImpl& model, const KVCache& seed, const ModelInfo& info, int64_t ctx, int64_t B) {
    Measurement m;
    const int64_t steps = args_.warmup + args_.steps;
    const int64_t capacity = ctx + steps;
    m.cache_bytes = B * capacity * info.kv_bytes_per_token;
    if (static_cast<double>(m.cache_bytes) > cap_bytes_) {
      m.skipped = true;
      m.reason = "cache " + gib(static_cast<double>(m.cache_bytes)) + " > cap " + gib(cap_bytes_);
      return m;
    }
    KVCache cache = model.make_cache(capacity);
    // Tile the seed's positions up to ctx, the same in every row.
    for (int64_t filled = 0; filled < ctx;) {
      const int64_t n = std::min(args_.seed_len, ctx - filled);
      for (int64_t l = 0; l < seed.num_layers(); ++l) {
        std::vector<torch::Tensor> chunk;
        for (const auto& e : seed.entries(l)) {  // (1, h, seed_len, w)
          chunk.push_back(e.narrow(2, 0, n).expand({B, e.size(1), n, e.size(3)}));
        }
        cache.append(l, chunk);
      }
      cache.advance(n);
      filled += n;
    }
    auto tokens = torch::randint(model.config().vocab_size, {B, 1},
                                 torch::TensorOptions().dtype(torch::kInt64).device(device_));  // (B, 1)
    ForwardOptions fwd;
    fwd.cache = &cache;
    std::vector<double> times;
    for (int64_t s = 0; s < steps; ++s) {
      sync(device_);
      const auto t0 = Clock::now();
      tokens = model.forward(tokens, fwd).argmax(-1);  // (B, 1): greedy, as generate() would
      sync(device_);
      const double dt = seconds(t0, Clock::now());
      if (s >= args_.warmup) times.push_back(dt);
    }
    std::sort(times.begin(), times.end());
    m.step_seconds = times[times.size() / 2];
    m.tokens_per_second = static_cast<double>(B) / m.step_seconds;
    // Positions read per step, averaged over the timed steps.
    const double positions = static_cast<double>(ctx + args_.warmup) + 0.5 * static_cast<double>(args_.steps - 1);
    const double bytes = static_cast<double>(info.weight_bytes_read) +
                         static_cast<double>(B) * positions * static_cast<double>(info.kv_bytes_per_token);
    const double flops = static_cast<double>(B) * (info.weight_flops_per_token + positions * info.attention_flops_per_position);
    m.bound_tokens_per_second = static_cast<double>(B) / (bytes / bandwidth_);
    m.roofline_tokens_per_second = static_cast<double>(B) / std::max(bytes / bandwidth_, flops / peak_flops_);
    return m;
  }

  const Args& args_;
  torch::Device device_;
  torch::Dtype dtype_;
  double bandwidth_, peak_flops_, cap_bytes_;
};

// Matrix-multiply throughput (FLOP/s) in the model's dtype: best of 4 products of 1024 x 2048 by 2048 x 2048
// (the first warms up), the compute ceiling the roofline bound uses.
double measure_matmul_flops(const torch::Device& device, torch::Dtype dtype) {
  auto opts = torch::TensorOptions().dtype(dtype).device(device);
  auto a = torch::randn({1024, 2048}, opts), b = torch::randn({2048, 2048}, opts);
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    sync(device);
    const auto t0 = Clock::now();
    auto c = torch::matmul(a, b);
    sync(device);
    if (r > 0) best = std::min(best, seconds(t0, Clock::now()));
  }
  return 2.0 * 1024 * 2048 * 2048 / best;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

int run(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  torch::set_num_threads(args.threads > 0 ? args.threads : default_num_threads());
  const torch::Device device(args.device);
  MLA_CHECK(!device.is_cuda() || torch::cuda::is_available(), "--device ", args.device, ": no CUDA device");
  const torch::Dtype dtype = parse_torch_dtype(args.dtype);

  double cap = args.max_cache_gb * 1024.0 * 1024 * 1024;
  if (cap <= 0) {
    MLA_CHECK(!device.is_cuda(), "--device cuda needs --max-cache-gb (bench/decode_bench.sh derives it from nvidia-smi)");
    cap = 0.4 * mem_available_bytes();
  }
  const double bw_start = measure_read_bandwidth(device);
  const double peak = measure_matmul_flops(device, dtype);
  std::fprintf(stderr, "read bandwidth %.2f GB/s (1 GiB float32 sum, %d threads), matmul %.1f GFLOP/s (%s); cache cap %s\n",
               bw_start / 1e9, torch::get_num_threads(), peak / 1e9, args.dtype.c_str(), gib(cap).c_str());

  std::map<std::pair<int64_t, int64_t>, std::map<std::string, Measurement>> table;
  std::vector<ModelInfo> models;
  Bench bench(args, device, dtype, bw_start, peak, cap);
  if (!args.gqa.empty()) models.push_back(bench.run_model("GQA", args.gqa, table));
  if (!args.mla.empty()) models.push_back(bench.run_model("MLA", args.mla, table));
  const double bw_end = measure_read_bandwidth(device);

  // --- report ---------------------------------------------------------------------------------------------
  std::printf("\nmachine: %s, %d threads, device %s, %s; read bandwidth %.2f GB/s at the start (used for the bounds), "
              "%.2f GB/s at the end; matmul %.1f GFLOP/s\n",
              device.is_cuda() ? "CUDA device" : cpu_name().c_str(), torch::get_num_threads(), args.device.c_str(),
              args.dtype.c_str(), bw_start / 1e9, bw_end / 1e9, peak / 1e9);
  std::printf("decode steps: %d warm-up + %d timed (median); cache filled by tiling a real %lld-token prefill\n\n",
              args.warmup, args.steps, static_cast<long long>(args.seed_len));
  std::printf("| model | attention | parameters | weights read per step | KV bytes per token (all layers, %s) | "
              "attention FLOPs per cached token |\n",
              args.dtype.c_str());
  std::printf("| --- | --- | ---: | ---: | ---: | ---: |\n");
  for (const auto& m : models)
    std::printf("| %s `%s` | %s | %.1fM | %.1f MB | %lld (%lld values) | %.0f |\n", m.label.c_str(), m.path.c_str(),
                m.attention.c_str(), m.parameters / 1e6, m.weight_bytes_read / 1e6,
                static_cast<long long>(m.kv_bytes_per_token), static_cast<long long>(m.kv_values_per_token),
                m.attention_flops_per_position);
  if (models.size() == 2)
    std::printf("\nKV bytes per token MLA/GQA: %.3f\n", static_cast<double>(models[1].kv_bytes_per_token) /
                                                          static_cast<double>(models[0].kv_bytes_per_token));

  std::printf("\n| context | batch |");
  for (const auto& m : models)
    std::printf(" %s cache | %s tok/s | %s bandwidth bound (achieved) | %s roofline bound (achieved) |", m.label.c_str(),
                m.label.c_str(), m.label.c_str(), m.label.c_str());
  if (models.size() == 2) std::printf(" MLA/GQA tok/s | MLA/GQA bandwidth bound |");
  std::printf("\n| ---: | ---: |");
  for (size_t i = 0; i < models.size(); ++i) std::printf(" ---: | ---: | ---: | ---: |");
  if (models.size() == 2) std::printf(" ---: | ---: |");
  std::printf("\n");
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& [key, per_model] : table) {
    const auto [ctx, B] = key;
    std::printf("| %lld | %lld |", static_cast<long long>(ctx), static_cast<long long>(B));
    nlohmann::json row = {{"context", ctx}, {"batch", B}};
    for (const auto& info : models) {
      const Measurement& m = per_model.at(info.label);
      if (m.skipped) {
        std::printf(" %s | skipped: %s | | |", gib(static_cast<double>(m.cache_bytes)).c_str(), m.reason.c_str());
        row[info.label] = {{"skipped", m.reason}, {"cache_bytes", m.cache_bytes}};
      } else {
        std::printf(" %s | %s | %s (%s) | %s (%s) |", gib(static_cast<double>(m.cache_bytes)).c_str(),
                    fmt("%.1f", m.tokens_per_second).c_str(), fmt("%.1f", m.bound_tokens_per_second).c_str(),
                    fmt("%.0f%%", 100 * m.tokens_per_second / m.bound_tokens_per_second).c_str(),
                    fmt("%.1f", m.roofline_tokens_per_second).c_str(),
                    fmt("%.0f%%", 100 * m.tokens_per_second / m.roofline_tokens_per_second).c_str());
        row[info.label] = {{"step_seconds", m.step_seconds}, {"tokens_per_second", m.tokens_per_second},
                           {"bound_tokens_per_second", m.bound_tokens_per_second},
                           {"roofline_tokens_per_second", m.roofline_tokens_per_second}, {"cache_bytes", m.cache_bytes}};
      }
    }
    if (models.size() == 2) {
      const Measurement& g = per_model.at("GQA");
      const Measurement& l = per_model.at("MLA");
      if (!g.skipped && !l.skipped) {
        const double ratio = l.tokens_per_second / g.tokens_per_second;
        const double bound_ratio = l.bound_tokens_per_second / g.bound_tokens_per_second;
        std::printf(" **%.2fx** | %.2fx |", ratio, bound_ratio);
        row["mla_over_gqa"] = ratio;
        row["mla_over_gqa_bandwidth_bound"] = bound_ratio;
      } else {
        std::printf(" %s | |", l.skipped ? "-" : "GQA skipped");
      }
    }
    std::printf("\n");
    rows.push_back(row);
  }
  if (!args.json.empty()) {
    nlohmann::json models_json = nlohmann::json::array();
    for (const auto& m : models)
      models_json.push_back({{"label", m.label}, {"path", m.path}, {"attention", m.attention},
                             {"parameters", m.parameters}, {"weight_bytes_read", m.weight_bytes_read},
                             {"kv_bytes_per_token", m.kv_bytes_per_token}});
    std::ofstream out(args.json);
    out << nlohmann::json{{"device", args.device}, {"dtype", args.dtype}, {"threads", torch::get_num_threads()},
                          {"cpu", cpu_name()}, {"bandwidth_start", bw_start}, {"bandwidth_end", bw_end},
                          {"matmul_flops", peak},
                          {"steps", args.steps}, {"warmup", args.warmup}, {"seed_len", args.seed_len},
                          {"models", models_json}, {"rows", rows}}
               .dump(2)
        << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace mlaforge

int main(int argc, char** argv) {
  try {
    return mlaforge::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_torch_decode_bench: error: %s\n", e.what());
    return 1;
  }
}
