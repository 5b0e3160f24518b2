// Forward+backward step time of a real model on CPU: the allocator benchmark.
// Run through bench/malloc_bench.sh, which runs this binary twice in one script, once with glibc malloc
// and once with tcmalloc preloaded, and prints the ratio.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>

#include "core/threads.h"
#include "model/decoder.h"

int main(int argc, char** argv) {
  using namespace mlaforge;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL [steps=12] [seq_len=256] [batch=2]\n", argv[0]);
    return 2;
  }
  const int steps = argc > 2 ? std::atoi(argv[2]) : 12;
  const int64_t seq = argc > 3 ? std::atoll(argv[3]) : 256;
  const int64_t batch = argc > 4 ? std::atoll(argv[4]) : 2;
  torch::set_num_threads(default_num_threads());
  LoadOptions load;
  load.load_tokenizer = false;
  ModelSource src = load_model_source(argv[1], load);
  Decoder model = build_model(src);
  model->train();
  torch::manual_seed(0);
  std::vector<double> times;
  for (int s = 0; s < steps + 2; ++s) {
    auto tokens = torch::randint(src.config.vocab_size, {batch, seq + 1}, torch::kInt64);
    const auto t0 = std::chrono::steady_clock::now();
    auto logits = model->forward(tokens.narrow(1, 0, seq));
    auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                                     tokens.narrow(1, 1, seq).reshape({-1}));
    model->zero_grad();
    loss.backward();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s >= 2) times.push_back(dt);  // the first steps warm up caches and the allocator
  }
  std::sort(times.begin(), times.end());
  const double mean = std::accumulate(times.begin(), times.end(), 0.0) / times.size();
  std::printf("steps %zu  mean %.3f s  median %.3f s  min %.3f s  max %.3f s  tokens/s %.0f\n", times.size(), mean,
              times[times.size() / 2], times.front(), times.back(), batch * seq / mean);
  return 0;
}
