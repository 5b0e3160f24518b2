// Dataset readers against files written by pyarrow/json (tests/python/refs_datasets.py: inputs and the
// rows, Examples, documents and error messages expected from them) and against the real reasoning assets.
#include "data/dataset.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mmap_file.h"
#include "data/dataset_rows.h"
#include "tests/support/test_support.h"

namespace mlaforge {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::string data_dir() { return testing::test_data_dir() + "/datasets"; }

// Parquet cases are skipped (with a message) in a build without Parquet support.
#define REQUIRE_PARQUET_FOR(path)                                                                  \
  do {                                                                                             \
    if (data_file_format(path) == DataFileFormat::parquet && !parquet_supported())                 \
      GTEST_SKIP() << "this build has no Parquet support (pyarrow not found at configure time)";  \
  } while (0)

const json& expected() {
  static const json doc = json::parse(read_text_file(data_dir() + "/expected.json"));
  return doc;
}

bool needs_parquet(const std::string& path) {
  return path.find(".parquet") != std::string::npos || path == "hf";
}

// The recipe keys of SchemaOptions (what a YAML `data:` block will hold).
SchemaOptions options_from(const json& o) {
  SchemaOptions s;
  for (const auto& [key, value] : o.items()) {
    if (key == "format") s.format = value;
    else if (key == "split") s.split = value;
    else if (key == "messages_column") s.messages_column = value;
    else if (key == "conversations_column") s.conversations_column = value;
    else if (key == "system_column") s.system_column = value;
    else if (key == "prompt_column") s.prompt_column = value;
    else if (key == "response_column") s.response_column = value;
    else if (key == "text_column") s.text_column = value;
    else if (key == "system_prompt") s.system_prompt = value;
    else if (key == "require_assistant_last") s.require_assistant_last = value;
    else if (key == "skip_malformed") s.skip_malformed = value;
    else if (key == "max_examples") s.max_examples = value;
    else ADD_FAILURE() << "unknown option " << key;
  }
  return s;
}

json example_json(const Example& e) {
  json messages = json::array();
  for (const Message& m : e.messages) messages.push_back({{"role", m.role}, {"content", m.content}});
  return {{"source", e.source}, {"is_text", e.is_text}, {"text", e.text}, {"messages", messages}};
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected mlaforge::Error";
  return "";
}

void expect_contains(const std::string& text, const json& parts) {
  for (const auto& part : parts)
    EXPECT_NE(text.find(part.get<std::string>()), std::string::npos) << "'" << part << "' not in: " << text;
}

size_t parquet_cases_skipped(const json& cases) {
  size_t n = 0;
  for (const auto& c : cases) n += needs_parquet(c["path"]) && !parquet_supported();
  return n;
}

TEST(DatasetRows, MatchPyarrowValuesForEveryColumnType) {
  REQUIRE_TEST_DATA("datasets/expected.json");
  ASSERT_EQ(expected()["rows"].size(), 5u);
  for (const auto& c : expected()["rows"]) {
    const std::string path = data_dir() + "/" + c["path"].get<std::string>();
    REQUIRE_PARQUET_FOR(path);
    SCOPED_TRACE(c["path"].get<std::string>() + " columns " + c["columns"].dump());
    std::vector<json> rows;
    std::vector<std::string> sources;
    read_rows(path, c["columns"].get<std::vector<std::string>>(), [&](const json& row, const std::string& source) {
      rows.push_back(row);
      sources.push_back(source);
      return true;
    });
    ASSERT_EQ(rows.size(), c["rows"].size());
    for (size_t i = 0; i < rows.size(); ++i) {
      EXPECT_EQ(rows[i], c["rows"][i]) << "row " << i << "\n ours:     " << rows[i].dump() << "\n expected: "
                                       << c["rows"][i].dump();
      EXPECT_EQ(sources[i], path + ":row " + std::to_string(i));
    }
  }
}

TEST(DatasetRows, ProjectionAndColumns) {
  REQUIRE_TEST_DATA("datasets/expected.json");
  const std::string path = data_dir() + "/messages.parquet";
  REQUIRE_PARQUET_FOR(path);
  EXPECT_EQ(file_columns(path), (std::vector<std::string>{"id", "messages", "score", "tags", "meta", "flag"}));
  EXPECT_EQ(file_columns(data_dir() + "/messages.jsonl"), (std::vector<std::string>{"id", "messages"}));
  EXPECT_EQ(file_columns(data_dir() + "/text.txt"), (std::vector<std::string>{"text"}));
  // Only the requested column is decoded; stopping early reads no further.
  size_t seen = 0;
  read_rows(path, {"messages"}, [&](const json& row, const std::string&) {
    EXPECT_EQ(row.size(), 1u);
    EXPECT_TRUE(row["messages"].is_array());
    return ++seen < 4;
  });
  EXPECT_EQ(seen, 4u);
}

TEST(DatasetExamples, MatchExpectedForEverySchemaAndFormat) {
  REQUIRE_TEST_DATA("datasets/expected.json");
  const json& cases = expected()["examples"];
  ASSERT_EQ(cases.size(), 20u);
  size_t checked = 0;
  for (const auto& c : cases) {
    const std::string path = data_dir() + "/" + c["path"].get<std::string>();
    if (needs_parquet(c["path"]) && !parquet_supported()) continue;
    SCOPED_TRACE(c["path"].get<std::string>() + " options " + c["options"].dump());
    DatasetStats stats;
    const std::vector<Example> examples = read_examples(path, options_from(c["options"]), &stats);
    ASSERT_EQ(examples.size(), c["examples"].size());
    for (size_t i = 0; i < examples.size(); ++i) {
      json want = c["examples"][i];
      want["source"] = data_dir() + "/" + want["source"].get<std::string>();
      EXPECT_EQ(example_json(examples[i]), want) << "example " << i;
    }
    EXPECT_EQ(stats.examples, examples.size());
    EXPECT_EQ(stats.skipped, c["skipped"].get<size_t>());
    EXPECT_EQ(stats.rows, stats.examples + stats.skipped);
    if (stats.skipped) EXPECT_NE(stats.first_skip_reason.find(data_dir()), std::string::npos);
    ++checked;
  }
  EXPECT_EQ(checked + parquet_cases_skipped(cases), cases.size());
}

TEST(DatasetExamples, EachMalformedRowNamesFileRowAndField) {
  REQUIRE_TEST_DATA("datasets/expected.json");
  size_t checked = 0;
  for (const auto& c : expected()["row_errors"]) {
    const std::string path = data_dir() + "/" + c["path"].get<std::string>();
    if (needs_parquet(c["path"]) && !parquet_supported()) continue;
    const SchemaOptions options = options_from(c["options"]);
    std::map<std::string, std::string> outcome;  // source -> "ok" or the error
    read_rows(path, {}, [&](const json& row, const std::string& source) {
      try {
        row_to_example(row, c["format"], options, source);
        outcome[source] = "ok";
      } catch (const Error& e) {
        outcome[source] = e.what();
      }
      return true;
    });
    for (const auto& r : c["results"]) {
      const std::string source = data_dir() + "/" + r["source"].get<std::string>();
      SCOPED_TRACE(source);
      ASSERT_TRUE(outcome.count(source)) << "no such row";
      if (r["expect"] == "ok") {
        EXPECT_EQ(outcome[source], "ok");
      } else {
        EXPECT_EQ(outcome[source].rfind(source + ": field '", 0), 0u) << outcome[source];
        expect_contains(outcome[source], r["expect"]);
      }
      ++checked;
    }
  }
  EXPECT_GE(checked, 14u);
}

TEST(DatasetExamples, ErrorsNameTheFileAndRow) {
  REQUIRE_TEST_DATA("datasets/expected.json");
  const json& cases = expected()["errors"];
  ASSERT_EQ(cases.size(), 14u);
  for (const auto& c : cases) {
    const std::string rel = c["path"];
    const std::string path = data_dir() + "/" + rel;
    if (needs_parquet(rel) && !parquet_supported()) continue;
    SCOPED_TRACE(rel + " options " + c["options"].dump());
    const std::string message = error_of([&] { read_examples(path, options_from(c["options"])); });
    expect_contains(message, c["error"]);
    EXPECT_EQ(message.find('\n'), std::string::npos) << "one line for the CLI: " << message;
    if (c["error"][0].get<std::string>().find(rel) == 0) {  // a file-level message starts with the full path
      EXPECT_NE(message.find(data_dir() + "/" + c["error"][0].get<std::string>()), std::string::npos) << message;
    }
  }
}

TEST(DatasetDocuments, CalibrationTextFromEveryFormat) {
  REQUIRE_TEST_DATA("datasets/expected.json");
  const json& cases = expected()["documents"];
  ASSERT_EQ(cases.size(), 6u);
  for (const auto& c : cases) {
    const std::string path = data_dir() + "/" + c["path"].get<std::string>();
    if (needs_parquet(c["path"]) && !parquet_supported()) continue;
    SCOPED_TRACE(c["path"].get<std::string>());
    EXPECT_EQ(read_text_documents(path, c["column"]), c["documents"].get<std::vector<std::string>>());
  }
  const std::string message = error_of([&] { read_text_documents(data_dir() + "/unknown_schema.jsonl"); });
  expect_contains(message, json::array({"unknown_schema.jsonl:1", "no 'text' column", "'answer', 'question'"}));
}

TEST(DatasetSources, FoldersGlobsAndSplits) {
  REQUIRE_TEST_DATA("datasets/expected.json");
  const std::string hf = data_dir() + "/hf";
  EXPECT_EQ(resolve_data_files(hf),
            (std::vector<std::string>{hf + "/data/train-00000-of-00002.parquet",
                                      hf + "/data/train-00001-of-00002.parquet"}));
  EXPECT_EQ(resolve_data_files(hf, "test"), (std::vector<std::string>{hf + "/data/test-00000-of-00001.parquet"}));
  EXPECT_EQ(resolve_data_files(data_dir() + "/plain"),
            (std::vector<std::string>{data_dir() + "/plain/a.jsonl", data_dir() + "/plain/b.jsonl"}));
  EXPECT_EQ(resolve_data_files(data_dir() + "/hf/data/*-0000[0-9]-of-*.parquet").size(), 3u);
  // Made-up layouts: a top-level <split>.jsonl, the parquet-converter's <split>/NNNN.parquet.
  const std::string dir = testing::make_temp_dir("dataset-sources");
  fs::create_directories(dir + "/converted/train");
  for (const char* name : {"/flat/train.jsonl", "/flat/test.jsonl", "/converted/train/0001.parquet",
                           "/converted/train/0000.parquet", "/converted/test.txt"}) {
    fs::create_directories(fs::path(dir + name).parent_path());
    std::ofstream(dir + name) << "{}\n";
  }
  EXPECT_EQ(resolve_data_files(dir + "/flat", "test"), (std::vector<std::string>{dir + "/flat/test.jsonl"}));
  EXPECT_EQ(resolve_data_files(dir + "/converted"),
            (std::vector<std::string>{dir + "/converted/train/0000.parquet", dir + "/converted/train/0001.parquet"}));
  const std::string message = error_of([&] { resolve_data_files(dir + "/flat", "validation"); });
  expect_contains(message, json::array({dir + "/flat", "split 'validation'", "test, train"}));
}

TEST(DatasetSchema, FieldPathsAndDetection) {
  const json row = json::parse(R"({"a": {"b": [10, {"c": "deep"}]}, "code": ["x", "y"], "dot.ted": 1})");
  ASSERT_NE(find_field(row, "a.b[1].c"), nullptr);
  EXPECT_EQ(*find_field(row, "a.b[1].c"), "deep");
  EXPECT_EQ(*find_field(row, "code[1]"), "y");
  EXPECT_EQ(*find_field(row, "a.b[0]"), 10);
  EXPECT_EQ(*find_field(row, "dot.ted"), 1);  // a literal column name with a dot
  EXPECT_EQ(find_field(row, "code[2]"), nullptr);
  EXPECT_EQ(find_field(row, "a.x"), nullptr);
  EXPECT_EQ(find_field(row, "code.b"), nullptr);
  EXPECT_NE(error_of([&] { find_field(row, "code[x]"); }).find("bad field path 'code[x]'"), std::string::npos);
  EXPECT_NE(error_of([&] { find_field(row, "a..b"); }).find("bad field path"), std::string::npos);
  SchemaOptions o;
  EXPECT_EQ(detect_schema({"id", "messages", "text"}, o, "f"), "messages");
  EXPECT_EQ(detect_schema({"system", "conversations"}, o, "f"), "sharegpt");
  EXPECT_EQ(detect_schema({"prompt", "response", "text"}, o, "f"), "prompt_response");
  EXPECT_EQ(detect_schema({"prompt", "text"}, o, "f"), "text");
  o.prompt_column = "question";
  o.response_column = "code[0]";
  EXPECT_EQ(detect_schema({"question", "code", "gt"}, o, "f"), "prompt_response");
  EXPECT_EQ(schema_columns("prompt_response", o), (std::vector<std::string>{"question", "code[0]", "code"}));
  o.format = "text";
  EXPECT_EQ(detect_schema({"question"}, o, "f"), "text");
}

TEST(DatasetParquet, SupportMatchesTheBuild) {
  // Either reads the file or says clearly that the build lacks Parquet support: never anything else.
  REQUIRE_TEST_DATA("datasets/expected.json");
  const std::string path = data_dir() + "/text.parquet";
  if (parquet_supported()) {
    EXPECT_EQ(read_examples(path).size(), 3u);
  } else {
    expect_contains(error_of([&] { read_examples(path); }), json::array({path, "no Parquet support"}));
  }
}

// --- real R1-style data (../shared/assets/reasoning) ---------------------------------------------------

TEST(DatasetAssets, SkyThoughtQuestionAndReasoning) {
  REQUIRE_ASSET("reasoning/skythought/Sky-T1-math-correct-5K-27B_aime24.jsonl");
  SchemaOptions o;
  o.prompt_column = "question";
  o.response_column = "code[0]";
  const std::string aime = testing::asset_path("reasoning/skythought/Sky-T1-math-correct-5K-27B_aime24.jsonl");
  const std::vector<Example> examples = read_examples(aime, o);
  ASSERT_EQ(examples.size(), 30u);
  ASSERT_EQ(examples[0].messages.size(), 2u);
  EXPECT_EQ(examples[0].messages[0].role, "user");
  EXPECT_EQ(examples[0].messages[0].content.rfind("Every morning Aya goes for a $9$-kilometer-long walk", 0), 0u);
  EXPECT_EQ(examples[0].messages[1].role, "assistant");
  EXPECT_EQ(examples[0].messages[1].content.rfind("<|begin_of_thought|>\n\nLet's tackle this problem step by step.", 0),
            0u);
  EXPECT_EQ(examples[0].source, aime + ":1");
  for (const Example& e : examples) EXPECT_GT(e.messages[1].content.size(), 1000u) << e.source;  // long CoT
  const std::vector<Example> both = read_examples(testing::asset_path("reasoning/skythought/*.jsonl"), o);
  ASSERT_EQ(both.size(), 70u);  // 30 aime24 + 40 amc23, files in name order
  EXPECT_EQ(both[30].messages[0].content.rfind("Cities $A$ and $B$ are $45$ miles apart.", 0), 0u);
  EXPECT_EQ(both[30].messages[1].content.rfind("Let's tackle this problem step by step.", 0), 0u);
}

TEST(DatasetAssets, LimoProblemsAndAnswers) {
  REQUIRE_ASSET("reasoning/math_eval/limo_eval_math_test.jsonl");
  const std::string dir = testing::asset_path("reasoning/math_eval/");
  const std::vector<std::string> math = read_text_documents(dir + "limo_eval_math_test.jsonl", "problem");
  ASSERT_EQ(math.size(), 500u);  // the last line has no newline: still a row
  EXPECT_EQ(math[0].rfind("Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.", 0), 0u);
  EXPECT_EQ(read_text_documents(dir + "limo_eval_aime_test.jsonl", "problem").size(), 30u);
  EXPECT_EQ(read_text_documents(dir + "limo_eval_amc_test.jsonl", "problem").size(), 40u);
  SchemaOptions o;
  o.prompt_column = "problem";
  o.response_column = "solution";
  const std::vector<Example> aime = read_examples(dir + "limo_eval_aime_test.jsonl", o);
  ASSERT_EQ(aime.size(), 30u);
  EXPECT_EQ(aime[0].messages[0].content.rfind("Every morning Aya goes for a $9$-kilometer-long walk", 0), 0u);
  EXPECT_EQ(aime[0].messages[1].content.rfind("$\\frac{9}{s} + t = 4$ in hours", 0), 0u);
  // AMC answers are numbers: a clear error naming the file, line and field, or skipped and counted.
  o.response_column = "answer";
  const std::string amc = dir + "limo_eval_amc_test.jsonl";
  expect_contains(error_of([&] { read_examples(amc, o); }),
                  json::array({amc + ":1: field 'answer'", "expected a string, found number"}));
  o.format = "prompt_response";  // auto would find no `solution` column and give up on the schema
  o.response_column = "solution";
  expect_contains(error_of([&] { read_examples(amc, o); }), json::array({amc + ":1: field 'solution'", "missing"}));
}

}  // namespace
}  // namespace mlaforge
