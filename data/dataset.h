#pragma once
// Fine-tuning and calibration datasets: where the files are (sources), how a row becomes an Example
// (schemas), and the readers that combine both. Formats are handled one level down (data/dataset_rows.h).
//
// Schemas (SchemaOptions::format):
//   messages         `messages`: [{role, content}], roles system/user/assistant/tool; content a string
//                    or OpenAI-style parts [{type: "text", text}] (the text parts are concatenated)
//   sharegpt         `conversations`: [{from, value}], from in human/user, gpt/assistant/model/chatgpt,
//                    system, tool/function/observation; plus an optional top-level `system` column
//   prompt_response  two string fields, each a path: `question`, `meta.prompt`, `code[0]`, `a.b[2].c`
//   text             one string field (`text`) -> Example::is_text, for continued pre-training
//   auto             the first of these whose column the file has (checked once per file)
// A .txt file is always text: one Example per blank-line-separated document.
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/conversation.h"

namespace mlaforge {

// Plain fields so a YAML recipe's `data:` block can fill them one to one.
struct SchemaOptions {
  std::string format = "auto";                       // auto | messages | sharegpt | prompt_response | text
  std::string split = "train";                       // which split of a Hugging Face dataset folder
  std::string messages_column = "messages";          // messages: the list of {role, content}
  std::string conversations_column = "conversations";  // sharegpt: the list of {from, value}
  std::string system_column = "system";              // sharegpt: optional top-level system prompt
  std::string prompt_column = "prompt";              // prompt_response: path of the user turn
  std::string response_column = "response";          // prompt_response: path of the assistant turn
  std::string text_column = "text";                  // text: path of the document
  std::string system_prompt;                         // prepended to conversations that have no system turn
  bool require_assistant_last = true;                // SFT: the last turn must be the assistant's
  bool skip_malformed = false;                       // skip (and count) malformed rows instead of failing
  size_t max_examples = 0;                           // stop after this many examples (0: all)
};

// What a read did; read_examples logs a one-line summary when rows were skipped.
struct DatasetStats {
  size_t files = 0;
  size_t rows = 0;        // rows seen (examples + skipped)
  size_t examples = 0;
  size_t skipped = 0;     // malformed rows skipped (skip_malformed)
  std::string first_skip_reason;  // the first skipped row's error message
};

// --- sources ---------------------------------------------------------------------------------------
// The data files behind `path`, in reading order:
//   a file          itself
//   a glob          its matches, sorted (a pattern that matches no file is an error)
//   a folder        a Hugging Face dataset folder: in data/ then in the folder itself, the first of
//                   <split>-*.parquet, <split>.parquet, <split>-*.jsonl, <split>.jsonl, <split>.json;
//                   then <split>/*.parquet (the Hub's parquet-converter layout); if no file there is
//                   named after any split, every *.parquet, else *.jsonl, *.json, *.txt. Sorted.
// Throws naming the path (and the split) when nothing is found.
std::vector<std::string> resolve_data_files(const std::string& path, const std::string& split = "train");

// --- schemas ---------------------------------------------------------------------------------------
// The schema `auto` resolves to for a file with these top-level columns (a concrete format is returned
// unchanged). Throws naming the file and the columns present when nothing fits.
std::string detect_schema(const std::vector<std::string>& columns, const SchemaOptions& options,
                          const std::string& file);

// Top-level columns a schema reads (for Parquet column projection).
std::vector<std::string> schema_columns(const std::string& format, const SchemaOptions& options);

// One row -> Example under a concrete format. Throws "<source>: field '<path>': <problem>" for a missing
// field, a wrong type, an unknown role, an empty conversation or (require_assistant_last) a last turn
// that is not the assistant's. options.system_prompt is prepended when no system turn is present.
Example row_to_example(const nlohmann::json& row, const std::string& format, const SchemaOptions& options,
                       const std::string& source);

// Follows a field path ("a.b", "code[0]", "x.y[1][2]") into a row; nullptr when a step is absent.
// Throws on a syntactically bad path.
const nlohmann::json* find_field(const nlohmann::json& row, const std::string& path);

// --- readers ---------------------------------------------------------------------------------------
// Every Example of a dataset (file, folder or glob), in file then row order.
std::vector<Example> read_examples(const std::string& path, const SchemaOptions& options = {},
                                   DatasetStats* stats = nullptr);

// Calibration/evaluation documents from .txt (blank-line-separated), .jsonl/.json/.parquet or a folder:
// the `column` string of each row, or, for a conversation dataset without that column, the contents
// of its turns joined by blank lines. Null or empty documents are left out; an empty result is an error.
std::vector<std::string> read_text_documents(const std::string& path, const std::string& column = "text");

}  // namespace mlaforge
