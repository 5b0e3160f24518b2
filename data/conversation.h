#pragma once
// The unit of supervised fine-tuning data, independent of where it came from (JSONL, Parquet, text) and of
// how it is rendered (chat templates). Dataset readers produce Examples; chat templates render them.
#include <string>
#include <vector>

namespace mlaforge {

struct Message {
  std::string role;     // "system", "user", "assistant" (readers normalise ShareGPT's human/gpt etc.)
  std::string content;
};

struct Example {
  // Exactly one of the two is used: a conversation for SFT, or raw text for continued pre-training.
  std::vector<Message> messages;
  std::string text;
  bool is_text = false;
  std::string source;   // "file:row" for error messages (its forms: data/dataset_rows.h)
};

}  // namespace mlaforge
