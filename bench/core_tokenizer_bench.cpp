// Tokenizer throughput: encode (and decode) MB/s on one thread over a set of documents.
//
//   bench_core_tokenizer_bench --tokenizer PATH [--gguf-vocab-json FILE] [--docs corpus.bin | --text FILE...]
//                              [--repeat N] [--threads T] [--json]
// PATH is anything load_tokenizer accepts (folder, tokenizer.json, .model, llama2.c .bin). Documents come
// from a corpus.bin (u32 count, then u32 length + bytes per document; written by bench/tokenizer_bench.py and
// tests/python/refs_tokenizers.py) or from text files split at blank lines. Without --tokenizer and
// documents, it benchmarks the tokenizers under ../shared/assets on TinyStories + reasoning text.
// The best of N repeats is reported (the first repeat warms the per-thread word cache, as a long run would).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "core/mmap_file.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;
using namespace mlaforge;

namespace {

std::vector<std::string> read_corpus_bin(const std::string& path) {
  MappedFile f(path);
  const uint8_t* p = f.data();
  const uint8_t* end = p + f.size();
  auto u32 = [&] {
    if (end - p < 4) throw std::runtime_error(path + ": truncated");
    uint32_t v;
    std::memcpy(&v, p, 4);
    p += 4;
    return v;
  };
  std::vector<std::string> docs(u32());
  for (auto& d : docs) {
    const uint32_t n = u32();
    if (static_cast<size_t>(end - p) < n) throw std::runtime_error(path + ": truncated");
    d.assign(reinterpret_cast<const char*>(p), n);
    p += n;
  }
  return docs;
}

void split_paragraphs(const std::string& text, std::vector<std::string>& docs) {
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find("\n\n", start);
    if (end == std::string::npos) end = text.size();
    if (end > start) docs.push_back(text.substr(start, end - start));
    start = end + 2;
  }
}

std::vector<std::string> default_docs(const std::string& assets) {
  std::vector<std::string> docs;
  split_paragraphs(read_text_file(assets + "/text/tinystories_val_part1.txt"), docs);
  for (const char* name : {"Sky-T1-math-correct-5K-27B_aime24.jsonl", "Sky-T1-math-correct-5K-27B_amc23.jsonl"}) {
    const std::string text = read_text_file(assets + "/reasoning/skythought/" + name);
    size_t start = 0;
    while (start < text.size()) {
      size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      if (end > start) {
        auto j = nlohmann::json::parse(text.substr(start, end - start));
        docs.push_back(j["code"][0].get<std::string>());
      }
      start = end + 1;
    }
  }
  return docs;
}

std::unique_ptr<Tokenizer> load_gguf_vocab_json(const std::string& path) {
  const auto j = nlohmann::json::parse(read_text_file(path));
  GgufVocab v;
  v.model = j["model"].get<std::string>();
  v.pre = j["pre"].get<std::string>();
  v.tokens = j["tokens"].get<std::vector<std::string>>();
  if (j.contains("scores") && !j["scores"].is_null()) v.scores = j["scores"].get<std::vector<float>>();
  v.token_types = j["token_types"].get<std::vector<int32_t>>();
  v.merges = j["merges"].get<std::vector<std::string>>();
  auto opt = [&](const char* key) -> std::optional<int32_t> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    return j[key].get<int32_t>();
  };
  v.bos = opt("bos");
  v.eos = opt("eos");
  v.unk = opt("unk");
  v.pad = opt("pad");
  v.add_bos = j.value("add_bos", false);
  v.add_space_prefix = j.value("add_space_prefix", true);
  return tokenizer_from_gguf_vocab(v);
}

struct Result {
  double load_s = 0, encode_s = 0, decode_s = 0;
  size_t bytes = 0, tokens = 0;
};

Result run(const std::string& label, const std::function<std::unique_ptr<Tokenizer>()>& load,
           const std::vector<std::string>& docs, int repeat, int threads) {
  Result r;
  const auto t0 = std::chrono::steady_clock::now();
  auto tk = load();
  r.load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (const auto& d : docs) r.bytes += d.size();
  std::vector<std::vector<int32_t>> ids(docs.size());
  r.encode_s = 1e30;
  for (int rep = 0; rep < repeat; ++rep) {
    const auto s = std::chrono::steady_clock::now();
    if (threads <= 1) {
      for (size_t i = 0; i < docs.size(); ++i) ids[i] = tk->encode(docs[i]);
    } else {
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
          for (size_t i = static_cast<size_t>(t); i < docs.size(); i += static_cast<size_t>(threads))
            ids[i] = tk->encode(docs[i]);
        });
      for (auto& th : pool) th.join();
    }
    r.encode_s = std::min(r.encode_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count());
  }
  for (const auto& v : ids) r.tokens += v.size();
  r.decode_s = 1e30;
  size_t sink = 0;
  for (int rep = 0; rep < repeat; ++rep) {
    const auto s = std::chrono::steady_clock::now();
    for (const auto& v : ids) sink += tk->decode(v).size();
    r.decode_s = std::min(r.decode_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count());
  }
  if (sink == 0 && r.tokens > 0) std::cerr << "decode produced nothing\n";
  (void)label;
  return r;
}

void print(const std::string& label, const Result& r, bool json) {
  const double mb = static_cast<double>(r.bytes) / 1e6;
  if (json) {
    nlohmann::json j = {{"tokenizer", label},         {"bytes", r.bytes},
                        {"tokens", r.tokens},         {"load_s", r.load_s},
                        {"encode_s", r.encode_s},     {"encode_mb_s", mb / r.encode_s},
                        {"decode_s", r.decode_s},     {"decode_mb_s", mb / r.decode_s}};
    std::cout << j.dump() << std::endl;
  } else {
    std::printf("%-28s %8.2f MB %9zu tokens  load %6.2fs  encode %7.2f MB/s  decode %8.2f MB/s\n", label.c_str(), mb,
                r.tokens, r.load_s, mb / r.encode_s, mb / r.decode_s);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer, gguf_json, docs_path;
  std::vector<std::string> texts;
  int repeat = 3, threads = 1;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--tokenizer") tokenizer = next();
    else if (a == "--gguf-vocab-json") gguf_json = next();
    else if (a == "--docs") docs_path = next();
    else if (a == "--text") texts.push_back(next());
    else if (a == "--repeat") repeat = std::stoi(next());
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--json") json = true;
    else {
      std::cerr << "usage: " << argv[0]
                << " [--tokenizer PATH | --gguf-vocab-json FILE] [--docs corpus.bin | --text FILE...] [--repeat N]"
                   " [--threads T] [--json]\n";
      return 2;
    }
  }
  try {
    std::vector<std::string> docs;
    std::string assets = std::getenv("MLAFORGE_ASSETS") ? std::getenv("MLAFORGE_ASSETS") : "";
    if (assets.empty()) {
      for (const char* c : {"../shared/assets", "../../shared/assets", "../../../shared/assets"})
        if (fs::exists(c)) {
          assets = c;
          break;
        }
    }
    if (!docs_path.empty()) docs = read_corpus_bin(docs_path);
    for (const auto& t : texts) split_paragraphs(read_text_file(t), docs);
    if (docs.empty()) {
      if (assets.empty()) {
        std::cerr << "no documents: pass --docs or --text (or run where ../shared/assets exists)\n";
        return 2;
      }
      docs = default_docs(assets);
    }
    if (!tokenizer.empty()) {
      print(tokenizer, run(tokenizer, [&] { return load_tokenizer(tokenizer); }, docs, repeat, threads), json);
    } else if (!gguf_json.empty()) {
      print(gguf_json, run(gguf_json, [&] { return load_gguf_vocab_json(gguf_json); }, docs, repeat, threads), json);
    } else {
      if (assets.empty()) {
        std::cerr << "no --tokenizer and no ../shared/assets\n";
        return 2;
      }
      for (const char* rel : {"tokenizers/llama3", "tokenizers/qwen3", "tokenizers/llama2",
                              "tokenizers/llama2-sentencepiece/tokenizer.model", "models/stories260K/tok512.model"}) {
        const std::string path = assets + "/" + rel;
        if (!fs::exists(path)) continue;
        print(rel, run(rel, [&] { return load_tokenizer(path); }, docs, repeat, threads), json);
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
