#pragma once
// Perplexity evaluation: mean negative log-likelihood over every predicted token of a set of documents,
// each BOS-prefixed and truncated, each scored on its own (never across document boundaries).
#include <cstdint>
#include <string>
#include <vector>

#include "model/decoder.h"

namespace mlaforge {

class Tokenizer;

struct EvalOptions {
  int64_t max_seq_len = 512;      // tokens per document, BOS included
  int64_t batch_tokens = 8192;    // padded tokens per forward (documents are batched by length)
  bool progress = true;           // progress bar on a terminal
};

struct EvalResult {
  int64_t documents = 0;
  int64_t tokens = 0;  // predicted tokens
  double mean_nll = 0;
  double perplexity = 0;
  double seconds = 0;
};

// Tokenises each document as [BOS] + encode(doc) (BOS when the tokenizer or config has one).
std::vector<std::vector<int64_t>> tokenize_documents(const Tokenizer& tokenizer, const ModelConfig& config,
                                                     const std::vector<std::string>& documents,
                                                     int64_t max_seq_len);

EvalResult evaluate_nll(DecoderImpl& model, const std::vector<std::vector<int64_t>>& documents,
                        const EvalOptions& options = {});

}  // namespace mlaforge
