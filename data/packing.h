#pragma once
// Packing tokenised samples (data/sft_sample.h) into fixed-length rows, torch-free: plain row-major arrays
// that the trainer turns into (rows, seq_len) tensors (torch::from_blob(...).clone() or similar).
//
// Layout of a row. Documents (samples) are laid end to end, then padding:
//   input_ids     the documents' ids, then pad_id
//   target_ids    target_ids[t] = input_ids[t + 1] when t + 1 is in the SAME document and that token is
//                 trained (loss_mask[t + 1] == 1); kIgnoreIndex (-100) everywhere else: at every
//                 document's last token (it never predicts the next document's first token), on untrained
//                 tokens, on padding
//   position_ids  0, 1, 2, ... restarting at 0 at every document start (and at the start of the padding)
//   segment_ids   1, 2, 3, ... per document within the row; 0 for padding. Attention must stay inside a
//                 segment: ForwardOptions::segment_ids (model/decoder.h) does exactly that (padding only
//                 sees padding, so no row of the attention mask is empty)
// Already shifted: the loss is cross_entropy(logits.view(-1, V), target_ids.view(-1), ignore_index=-100)
// with logits at position t scoring target_ids[t]; no further shift.
//
// Why the packed loss equals the unpacked one (the torch test that proves it needs the model): document
// d of a row occupying columns [s, s + n) sees, through segment_ids and restarting positions, exactly the
// attention and RoPE phases it would see alone in a row [0, n), so its logits are those of the unpacked
// run, and target_ids[s + i] == shifted_targets(sample)[i]. Hence the SUM of per-token losses over a packed
// batch equals the sum over its samples run one per row (make_padded_batch), and dividing both by
// trained_tokens (the same count) gives the same mean: a token-level mean, not a mean of per-document
// means. For gradient accumulation divide by the trained_tokens of the whole step.
#include <cstdint>
#include <vector>

#include "data/sft_sample.h"
#include "data/tokenizer.h"

namespace mlaforge {

constexpr int64_t kIgnoreIndex = -100;

struct PackedBatch {
  int64_t rows = 0;
  int64_t seq_len = 0;
  std::vector<int64_t> input_ids;     // (rows, seq_len) row-major
  std::vector<int64_t> target_ids;    // (rows, seq_len), kIgnoreIndex where nothing is trained
  std::vector<int64_t> position_ids;  // (rows, seq_len)
  std::vector<int32_t> segment_ids;   // (rows, seq_len): 1.. per document, 0 padding
  std::vector<int32_t> documents;     // the sample index of each document, rows in order, left to right
  int64_t trained_tokens = 0;         // entries of target_ids that are not kIgnoreIndex
  int64_t pad_tokens = 0;

  // Document boundaries over the flattened (rows * seq_len) tokens, as variable-length attention kernels
  // take them (cu_seqlens): 0, end of the first segment, ..., rows * seq_len; a padding run is a segment.
  std::vector<int32_t> cu_seqlens() const;
};

// The targets of one sample on its own: shifted_targets(s)[i] = s.ids[i + 1] if s.loss_mask[i + 1] else
// kIgnoreIndex, and kIgnoreIndex for the last token. A packed batch holds exactly these per document.
std::vector<int64_t> shifted_targets(const TokenizedSample& sample);

// Which samples go into which row (sample indices, in row order and, within a row, left to right).
// First-fit: each sample goes into the first row that still has room, a new row when none has;
// first_fit_decreasing (default) places the samples longest first (ties by index), which fills rows best;
// otherwise they are placed in the given order. Deterministic. Every sample must have 1..seq_len tokens
// (truncate first: SampleOptions::max_seq_len <= seq_len); throws naming the sample otherwise.
std::vector<std::vector<int32_t>> plan_packing(const std::vector<TokenizedSample>& samples, int64_t seq_len,
                                               bool first_fit_decreasing = true);

// The rows of a plan (all of them, or a micro-batch: any subset of plan_packing's rows) as arrays.
PackedBatch make_packed_batch(const std::vector<TokenizedSample>& samples,
                              const std::vector<std::vector<int32_t>>& rows, int64_t seq_len, int64_t pad_id);

// Packing off: one sample per row, padded to the longest of them (rounded up to pad_to_multiple_of).
PackedBatch make_padded_batch(const std::vector<TokenizedSample>& samples, const std::vector<int32_t>& indices,
                              int64_t pad_id, int64_t pad_to_multiple_of = 1);

// Padding id: the tokenizer's pad token, else its EOS, else 0 (padding is never attended to by real
// tokens nor trained, so any valid id works).
int64_t default_pad_id(const Tokenizer& tokenizer);

}  // namespace mlaforge
