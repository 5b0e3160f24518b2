#include "data/data_loader.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace mlaforge {

namespace {

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// splitmix64 (Steele, Lea, Flood 2014): tiny state, full period, passes BigCrush; plenty for a shuffle.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t state) : state_(state) {}
  uint64_t next() {
    state_ += 0x9E3779B97F4A7C15ull;
    return mix64(state_);
  }
  // Uniform in [0, n), unbiased (Lemire 2019, "Fast random integer generation in an interval").
  uint64_t below(uint64_t n) {
    const uint64_t threshold = (0 - n) % n;  // (2^64 - n) mod n
    __uint128_t m = static_cast<__uint128_t>(next()) * n;
    while (static_cast<uint64_t>(m) < threshold) m = static_cast<__uint128_t>(next()) * n;
    return static_cast<uint64_t>(m >> 64);
  }

 private:
  uint64_t state_;
};

int64_t get_int(const nlohmann::json& j, const char* field) {
  MLA_CHECK(j.contains(field), "data position: missing field '", field, "' in ", j.dump());
  MLA_CHECK(j[field].is_number_integer(), "data position: field '", field, "' must be an integer, found ", j[field].dump());
  return j[field].get<int64_t>();
}

// Sample k of a step's run, stashed and restored so that plan_packing can be tried on any prefix of the
// materialised run without copying tokens (moves only).
class Prefix {
 public:
  explicit Prefix(std::vector<TokenizedSample>& samples) : samples_(samples) {}
  void resize(size_t k) {
    while (samples_.size() > k) {
      stash_.push_back(std::move(samples_.back()));
      samples_.pop_back();
    }
    while (samples_.size() < k) {
      samples_.push_back(std::move(stash_.back()));
      stash_.pop_back();
    }
  }

 private:
  std::vector<TokenizedSample>& samples_;
  std::vector<TokenizedSample> stash_;
};

}  // namespace

// --------------------------------------------------------------------------------------- positions --
nlohmann::json DataPosition::to_json() const {
  return {{"epoch", epoch},   {"epoch_sample", epoch_sample}, {"global_sample", global_sample}, {"step", step},
          {"seed", seed},     {"cache_key", cache_key},       {"num_samples", num_samples}};
}

DataPosition DataPosition::from_json(const nlohmann::json& j) {
  MLA_CHECK(j.is_object(), "data position: expected a JSON object, found ", j.dump());
  DataPosition p;
  p.epoch = get_int(j, "epoch");
  p.epoch_sample = get_int(j, "epoch_sample");
  p.global_sample = get_int(j, "global_sample");
  if (j.contains("step")) p.step = get_int(j, "step");
  if (j.contains("num_samples")) p.num_samples = get_int(j, "num_samples");
  if (j.contains("seed")) {
    MLA_CHECK(j["seed"].is_number_unsigned() || j["seed"].is_number_integer(),
              "data position: field 'seed' must be an integer, found ", j["seed"].dump());
    p.seed = j["seed"].get<uint64_t>();
  }
  if (j.contains("cache_key")) {
    MLA_CHECK(j["cache_key"].is_string(), "data position: field 'cache_key' must be a string");
    p.cache_key = j["cache_key"].get<std::string>();
  }
  MLA_CHECK(p.epoch >= 0 && p.epoch_sample >= 0 && p.global_sample >= 0 && p.step >= 0,
            "data position: negative counter in ", j.dump());
  return p;
}

// ------------------------------------------------------------------------------------------ shuffling --
std::vector<int32_t> shuffled_order(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  SplitMix64 rng(mix64(mix64(seed) ^ static_cast<uint64_t>(epoch)));
  for (int64_t i = n - 1; i >= 1; --i) {
    const uint64_t j = rng.below(static_cast<uint64_t>(i + 1));
    std::swap(p[static_cast<size_t>(i)], p[j]);
  }
  return p;
}

void append_empty_rows(PackedBatch& b, int64_t count, int64_t pad_id) {
  if (count <= 0) return;
  const size_t add = static_cast<size_t>(count * b.seq_len);
  b.input_ids.insert(b.input_ids.end(), add, pad_id);
  b.target_ids.insert(b.target_ids.end(), add, kIgnoreIndex);
  b.segment_ids.insert(b.segment_ids.end(), add, 0);
  for (int64_t r = 0; r < count; ++r)
    for (int64_t c = 0; c < b.seq_len; ++c) b.position_ids.push_back(c);
  b.rows += count;
  b.pad_tokens += count * b.seq_len;
}

DataLoaderOptions eval_loader_options(const DataLoaderOptions& train) {
  DataLoaderOptions o = train;
  o.grad_accum = 1;
  o.shuffle = false;
  o.epochs = 1;
  return o;
}

// ------------------------------------------------------------------------------------------- loader --
DataLoader::DataLoader(const TokenCache& cache, DataLoaderOptions options, std::optional<DataPosition> start)
    : cache_(cache), options_(std::move(options)) {
  const DataLoaderOptions& o = options_;
  MLA_CHECK(o.micro_batch >= 1 && o.grad_accum >= 1 && o.dp_size >= 1, "data loader: micro_batch ", o.micro_batch,
            ", grad_accum ", o.grad_accum, " and dp_size ", o.dp_size, " must all be >= 1");
  MLA_CHECK(o.dp_rank >= 0 && o.dp_rank < o.dp_size, "data loader: dp_rank ", o.dp_rank, " outside 0..", o.dp_size - 1);
  MLA_CHECK(o.pad_to_multiple_of >= 1, "data loader: pad_to_multiple_of ", o.pad_to_multiple_of, " must be >= 1");
  MLA_CHECK(o.epochs >= 0, "data loader: epochs ", o.epochs, " must be >= 0 (0: endless)");
  MLA_CHECK(cache.size() > 0 && cache.size() <= std::numeric_limits<int32_t>::max(), "data loader: cache ",
            cache.folder(), " has ", cache.size(), " samples (1..2^31-1 supported)");
  pad_id_ = o.pad_id.value_or(cache.pad_id());
  if (o.packing) {
    seq_len_ = o.seq_len > 0 ? o.seq_len : cache.max_seq_len();
    MLA_CHECK(seq_len_ > 0, "data loader: packing needs a row length: set seq_len (the cache ", cache.folder(),
              " was built without max_seq_len)");
    MLA_CHECK(cache.max_sample_tokens() <= seq_len_, "data loader: the cache's longest sample has ",
              cache.max_sample_tokens(), " tokens, more than the packing row length ", seq_len_,
              " (build the cache with max_seq_len <= seq_len)");
  }
  position_.seed = o.seed;
  position_.cache_key = cache.key();
  position_.num_samples = cache.size();
  if (start) seek(*start);
}

void DataLoader::seek(const DataPosition& p) {
  const int64_t n = cache_.size();
  MLA_CHECK(p.cache_key.empty() || p.cache_key == cache_.key(), "data position: saved for token cache ", p.cache_key,
            ", this loader reads ", cache_.key(), " (", cache_.folder(),
            "): the sample stream would differ, so samples would be skipped or repeated");
  MLA_CHECK(p.num_samples == 0 || p.num_samples == n, "data position: saved for ", p.num_samples,
            " samples, the cache has ", n);
  MLA_CHECK(!options_.shuffle || p.seed == options_.seed, "data position: saved with seed ", p.seed,
            ", this loader shuffles with seed ", options_.seed,
            ": the sample order would differ, so samples would be skipped or repeated");
  MLA_CHECK(p.epoch_sample >= 0 && p.epoch_sample < n, "data position: epoch_sample ", p.epoch_sample, " outside 0..",
            n - 1);
  MLA_CHECK(p.global_sample == p.epoch * n + p.epoch_sample, "data position: global_sample ", p.global_sample,
            " != epoch ", p.epoch, " * ", n, " samples + epoch_sample ", p.epoch_sample);
  position_ = p;
  position_.seed = options_.seed;
  position_.cache_key = cache_.key();
  position_.num_samples = n;
}

bool DataLoader::done() const { return options_.epochs > 0 && position_.epoch >= options_.epochs; }

std::vector<int32_t> DataLoader::epoch_order(int64_t epoch) const {
  if (options_.shuffle) return shuffled_order(cache_.size(), options_.seed, epoch);
  std::vector<int32_t> order(static_cast<size_t>(cache_.size()));
  std::iota(order.begin(), order.end(), 0);
  return order;
}

const std::vector<int32_t>& DataLoader::order_for(int64_t epoch) {
  if (cached_epoch_ != epoch) {
    order_ = epoch_order(epoch);
    cached_epoch_ = epoch;
  }
  return order_;
}

DataLoader::Plan DataLoader::plan_step(const std::vector<int32_t>& order, int64_t begin,
                                       std::vector<TokenizedSample>& samples) const {
  const int64_t n = static_cast<int64_t>(order.size());
  const int64_t g = options_.global_rows();
  Plan plan;
  samples.clear();
  if (!options_.packing) {
    plan.samples = std::min(g, n - begin);
    for (int64_t i = 0; i < plan.samples; ++i) samples.push_back(cache_.sample(order[begin + i]));
    return plan;
  }
  // Candidates: the longest run whose tokens fit in G rows at all (every sample fits a row on its own).
  const int64_t budget = g * seq_len_;
  int64_t kmax = 0, tokens = 0;
  while (begin + kmax < n) {
    const int64_t len = cache_.length(order[begin + kmax]);
    if (kmax > 0 && tokens + len > budget) break;
    tokens += len;
    ++kmax;
  }
  for (int64_t i = 0; i < kmax; ++i) samples.push_back(cache_.sample(order[begin + i]));
  Prefix prefix(samples);
  const auto fits = [&](int64_t k, std::vector<std::vector<int32_t>>& rows) {
    prefix.resize(static_cast<size_t>(k));
    rows = plan_packing(samples, seq_len_, /*first_fit_decreasing=*/true);
    return static_cast<int64_t>(rows.size()) <= g;
  };
  std::vector<std::vector<int32_t>> rows;
  if (fits(kmax, rows)) {
    plan.samples = kmax;
    plan.rows = std::move(rows);
    return plan;
  }
  int64_t lo = 1, hi = kmax;  // fits(lo) (one sample, one row), !fits(hi)
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (fits(mid, rows))
      lo = mid;
    else
      hi = mid;
  }
  const bool ok = fits(lo, rows);
  MLA_CHECK(ok, "data loader: internal error: packing plan of ", lo, " samples does not fit ", g, " rows");
  plan.samples = lo;
  plan.rows = std::move(rows);
  return plan;
}

int64_t DataLoader::steps_in_epoch(int64_t epoch) const {
  const int64_t n = cache_.size();
  const int64_t g = options_.global_rows();
  if (!options_.packing) return (n + g - 1) / g;
  const std::vector<int32_t> order = epoch_order(epoch);
  std::vector<TokenizedSample> samples;
  int64_t steps = 0;
  for (int64_t begin = 0; begin < n; ++steps) begin += plan_step(order, begin, samples).samples;
  return steps;
}

std::optional<LoaderStep> DataLoader::next_step() {
  if (done()) return std::nullopt;
  const int64_t n = cache_.size();
  const int64_t begin = position_.epoch_sample;
  const std::vector<int32_t>& order = order_for(position_.epoch);
  std::vector<TokenizedSample> samples;
  const Plan plan = plan_step(order, begin, samples);

  LoaderStep step;
  step.start = position_;
  step.global_samples = plan.samples;
  for (const TokenizedSample& s : samples) {
    step.global_tokens += static_cast<int64_t>(s.size());
    for (size_t t = 1; t < s.loss_mask.size(); ++t) step.global_trained_tokens += s.loss_mask[t] != 0;
  }
  step.global_rows = options_.packing ? static_cast<int64_t>(plan.rows.size()) : plan.samples;

  const int64_t mb = options_.micro_batch;
  for (int64_t a = 0; a < options_.grad_accum; ++a) {
    const int64_t j = a * options_.dp_size + options_.dp_rank;  // global micro-batch index
    const int64_t first = j * mb, last = std::min(first + mb, step.global_rows);
    PackedBatch batch;
    if (options_.packing) {
      std::vector<std::vector<int32_t>> rows;
      for (int64_t r = first; r < last; ++r) rows.push_back(plan.rows[static_cast<size_t>(r)]);
      batch = make_packed_batch(samples, rows, seq_len_, pad_id_);
    } else if (first < last) {
      std::vector<int32_t> indices;
      for (int64_t r = first; r < last; ++r) indices.push_back(static_cast<int32_t>(r));
      batch = make_padded_batch(samples, indices, pad_id_, options_.pad_to_multiple_of);
    } else {
      batch.seq_len = options_.pad_to_multiple_of;  // a micro-batch of nothing but empty rows
    }
    append_empty_rows(batch, mb - batch.rows, pad_id_);
    for (int32_t& d : batch.documents) d = order[static_cast<size_t>(begin + d)];
    step.micro_batches.push_back(std::move(batch));
  }

  position_.epoch_sample += plan.samples;
  position_.global_sample += plan.samples;
  ++position_.step;
  if (position_.epoch_sample == n) {
    ++position_.epoch;
    position_.epoch_sample = 0;
    step.epoch_end = true;
  }
  return step;
}

}  // namespace mlaforge
