#pragma once
// Reading evaluation / calibration text: plain files split into documents at blank lines, or JSONL
// with one document per row (a text field, or chat `messages` flattened by the caller).
#include <string>
#include <vector>

namespace mlaforge {

struct TextReadOptions {
  std::string jsonl_field = "text";  // JSONL: which string field holds the document
  size_t max_documents = 0;          // 0: all
};

// Dispatches on the extension: .jsonl / .json (JSON lines) or anything else (plain text).
// Errors name the file and, for JSONL, the line.
std::vector<std::string> read_documents(const std::string& path, const TextReadOptions& options = {});

// Splits plain text into documents at blank lines (lines that are empty or whitespace only). Each
// document keeps its inner newlines; leading/trailing whitespace lines are dropped.
std::vector<std::string> split_paragraphs(const std::string& text);

}  // namespace mlaforge
