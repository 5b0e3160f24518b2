#include "data/packing.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace mlaforge {

namespace {

std::string sample_name(const std::vector<TokenizedSample>& samples, size_t i) {
  return "sample " + std::to_string(i) + (samples[i].source.empty() ? "" : " (" + samples[i].source + ")");
}

void check_sample(const std::vector<TokenizedSample>& samples, size_t i, int64_t seq_len) {
  const TokenizedSample& s = samples[i];
  MLA_CHECK(s.ids.size() == s.loss_mask.size(), "packing: ", sample_name(samples, i), " has ", s.ids.size(),
            " ids but ", s.loss_mask.size(), " mask entries");
  MLA_CHECK(!s.ids.empty(), "packing: ", sample_name(samples, i), " is empty");
  MLA_CHECK(static_cast<int64_t>(s.ids.size()) <= seq_len, "packing: ", sample_name(samples, i), " has ",
            s.ids.size(), " tokens, more than the sequence length ", seq_len,
            " (truncate first: max_seq_len <= seq_len)");
}

// Leftmost bin with at least `need` room, over a fixed number of bins, in O(log bins): a max tree over
// the bins' free space. Unopened bins have all their room, so "leftmost" opens new bins in order.
class FirstFit {
 public:
  FirstFit(size_t bins, int64_t capacity) : size_(1) {
    while (size_ < bins) size_ *= 2;
    tree_.assign(2 * size_, 0);
    for (size_t i = 0; i < bins; ++i) tree_[size_ + i] = capacity;
    for (size_t i = size_ - 1; i >= 1; --i) tree_[i] = std::max(tree_[2 * i], tree_[2 * i + 1]);
  }
  // Takes `need` from the leftmost bin that has it; returns the bin.
  size_t place(int64_t need) {
    size_t node = 1;
    while (node < size_) node = tree_[2 * node] >= need ? 2 * node : 2 * node + 1;
    tree_[node] -= need;
    for (size_t i = node / 2; i >= 1; i /= 2) tree_[i] = std::max(tree_[2 * i], tree_[2 * i + 1]);
    return node - size_;
  }

 private:
  size_t size_;
  std::vector<int64_t> tree_;
};

PackedBatch empty_batch(int64_t rows, int64_t seq_len, int64_t pad_id) {
  PackedBatch b;
  b.rows = rows;
  b.seq_len = seq_len;
  const size_t n = static_cast<size_t>(rows * seq_len);
  b.input_ids.assign(n, pad_id);
  b.target_ids.assign(n, kIgnoreIndex);
  b.position_ids.assign(n, 0);
  b.segment_ids.assign(n, 0);
  return b;
}

// Writes sample s at columns [col, col + len) of `row` as document `doc`; returns len.
int64_t place(PackedBatch& b, int64_t row, int64_t col, int32_t doc, const TokenizedSample& s) {
  const int64_t len = static_cast<int64_t>(s.ids.size());
  const size_t base = static_cast<size_t>(row * b.seq_len + col);
  for (int64_t i = 0; i < len; ++i) {
    b.input_ids[base + i] = s.ids[i];
    b.position_ids[base + i] = i;
    b.segment_ids[base + i] = doc;
    if (i + 1 < len && s.loss_mask[i + 1]) {
      b.target_ids[base + i] = s.ids[i + 1];
      ++b.trained_tokens;
    }
  }
  return len;
}

// Padding at the end of a row: its own segment (0) with positions from 0.
void pad_tail(PackedBatch& b, int64_t row, int64_t col) {
  const size_t base = static_cast<size_t>(row * b.seq_len);
  for (int64_t c = col; c < b.seq_len; ++c) b.position_ids[base + c] = c - col;
  b.pad_tokens += b.seq_len - col;
}

}  // namespace

std::vector<int32_t> PackedBatch::cu_seqlens() const {
  std::vector<int32_t> out{0};
  const size_t n = segment_ids.size();
  for (size_t i = 1; i <= n; ++i) {
    const bool row_start = seq_len > 0 && i % static_cast<size_t>(seq_len) == 0;
    if (i == n || row_start || segment_ids[i] != segment_ids[i - 1]) out.push_back(static_cast<int32_t>(i));
  }
  return out;
}

std::vector<int64_t> shifted_targets(const TokenizedSample& sample) {
  std::vector<int64_t> out(sample.ids.size(), kIgnoreIndex);
  for (size_t i = 0; i + 1 < sample.ids.size(); ++i)
    if (sample.loss_mask[i + 1]) out[i] = sample.ids[i + 1];
  return out;
}

std::vector<std::vector<int32_t>> plan_packing(const std::vector<TokenizedSample>& samples, int64_t seq_len,
                                               bool first_fit_decreasing) {
  MLA_CHECK(seq_len >= 1, "packing: sequence length ", seq_len, " must be positive");
  for (size_t i = 0; i < samples.size(); ++i) check_sample(samples, i, seq_len);
  std::vector<int32_t> order(samples.size());
  std::iota(order.begin(), order.end(), 0);
  if (first_fit_decreasing)
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return samples[a].ids.size() > samples[b].ids.size(); });
  std::vector<std::vector<int32_t>> rows;
  if (samples.empty()) return rows;
  FirstFit bins(samples.size(), seq_len);
  for (int32_t i : order) {
    const size_t bin = bins.place(static_cast<int64_t>(samples[i].ids.size()));
    if (bin >= rows.size()) rows.resize(bin + 1);
    rows[bin].push_back(i);
  }
  return rows;
}

PackedBatch make_packed_batch(const std::vector<TokenizedSample>& samples,
                              const std::vector<std::vector<int32_t>>& rows, int64_t seq_len, int64_t pad_id) {
  MLA_CHECK(seq_len >= 1, "packing: sequence length ", seq_len, " must be positive");
  PackedBatch b = empty_batch(static_cast<int64_t>(rows.size()), seq_len, pad_id);
  for (size_t r = 0; r < rows.size(); ++r) {
    int64_t col = 0;
    int32_t doc = 0;
    for (int32_t i : rows[r]) {
      MLA_CHECK(i >= 0 && static_cast<size_t>(i) < samples.size(), "packing: row ", r, " names sample ", i, " of ",
                samples.size());
      check_sample(samples, static_cast<size_t>(i), seq_len);
      MLA_CHECK(col + static_cast<int64_t>(samples[i].ids.size()) <= seq_len, "packing: row ", r, " holds more than ",
                seq_len, " tokens");
      col += place(b, static_cast<int64_t>(r), col, ++doc, samples[i]);
      b.documents.push_back(i);
    }
    pad_tail(b, static_cast<int64_t>(r), col);
  }
  return b;
}

PackedBatch make_padded_batch(const std::vector<TokenizedSample>& samples, const std::vector<int32_t>& indices,
                              int64_t pad_id, int64_t pad_to_multiple_of) {
  MLA_CHECK(pad_to_multiple_of >= 1, "padding: pad_to_multiple_of ", pad_to_multiple_of, " must be positive");
  int64_t longest = 0;
  for (int32_t i : indices) {
    MLA_CHECK(i >= 0 && static_cast<size_t>(i) < samples.size(), "padding: sample index ", i, " out of ",
              samples.size());
    longest = std::max(longest, static_cast<int64_t>(samples[i].ids.size()));
  }
  const int64_t seq_len = (longest + pad_to_multiple_of - 1) / pad_to_multiple_of * pad_to_multiple_of;
  std::vector<std::vector<int32_t>> rows;
  rows.reserve(indices.size());
  for (int32_t i : indices) rows.push_back({i});
  return make_packed_batch(samples, rows, std::max<int64_t>(seq_len, 1), pad_id);
}

int64_t default_pad_id(const Tokenizer& tokenizer) {
  if (tokenizer.pad_id) return *tokenizer.pad_id;
  if (tokenizer.eos_id) return *tokenizer.eos_id;
  return 0;
}

}  // namespace mlaforge
