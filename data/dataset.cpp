// Dataset readers: sources -> files -> rows -> Examples (or calibration documents).
#include "data/dataset.h"

#include "core/error.h"
#include "core/log.h"
#include "data/dataset_rows.h"

namespace mlaforge {
namespace {

std::vector<std::string> row_keys(const nlohmann::json& row) {
  std::vector<std::string> keys;
  for (const auto& item : row.items()) keys.push_back(item.key());
  return keys;
}

// The schema of one file. Parquet: from its schema before reading (so the read can be projected);
// JSONL/JSON under "auto": decided by the keys of the first row, in the read callback.
std::string file_schema(const std::string& file, const SchemaOptions& options) {
  switch (data_file_format(file)) {
    case DataFileFormat::text:
      MLA_CHECK(options.format == "auto" || options.format == "text", file, ": a plain-text file holds ",
                "documents, not the '", options.format, "' schema (use .jsonl/.json/.parquet for conversations)");
      return "text";
    case DataFileFormat::parquet: return detect_schema(file_columns(file), options, file);
    default: return options.format == "auto" ? "auto" : detect_schema({}, options, file);  // validates the name
  }
}

// read_text_documents: the document column when the file has it, else its conversations.
std::string document_mode(const std::vector<std::string>& columns, const std::string& column,
                          const std::string& where) {
  const std::string root = column.substr(0, column.find_first_of(".["));
  std::string present;
  for (const auto& c : columns) {
    if (c == column || c == root) return "text";
    present += (present.empty() ? "'" : ", '") + c + "'";
  }
  for (const auto& c : columns)
    if (c == "messages") return "messages";
  for (const auto& c : columns)
    if (c == "conversations") return "sharegpt";
  fail(where, ": no '", column, "' column and no conversation ('messages' or 'conversations'); columns: ",
       present.empty() ? "none" : present);
}

}  // namespace

std::vector<Example> read_examples(const std::string& path, const SchemaOptions& options, DatasetStats* stats) {
  DatasetStats local;
  DatasetStats& st = stats ? *stats : local;
  st = DatasetStats{};
  std::vector<Example> examples;
  const std::vector<std::string> files = resolve_data_files(path, options.split);
  for (const std::string& file : files) {
    if (options.max_examples && examples.size() >= options.max_examples) break;
    ++st.files;
    std::string format = file_schema(file, options);
    SchemaOptions file_options = options;
    if (data_file_format(file) == DataFileFormat::text) file_options.text_column = "text";  // the row's key
    const std::vector<std::string> columns =
        format == "auto" ? std::vector<std::string>{} : schema_columns(format, file_options);
    read_rows(file, columns, [&](const nlohmann::json& row, const std::string& source) {
      ++st.rows;
      try {
        // Under skip_malformed a first row that fits no schema is skipped; the next one decides.
        if (format == "auto") format = detect_schema(row_keys(row), file_options, source);
        examples.push_back(row_to_example(row, format, file_options, source));
      } catch (const Error& e) {
        if (!options.skip_malformed) throw;
        if (st.skipped++ == 0) st.first_skip_reason = e.what();
        return true;
      }
      return !(options.max_examples && examples.size() >= options.max_examples);
    });
  }
  st.examples = examples.size();
  if (st.skipped)
    log::warn("skipped ", st.skipped, " malformed rows of ", st.rows, " in ", path, " (first: ",
              st.first_skip_reason, ")");
  MLA_CHECK(!examples.empty(), path, ": no examples (", st.rows, " rows in ", st.files, " files, ", st.skipped,
            " skipped as malformed)");
  log::info("read ", examples.size(), " examples from ", st.files, " file(s) of ", path);
  return examples;
}

std::vector<std::string> read_text_documents(const std::string& path, const std::string& column) {
  std::vector<std::string> docs;
  for (const std::string& file : resolve_data_files(path, "train")) {
    SchemaOptions options;
    options.text_column = data_file_format(file) == DataFileFormat::text ? "text" : column;
    options.require_assistant_last = false;
    std::string mode =
        data_file_format(file) == DataFileFormat::parquet ? document_mode(file_columns(file), column, file) : "";
    const std::vector<std::string> projection =
        mode.empty() ? std::vector<std::string>{} : schema_columns(mode, options);
    read_rows(file, projection, [&](const nlohmann::json& row, const std::string& source) {
      if (mode.empty()) mode = document_mode(row_keys(row), options.text_column, source);
      if (mode == "text") {
        const nlohmann::json* value = find_field(row, options.text_column);
        if (value == nullptr || value->is_null()) return true;
        MLA_CHECK(value->is_string(), source, ": field '", options.text_column, "': expected a string, found ",
                  value->type_name());
        if (!value->get<std::string>().empty()) docs.push_back(value->get<std::string>());
        return true;
      }
      const Example example = row_to_example(row, mode, options, source);
      std::string text;
      for (const Message& m : example.messages) {
        if (m.content.empty()) continue;
        if (!text.empty()) text += "\n\n";
        text += m.content;
      }
      if (!text.empty()) docs.push_back(std::move(text));
      return true;
    });
  }
  MLA_CHECK(!docs.empty(), path, ": no documents found");
  return docs;
}

}  // namespace mlaforge
