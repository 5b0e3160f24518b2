#pragma once
// Deterministic, resumable training batches from a TokenCache (data/token_cache.h), torch-free. One
// DataLoader per data-parallel rank; every rank computes the same global batch and keeps its own slice, so
// no communication is needed, not even for the loss divisor.
//
// The sample stream. Epoch e visits every cache sample exactly once, in the order
//   shuffle on:  a Fisher-Yates permutation of 0..N-1 driven by splitmix64 (below), seeded by (seed, e);
//   shuffle off: 0, 1, ..., N-1 (evaluation).
// Epochs follow each other; a global step never spans two epochs (the last step of an epoch takes what is
// left, see "short steps"). The stream position is therefore one number, the samples consumed so far by all
// ranks together (DataPosition::global_sample = epoch * N + epoch_sample); it alone fixes every later batch
// for a given batch shape, and a step always starts exactly where the previous one stopped.
//
// The shuffle, exactly (so that any language reproduces it, independent of the C++ library):
//   mix64(z):  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
//              return z ^ (z >> 31)                                     (all arithmetic mod 2^64)
//   next():    state += 0x9E3779B97F4A7C15; return mix64(state)        (splitmix64)
//   state0 = mix64(mix64(seed) ^ epoch)
//   below(n):  Lemire's unbiased bounded integer: m = next() * n (128-bit); while (m mod 2^64) < (2^64 - n) mod n:
//              m = next() * n; return m >> 64
//   p = [0..N-1]; for i = N-1 down to 1: j = below(i + 1); swap(p[i], p[j])
//
// A global step holds G = micro_batch * grad_accum * dp_size rows, cut into dp_size * grad_accum
// micro-batches of micro_batch rows: global micro-batch j holds rows [j * micro_batch, (j + 1) * micro_batch)
// and belongs to rank j % dp_size as its accumulation step j / dp_size (interleaved, so that a short last
// step spreads over the ranks). What a row is:
//   packing off  one sample. The step takes the next G samples of the stream, row g = the g-th of them.
//                Each micro-batch is padded to its longest sample (rounded up to pad_to_multiple_of).
//   packing on   several samples laid end to end (data/packing.h). The step takes the LONGEST run of the
//                next samples of the stream, [p, p + k), that plan_packing (first-fit decreasing) fits into
//                at most G rows of seq_len, searched exactly so (first-fit decreasing is not monotone in k, so
//                the search may stop below the true largest k; the result is deterministic and always fits):
//                  kmax = the longest prefix whose token sum is <= G * seq_len (at least 1 sample);
//                  if kmax fits: k = kmax; else lo = 1, hi = kmax; while hi - lo > 1:
//                    mid = lo + (hi - lo) / 2 (integer division); if mid fits: lo = mid else hi = mid;
//                  k = lo. Row g of
//                the step is row g of that plan. Every micro-batch has seq_len columns.
// So in both modes the unit of the stream is the SAMPLE: a step consumes a contiguous run of the epoch's
// order, the rows are formed from that run before they are distributed, and the dp ranks' rows together are
// exactly the rows the same step has with dp_size 1 (same G): DP=2 trains on the same batch as DP=1 with
// twice the accumulation. Resuming from a DataPosition with a different dp_size (or any other batch shape)
// continues on exactly the next sample: nothing is skipped or repeated, only the grouping of later samples
// into steps follows the new shape.
//
// Short steps. When fewer samples are left in the epoch than a step can hold (or first-fit leaves rows
// unused), the missing rows are EMPTY rows: all padding, target kIgnoreIndex, segment 0, positions 0..: they
// add nothing to the loss or the gradient, and keep every micro-batch at micro_batch rows (and, with
// packing, at seq_len columns), so all ranks run the same shapes and stay in lock-step even when one has
// no real sample in a micro-batch.
//
// Loss normalisation: LoaderStep::global_trained_tokens is the number of loss terms in the whole global step
// (all ranks, all micro-batches). With per-token losses summed on each rank and gradients summed over ranks,
// dividing by it gives the token-level mean of the global batch, identical for any dp_size.
//
// Cost: every rank copies the whole global step's samples out of the mapping (G * seq_len tokens at most,
// 5 bytes each: 10 MB for 512 rows of 4096) and, with packing, runs plan_packing O(log k) times on them;
// both are small next to a training step. The current epoch's order is kept (4 bytes per sample).
//
// PackedBatch::documents holds CACHE sample indices (TokenCache::sample(i)), not indices into a step.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/packing.h"
#include "data/token_cache.h"

namespace mlaforge {

// Where the stream stands: the next step starts at sample `epoch_sample` of epoch `epoch`'s order.
struct DataPosition {
  int64_t epoch = 0;
  int64_t epoch_sample = 0;   // samples of this epoch's order already consumed (all ranks together)
  int64_t global_sample = 0;  // samples consumed since the start, all ranks and epochs: epoch * N + epoch_sample
  int64_t step = 0;           // optimizer steps taken (informational; not needed to find the next batch)
  // What the position is only valid for (checked by DataLoader::seek): the stream's seed, the cache.
  uint64_t seed = 0;
  std::string cache_key;
  int64_t num_samples = 0;

  nlohmann::json to_json() const;
  static DataPosition from_json(const nlohmann::json& j);  // throws naming the missing/invalid field
  bool operator==(const DataPosition&) const = default;
};

struct DataLoaderOptions {
  int64_t micro_batch = 1;        // rows per micro-batch
  int64_t grad_accum = 1;         // micro-batches per optimizer step on each rank
  int64_t dp_size = 1;
  int64_t dp_rank = 0;
  bool packing = true;
  int64_t seq_len = 0;            // packing: columns per row; 0 = the cache's max_seq_len (must be set then)
  int64_t pad_to_multiple_of = 1; // packing off: micro-batch width rounded up to this
  bool shuffle = true;
  uint64_t seed = 0;
  int64_t epochs = 0;             // stream length in epochs; 0 = endless
  std::optional<int64_t> pad_id;  // unset: the cache's (default_pad_id of its tokenizer)

  int64_t global_rows() const { return micro_batch * grad_accum * dp_size; }
};

// Evaluation: the same shapes on this rank, in cache order, once, one micro-batch per step.
DataLoaderOptions eval_loader_options(const DataLoaderOptions& train);

struct LoaderStep {
  std::vector<PackedBatch> micro_batches;  // this rank's grad_accum micro-batches, in accumulation order
  int64_t global_trained_tokens = 0;       // loss terms in the whole global step (the loss divisor)
  int64_t global_samples = 0;              // samples in the global step
  int64_t global_tokens = 0;               // real (non-padding) tokens in the global step
  int64_t global_rows = 0;                 // non-empty rows in the global step
  DataPosition start;                      // where the step began (position() after it: where the next begins)
  bool epoch_end = false;                  // the step consumed the epoch's last sample
};

class DataLoader {
 public:
  // The cache must outlive the loader. `start` resumes (see seek); default: the beginning.
  DataLoader(const TokenCache& cache, DataLoaderOptions options, std::optional<DataPosition> start = {});

  const DataLoaderOptions& options() const { return options_; }
  int64_t seq_len() const { return seq_len_; }     // packing: row width (packing off: 0)
  int64_t pad_id() const { return pad_id_; }

  // The next step of this rank; nullopt once `epochs` epochs are consumed (never when epochs == 0).
  std::optional<LoaderStep> next_step();
  bool done() const;

  // The position of the NEXT step: save it with a checkpoint, give it back to seek() or the constructor.
  const DataPosition& position() const { return position_; }
  // Continues from `position`. Throws when it was saved for another cache or seed (the stream would differ,
  // so samples would be skipped or repeated) or is inconsistent (global_sample != epoch * N + epoch_sample).
  void seek(const DataPosition& position);

  // The sample order of an epoch (cache indices).
  std::vector<int32_t> epoch_order(int64_t epoch) const;
  // Global steps epoch `epoch` takes with these options. Packing off: ceil(N / G). Packing on: the packing
  // is run for the whole epoch (reads its tokens once), since how many samples fit depends on the order.
  int64_t steps_in_epoch(int64_t epoch) const;

 private:
  struct Plan {
    int64_t samples = 0;                        // k: samples of the order consumed by the step
    std::vector<std::vector<int32_t>> rows;     // packing on: plan rows (indices into the step's samples)
  };
  Plan plan_step(const std::vector<int32_t>& order, int64_t begin, std::vector<TokenizedSample>& samples) const;
  const std::vector<int32_t>& order_for(int64_t epoch);

  const TokenCache& cache_;
  DataLoaderOptions options_;
  int64_t seq_len_ = 0;
  int64_t pad_id_ = 0;
  DataPosition position_;
  int64_t cached_epoch_ = -1;
  std::vector<int32_t> order_;
};

// Fisher-Yates permutation of 0..n-1 by the documented splitmix64 rule above.
std::vector<int32_t> shuffled_order(int64_t n, uint64_t seed, int64_t epoch);

// Appends `count` empty rows (all padding, nothing trained) to a batch of width batch.seq_len.
void append_empty_rows(PackedBatch& batch, int64_t count, int64_t pad_id);

}  // namespace mlaforge
