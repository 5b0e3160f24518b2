// Parquet rows through Apache Arrow/Parquet C++ (the libraries of the pyarrow wheel; see the Parquet
// section of CMakeLists.txt). Compiled without them (no MLAFORGE_HAVE_PARQUET) it only reports that the
// build lacks Parquet support.
//
// Memory: only the requested top-level columns are decoded (a messages column is not read when only
// `text` is asked for), row group by row group, in record batches of kBatchRows rows; each batch is
// turned into JSON rows column by column, handed out, and dropped before the next one is decoded.
#include "core/error.h"
#include "data/dataset_rows.h"

#ifdef MLAFORGE_HAVE_PARQUET
#include <arrow/api.h>
#include <arrow/util/float16.h>
#include <parquet/arrow/reader.h>
#include <parquet/arrow/schema.h>
#include <parquet/exception.h>
#include <parquet/file_reader.h>

#include <exception>
#include <memory>
#endif

namespace mlaforge {

#ifndef MLAFORGE_HAVE_PARQUET

bool parquet_supported() { return false; }

[[noreturn]] static void no_parquet(const std::string& path) {
  fail(path, ": this mlaforge build has no Parquet support (pyarrow's Arrow C++ libraries were not found "
       "when CMake configured it: run scripts/setup.sh, or pass -DMLAFORGE_PYTHON=<venv>/bin/python with "
       "pyarrow installed, and rebuild); convert the data to JSONL meanwhile");
}

void read_parquet_rows(const std::string& path, const std::vector<std::string>&, const RowCallback&) {
  no_parquet(path);
}

std::vector<std::string> parquet_columns(const std::string& path) { no_parquet(path); }

#else

bool parquet_supported() { return true; }

namespace {

using nlohmann::json;

// Small enough that a batch of long chain-of-thought rows (tens of KB each) stays a few MB.
constexpr int64_t kBatchRows = 256;

// Arrow's messages may span lines and hold control bytes ("...\nDeserializing page header failed.\n");
// ours are one line.
std::string one_line(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '\n') {
      if (!out.empty() && out.back() != ' ') out += ';';
      c = ' ';
    }
    if (static_cast<unsigned char>(c) < 0x20) continue;  // thrift may quote a raw type byte
    if (c == ' ' && (out.empty() || out.back() == ' ')) continue;
    out += c;
  }
  while (!out.empty() && (out.back() == ' ' || out.back() == ';')) out.pop_back();
  return out;
}

void check(const arrow::Status& status, const std::string& path, const std::string& what) {
  if (!status.ok()) fail(path, ": ", what, ": ", one_line(status.ToString()));
}

// One Arrow array -> one JSON value per element (nulls -> null), converted column-wise so nested
// children are visited once per batch rather than once per row.
std::vector<json> to_json(const arrow::Array& array);

template <typename ArrayType, typename Value>
std::vector<json> primitive_values(const arrow::Array& array) {
  const auto& typed = static_cast<const ArrayType&>(array);
  std::vector<json> out(static_cast<size_t>(array.length()));
  for (int64_t i = 0; i < array.length(); ++i)
    if (!array.IsNull(i)) out[i] = static_cast<Value>(typed.Value(i));
  return out;
}

template <typename ArrayType>
std::vector<json> string_values(const arrow::Array& array) {
  const auto& typed = static_cast<const ArrayType&>(array);
  std::vector<json> out(static_cast<size_t>(array.length()));
  for (int64_t i = 0; i < array.length(); ++i)
    if (!array.IsNull(i)) out[i] = std::string(typed.GetView(i));
  return out;
}

// list / large_list / fixed_size_list: convert the used range of the child array once, then move each
// element into its row's JSON array.
template <typename ListType>
std::vector<json> list_values(const arrow::Array& array) {
  const auto& list = static_cast<const ListType&>(array);
  std::vector<json> out(static_cast<size_t>(array.length()));
  if (array.length() == 0) return out;
  const int64_t begin = list.value_offset(0);
  const int64_t end = list.value_offset(array.length() - 1) + list.value_length(array.length() - 1);
  std::vector<json> children = to_json(*list.values()->Slice(begin, end - begin));
  for (int64_t i = 0; i < array.length(); ++i) {
    if (array.IsNull(i)) continue;
    json items = json::array();
    const int64_t first = list.value_offset(i) - begin;
    for (int64_t k = 0; k < list.value_length(i); ++k) items.push_back(std::move(children[first + k]));
    out[i] = std::move(items);
  }
  return out;
}

// map<K, V>: an object when the keys are strings, else a list of [key, value] pairs.
std::vector<json> map_values(const arrow::Array& array) {
  const auto& map = static_cast<const arrow::MapArray&>(array);
  std::vector<json> out(static_cast<size_t>(array.length()));
  if (array.length() == 0) return out;
  const int64_t begin = map.value_offset(0);
  const int64_t end = map.value_offset(array.length() - 1) + map.value_length(array.length() - 1);
  std::vector<json> keys = to_json(*map.keys()->Slice(begin, end - begin));
  std::vector<json> items = to_json(*map.items()->Slice(begin, end - begin));
  const arrow::Type::type key_type = map.keys()->type_id();
  const bool string_keys = key_type == arrow::Type::STRING || key_type == arrow::Type::LARGE_STRING;
  for (int64_t i = 0; i < array.length(); ++i) {
    if (array.IsNull(i)) continue;
    json value = string_keys ? json::object() : json::array();
    const int64_t first = map.value_offset(i) - begin;
    for (int64_t k = first; k < first + map.value_length(i); ++k) {
      if (string_keys)
        value[keys[k].get<std::string>()] = std::move(items[k]);
      else
        value.push_back(json::array({std::move(keys[k]), std::move(items[k])}));
    }
    out[i] = std::move(value);
  }
  return out;
}

std::vector<json> struct_values(const arrow::Array& array) {
  const auto& st = static_cast<const arrow::StructArray&>(array);
  const auto& type = static_cast<const arrow::StructType&>(*array.type());
  std::vector<std::vector<json>> fields;
  for (int f = 0; f < type.num_fields(); ++f) fields.push_back(to_json(*st.field(f)));  // offset-adjusted
  std::vector<json> out(static_cast<size_t>(array.length()));
  for (int64_t i = 0; i < array.length(); ++i) {
    if (array.IsNull(i)) continue;
    json object = json::object();
    for (int f = 0; f < type.num_fields(); ++f) object[type.field(f)->name()] = std::move(fields[f][i]);
    out[i] = std::move(object);
  }
  return out;
}

std::vector<json> dictionary_values(const arrow::Array& array) {
  const auto& dict = static_cast<const arrow::DictionaryArray&>(array);
  const std::vector<json> values = to_json(*dict.dictionary());
  std::vector<json> out(static_cast<size_t>(array.length()));
  for (int64_t i = 0; i < array.length(); ++i)
    if (!array.IsNull(i)) out[i] = values[static_cast<size_t>(dict.GetValueIndex(i))];
  return out;
}

// Dates, times, timestamps, decimals and the rest: Arrow's own text form (e.g. "2024-01-02",
// "2024-01-02 03:04:05.000000", "1.50"). Datasets for fine-tuning rarely carry them.
std::vector<json> text_form_values(const arrow::Array& array) {
  std::vector<json> out(static_cast<size_t>(array.length()));
  for (int64_t i = 0; i < array.length(); ++i) {
    if (array.IsNull(i)) continue;
    auto scalar = array.GetScalar(i);
    if (scalar.ok()) out[i] = (*scalar)->ToString();
  }
  return out;
}

std::vector<json> to_json(const arrow::Array& array) {
  using T = arrow::Type;
  switch (array.type_id()) {
    case T::NA: return std::vector<json>(static_cast<size_t>(array.length()));
    case T::BOOL: return primitive_values<arrow::BooleanArray, bool>(array);
    case T::INT8: return primitive_values<arrow::Int8Array, int64_t>(array);
    case T::INT16: return primitive_values<arrow::Int16Array, int64_t>(array);
    case T::INT32: return primitive_values<arrow::Int32Array, int64_t>(array);
    case T::INT64: return primitive_values<arrow::Int64Array, int64_t>(array);
    case T::UINT8: return primitive_values<arrow::UInt8Array, uint64_t>(array);
    case T::UINT16: return primitive_values<arrow::UInt16Array, uint64_t>(array);
    case T::UINT32: return primitive_values<arrow::UInt32Array, uint64_t>(array);
    case T::UINT64: return primitive_values<arrow::UInt64Array, uint64_t>(array);
    case T::HALF_FLOAT: {
      const auto& typed = static_cast<const arrow::HalfFloatArray&>(array);
      std::vector<json> out(static_cast<size_t>(array.length()));
      for (int64_t i = 0; i < array.length(); ++i)
        if (!array.IsNull(i)) out[i] = arrow::util::Float16::FromBits(typed.Value(i)).ToDouble();
      return out;
    }
    case T::FLOAT: return primitive_values<arrow::FloatArray, double>(array);
    case T::DOUBLE: return primitive_values<arrow::DoubleArray, double>(array);
    case T::STRING: return string_values<arrow::StringArray>(array);
    case T::LARGE_STRING: return string_values<arrow::LargeStringArray>(array);
    case T::STRING_VIEW: return string_values<arrow::StringViewArray>(array);
    case T::BINARY: return string_values<arrow::BinaryArray>(array);
    case T::LARGE_BINARY: return string_values<arrow::LargeBinaryArray>(array);
    case T::BINARY_VIEW: return string_values<arrow::BinaryViewArray>(array);
    case T::FIXED_SIZE_BINARY: return string_values<arrow::FixedSizeBinaryArray>(array);
    case T::LIST: return list_values<arrow::ListArray>(array);
    case T::LARGE_LIST: return list_values<arrow::LargeListArray>(array);
    case T::FIXED_SIZE_LIST: return list_values<arrow::FixedSizeListArray>(array);
    case T::MAP: return map_values(array);
    case T::STRUCT: return struct_values(array);
    case T::DICTIONARY: return dictionary_values(array);
    default: return text_form_values(array);
  }
}

// Leaf (physical) column indices under a schema field: what the Parquet reader projects on.
void collect_leaves(const parquet::arrow::SchemaField& field, std::vector<int>& leaves) {
  if (field.is_leaf()) leaves.push_back(field.column_index);
  for (const auto& child : field.children) collect_leaves(child, leaves);
}

std::unique_ptr<parquet::arrow::FileReader> open_reader(const std::string& path) {
  parquet::ArrowReaderProperties properties;
  properties.set_batch_size(kBatchRows);
  parquet::arrow::FileReaderBuilder builder;
  try {
    check(builder.OpenFile(path, /*memory_map=*/false), path, "not a readable Parquet file");
    builder.properties(properties);
    auto reader = builder.Build();
    check(reader.status(), path, "not a readable Parquet file");
    return std::move(reader).ValueUnsafe();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // parquet::ParquetException and friends
    fail(path, ": not a readable Parquet file: ", one_line(e.what()));
  }
}

}  // namespace

std::vector<std::string> parquet_columns(const std::string& path) {
  auto reader = open_reader(path);
  std::vector<std::string> names;
  for (const auto& field : reader->manifest().schema_fields) names.push_back(field.field->name());
  return names;
}

void read_parquet_rows(const std::string& path, const std::vector<std::string>& columns, const RowCallback& fn) {
  auto reader = open_reader(path);
  const auto& fields = reader->manifest().schema_fields;
  std::vector<int> leaves;
  size_t selected = 0;
  for (const auto& field : fields) {
    const std::string& name = field.field->name();
    bool wanted = columns.empty();
    for (const auto& c : columns) wanted = wanted || c == name;
    if (!wanted) continue;
    collect_leaves(field, leaves);
    ++selected;
  }
  int64_t row = 0;
  const int groups = reader->num_row_groups();
  for (int group = 0; group < groups; ++group) {
    const std::string where = "row group " + std::to_string(group);
    if (selected == 0) {
      // None of the wanted columns exists: rows are still there (and will be reported as lacking them).
      const int64_t n = reader->parquet_reader()->metadata()->RowGroup(group)->num_rows();
      for (int64_t i = 0; i < n; ++i, ++row)
        if (!fn(json::object(), path + ":row " + std::to_string(row))) return;
      continue;
    }
    std::unique_ptr<arrow::RecordBatchReader> batches;
    try {
      auto result = reader->GetRecordBatchReader(std::vector<int>{group}, leaves);
      check(result.status(), path, where);
      batches = std::move(result).ValueUnsafe();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      fail(path, ": ", where, ": ", one_line(e.what()));
    }
    for (;;) {
      std::shared_ptr<arrow::RecordBatch> batch;
      std::vector<json> rows;
      try {
        check(batches->ReadNext(&batch), path, where + " (rows from " + std::to_string(row) + ")");
        if (!batch) break;
        rows.assign(static_cast<size_t>(batch->num_rows()), json::object());
        for (int c = 0; c < batch->num_columns(); ++c) {
          std::vector<json> values = to_json(*batch->column(c));
          const std::string& name = batch->schema()->field(c)->name();
          for (size_t i = 0; i < rows.size(); ++i) rows[i][name] = std::move(values[i]);
        }
      } catch (const Error&) {
        throw;
      } catch (const std::exception& e) {
        fail(path, ": ", where, " (rows from ", row, "): ", one_line(e.what()));
      }
      for (auto& r : rows) {
        if (!fn(r, path + ":row " + std::to_string(row))) return;
        ++row;
      }
    }
  }
}

#endif  // MLAFORGE_HAVE_PARQUET

}  // namespace mlaforge
