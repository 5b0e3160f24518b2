#pragma once
// Row-level access to data files: every format yields rows as JSON objects, so the schema layer
// (data/dataset.h) has one thing to interpret whatever the file was.
//   .jsonl           one object per line, streamed; blank lines skipped
//   .json            one array of objects (parsed whole), or JSON lines as `datasets`' to_json writes them
//   .parquet         Apache Arrow/Parquet C++ (from the pyarrow wheel): column-projected, read row group by
//                    row group in batches of a few hundred rows, so a multi-GB file is never loaded whole
//   .txt (any other) plain text: documents split at blank lines, each a row {"text": document}
// Row sources (for error messages and Example::source):
//   JSONL "path:LINE" (1-based line), JSON "path:[INDEX]", Parquet "path:row INDEX", text
//   "path:paragraph N" (INDEX 0-based, as pandas/pyarrow number rows; N 1-based).
#include <cstddef>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace mlaforge {

enum class DataFileFormat { jsonl, json, parquet, text };

// By extension: .jsonl, .json, .parquet; everything else is plain text.
DataFileFormat data_file_format(const std::string& path);

// Called once per row; return false to stop reading.
using RowCallback = std::function<bool(const nlohmann::json& row, const std::string& source)>;

// Streams the rows of one file. `columns` projects Parquet reads onto those top-level columns (empty:
// all); a requested column the file lacks is simply absent from the rows. JSONL/JSON rows keep every
// field. Errors (unreadable, malformed JSON with the parse error, a row that is not an object, corrupt
// Parquet) throw mlaforge::Error naming the file and line/row.
void read_rows(const std::string& path, const std::vector<std::string>& columns, const RowCallback& fn);

// Top-level column names: the Parquet schema, the keys of the first JSONL/JSON row, {"text"} for text.
std::vector<std::string> file_columns(const std::string& path);

// Whether this build has the Parquet reader (pyarrow was found at configure time).
bool parquet_supported();

// The Parquet implementation behind read_rows/file_columns (data/parquet_reader.cpp). Without Parquet
// support they throw an Error saying so.
void read_parquet_rows(const std::string& path, const std::vector<std::string>& columns, const RowCallback& fn);
std::vector<std::string> parquet_columns(const std::string& path);

}  // namespace mlaforge
