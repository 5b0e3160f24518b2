#include "data/token_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "core/error.h"
#include "core/log.h"
#include "core/threads.h"
#include "data/packing.h"

namespace mlaforge {

namespace fs = std::filesystem;

namespace {

// ------------------------------------------------------------------------------------------ hashing --
// 128-bit non-cryptographic hash: two 64-bit lanes fed the same little-endian 8-byte words, each word mixed
// in with the splitmix64 finaliser (a bijection with full avalanche), the lanes differing in their initial
// state and in how the word enters. The tail is zero-padded and the total length mixed in last. Good
// enough to tell cache inputs and file contents apart (not meant to resist a deliberate collision).
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class Hash128 {
 public:
  void update(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    length_ += n;
    if (fill_ > 0) {  // complete a pending word first
      const size_t take = std::min(n, 8 - fill_);
      std::memcpy(buffer_ + fill_, p, take);
      fill_ += take;
      p += take;
      n -= take;
      if (fill_ < 8) return;
      word(load(buffer_));
      fill_ = 0;
    }
    for (; n >= 8; p += 8, n -= 8) word(load(p));
    std::memcpy(buffer_, p, n);
    fill_ = n;
  }
  // A string with its length in front, so ("ab", "c") and ("a", "bc") differ.
  void update_string(std::string_view s) {
    const uint64_t n = s.size();
    update(&n, sizeof(n));
    update(s.data(), s.size());
  }
  std::string hex() const {
    Hash128 copy = *this;
    if (copy.fill_ > 0) {
      std::memset(copy.buffer_ + copy.fill_, 0, 8 - copy.fill_);
      copy.word(load(copy.buffer_));
    }
    const uint64_t a = mix64(copy.a_ ^ copy.length_), b = mix64(copy.b_ + copy.length_ * 0x9E3779B97F4A7C15ull);
    char out[33];
    std::snprintf(out, sizeof(out), "%016llx%016llx", static_cast<unsigned long long>(a),
                  static_cast<unsigned long long>(b));
    return out;
  }

 private:
  static uint64_t load(const uint8_t* p) {
    uint64_t w = 0;
    for (int i = 7; i >= 0; --i) w = (w << 8) | p[i];  // little-endian on any host
    return w;
  }
  void word(uint64_t w) {
    a_ = mix64(a_ ^ w);
    b_ = mix64(b_ + w + 0x632BE59BD9B4E019ull);
  }
  uint64_t a_ = 0x243F6A8885A308D3ull, b_ = 0x13198A2E03707344ull;  // digits of pi
  uint64_t length_ = 0;
  uint8_t buffer_[8] = {};
  size_t fill_ = 0;
};

std::string hash_string(std::string_view s) {
  Hash128 h;
  h.update(s.data(), s.size());
  return h.hex();
}

// ------------------------------------------------------------------------------------ file helpers --
struct FileStat {
  int64_t size = 0;
  int64_t mtime_ns = 0;
};

FileStat stat_file(const std::string& path) {
  struct stat st {};
  MLA_CHECK(::stat(path.c_str(), &st) == 0, path, ": cannot stat (", std::strerror(errno), ")");
  return {static_cast<int64_t>(st.st_size),
          static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000ll + static_cast<int64_t>(st.st_mtim.tv_nsec)};
}

// Buffered binary writer that hashes what it writes and reports errors (disk full) naming the file.
class BinWriter {
 public:
  explicit BinWriter(std::string path) : path_(std::move(path)) {
    file_ = std::fopen(path_.c_str(), "wb");
    MLA_CHECK(file_ != nullptr, path_, ": cannot create (", std::strerror(errno), ")");
  }
  ~BinWriter() {
    if (file_) std::fclose(file_);
  }
  void write(const void* data, size_t bytes) {
    if (bytes == 0) return;
    MLA_CHECK(std::fwrite(data, 1, bytes, file_) == bytes, path_, ": write failed (", std::strerror(errno), ")");
    hash_.update(data, bytes);
    bytes_ += static_cast<int64_t>(bytes);
  }
  // Flushes, fsyncs and closes; returns the hash of everything written.
  std::string finish() {
    MLA_CHECK(std::fflush(file_) == 0 && ::fsync(fileno(file_)) == 0, path_, ": flush failed (",
              std::strerror(errno), ")");
    const int rc = std::fclose(file_);
    file_ = nullptr;
    MLA_CHECK(rc == 0, path_, ": close failed (", std::strerror(errno), ")");
    return hash_.hex();
  }
  int64_t bytes() const { return bytes_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  Hash128 hash_;
  int64_t bytes_ = 0;
};

void write_text_file_synced(const std::string& path, const std::string& text) {
  BinWriter w(path);
  w.write(text.data(), text.size());
  w.finish();
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // advisory: the rename itself already happened
  ::fsync(fd);
  ::close(fd);
}

// ------------------------------------------------------------------------------------ json helpers --
nlohmann::json stats_json(const SampleStats& s) {
  return {{"examples", s.examples},
          {"samples", s.samples},
          {"tokens", s.tokens},
          {"trained_tokens", s.trained_tokens},
          {"truncated_turns", s.truncated_turns},
          {"truncated_inside", s.truncated_inside},
          {"text_windows", s.text_windows},
          {"dropped_no_trained", s.dropped_no_trained},
          {"dropped_too_long", s.dropped_too_long},
          {"invalid", s.invalid},
          {"straddling_boundaries", s.straddling_boundaries},
          {"first_invalid", s.first_invalid}};
}

SampleStats stats_from_json(const nlohmann::json& j) {
  SampleStats s;
  s.examples = j.at("examples");
  s.samples = j.at("samples");
  s.tokens = j.at("tokens");
  s.trained_tokens = j.at("trained_tokens");
  s.truncated_turns = j.at("truncated_turns");
  s.truncated_inside = j.at("truncated_inside");
  s.text_windows = j.at("text_windows");
  s.dropped_no_trained = j.at("dropped_no_trained");
  s.dropped_too_long = j.at("dropped_too_long");
  s.invalid = j.at("invalid");
  s.straddling_boundaries = j.at("straddling_boundaries");
  s.first_invalid = j.at("first_invalid");
  return s;
}

nlohmann::json dataset_stats_json(const DatasetStats& s) {
  return {{"files", s.files},
          {"rows", s.rows},
          {"examples", s.examples},
          {"skipped", s.skipped},
          {"first_skip_reason", s.first_skip_reason}};
}

DatasetStats dataset_stats_from_json(const nlohmann::json& j) {
  DatasetStats s;
  s.files = j.at("files");
  s.rows = j.at("rows");
  s.examples = j.at("examples");
  s.skipped = j.at("skipped");
  s.first_skip_reason = j.at("first_skip_reason");
  return s;
}

nlohmann::json schema_json(const SchemaOptions& o) {
  return {{"format", o.format},
          {"split", o.split},
          {"messages_column", o.messages_column},
          {"conversations_column", o.conversations_column},
          {"system_column", o.system_column},
          {"prompt_column", o.prompt_column},
          {"response_column", o.response_column},
          {"text_column", o.text_column},
          {"system_prompt", o.system_prompt},
          {"require_assistant_last", o.require_assistant_last},
          {"skip_malformed", o.skip_malformed},
          {"max_examples", o.max_examples}};
}

// The tokenizer files whose bytes enter the key: a folder's tokenizer files, or the file and the
// tokenizer_config.json beside it (it sets bos/eos/pad).
std::vector<std::string> tokenizer_files(const std::string& path) {
  std::vector<std::string> out;
  const fs::path p(path);
  if (is_directory(path)) {
    for (const char* name : {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "tokenizer.bin"})
      if (file_exists((p / name).string())) out.push_back((p / name).string());
    MLA_CHECK(!out.empty(), path, ": no tokenizer.json, tokenizer.model or tokenizer.bin in this folder");
    return out;
  }
  MLA_CHECK(file_exists(path), path, ": tokenizer file not found");
  out.push_back(path);
  const std::string config = (p.parent_path() / "tokenizer_config.json").string();
  if (p.filename() != "tokenizer_config.json" && file_exists(config)) out.push_back(config);
  return out;
}

std::string absolute_path(const std::string& path) {
  std::error_code ec;
  const fs::path p = fs::weakly_canonical(fs::absolute(path), ec);
  MLA_CHECK(!ec, path, ": cannot resolve the path (", ec.message(), ")");
  return p.string();
}

void make_dirs(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  MLA_CHECK(!ec, dir, ": cannot create the token cache folder (", ec.message(), ")");
}

constexpr const char* kBinFiles[] = {"tokens.bin", "mask.bin", "index.bin"};

}  // namespace

// -------------------------------------------------------------------------------------- fingerprints --
std::string hash_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MLA_CHECK(in.good(), path, ": cannot open (", std::strerror(errno), ")");
  Hash128 h;
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    h.update(buffer.data(), static_cast<size_t>(in.gcount()));
  }
  MLA_CHECK(in.eof(), path, ": read failed");
  return h.hex();
}

std::string tokenizer_fingerprint(const Tokenizer& tok) {
  Hash128 h;
  h.update_string(tok.kind());
  const int32_t vocab = tok.vocab_size();
  h.update(&vocab, sizeof(vocab));
  for (int32_t id = 0; id < vocab; ++id) {
    std::string token;
    try {
      token = tok.id_to_token(id);
    } catch (const Error&) {
      token = "\x01<hole>";  // an id the vocabulary does not use
    }
    h.update_string(token);
    const uint8_t special = tok.is_special(id) ? 1 : 0;
    h.update(&special, 1);
  }
  for (const std::optional<int32_t>& id : {tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id}) {
    const int64_t v = id ? *id : -1;
    h.update(&v, sizeof(v));
  }
  // Probes for what the vocabulary does not show: normalisation, pre-tokenisation, merge order.
  static const char* const kProbes[] = {
      "Hello, world! It's 2024: the answer is 42.\n\n  Indented\tcode() { return x->y; }",
      "Caf\xC3\xA9 na\xC3\xAFve \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\x99\x82 \xCE\xA9mega e\xCC\x81",
      "   leading spaces and trailing   \n\n\n$\\frac{1}{2}$ 3.14159 1e-5 ABCdef_ghiJKL",
  };
  for (const char* probe : kProbes) {
    for (bool special : {false, true}) {
      const std::vector<int32_t> ids = tok.encode(probe, special);
      const uint64_t n = ids.size();
      h.update(&n, sizeof(n));
      h.update(ids.data(), ids.size() * sizeof(int32_t));
    }
  }
  return h.hex();
}

// ------------------------------------------------------------------------------------------------ key --
nlohmann::json TokenCache::key_inputs(const TokenCacheOptions& options, const Tokenizer& tokenizer,
                                      const ChatTemplate& chat_template) {
  MLA_CHECK(!options.data.empty(), "token cache: no data files given");
  nlohmann::json files = nlohmann::json::array();
  for (const std::string& entry : options.data) {
    for (const std::string& file : resolve_data_files(entry, options.schema.split)) {
      const FileStat st = stat_file(file);
      nlohmann::json f = {{"path", absolute_path(file)}, {"size", st.size}};
      if (options.hash_data_contents)
        f["content_hash"] = hash_file(file);
      else
        f["mtime_ns"] = st.mtime_ns;
      files.push_back(std::move(f));
    }
  }
  nlohmann::json tok = {{"kind", tokenizer.kind()},
                        {"vocab_size", tokenizer.vocab_size()},
                        {"fingerprint", tokenizer_fingerprint(tokenizer)}};
  if (!options.tokenizer_file.empty()) {
    nlohmann::json hashes = nlohmann::json::object();
    // By file name, not path: moving a model folder must not invalidate its caches.
    for (const std::string& f : tokenizer_files(options.tokenizer_file))
      hashes[fs::path(f).filename().string()] = hash_file(f);
    tok["files"] = std::move(hashes);
  }
  const SampleOptions& s = options.sample;
  MLA_CHECK(!s.render.add_generation_prompt, "token cache: add_generation_prompt must be off for training samples");
  const ThinkPolicy think = s.render.think.value_or(chat_template.default_think_policy());
  return {{"format_version", kTokenCacheFormat},
          {"tokenization_version", kTokenizationVersion},
          {"files", std::move(files)},
          {"schema", schema_json(options.schema)},
          {"skip_invalid", options.skip_invalid},
          {"tokenizer", std::move(tok)},
          {"template",
           {{"name", chat_template.name()},
            {"default_system", chat_template.default_system()},
            {"think", std::string(think_policy_name(think))},
            {"trained_roles", s.render.trained_roles}}},
          {"sample",
           {{"max_seq_len", s.max_seq_len},
            {"truncate_inside_turn", s.truncate_inside_turn},
            {"split_long_text", s.split_long_text},
            {"text_bos", s.text_bos},
            {"text_eos", s.text_eos}}}};
}

// nlohmann::json keeps object keys sorted, so dump() is canonical.
std::string TokenCache::key_of(const nlohmann::json& inputs) { return hash_string(inputs.dump()); }

// ---------------------------------------------------------------------------------------------- build --
namespace {

std::string temp_folder_for(const std::string& folder) {
  static std::atomic<uint64_t> counter{0};
  const uint64_t nonce = mix64(static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                               (counter.fetch_add(1) << 48));
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%08llx", static_cast<unsigned long long>(nonce & 0xFFFFFFFFull));
  return folder + ".tmp-" + std::to_string(::getpid()) + "-" + buf;
}

// An advisory lock on `<cache_dir>/<key>.lock` (flock), held while a process looks for and builds one key,
// so that the ranks of a job on one machine build a cache once while the others wait and then reuse it.
// Where the file system has no flock the build goes ahead unlocked: the atomic rename keeps it correct,
// only the work may be duplicated. The .lock file stays behind (it is empty; deleting it is harmless).
class BuildLock {
 public:
  explicit BuildLock(const std::string& path) {
    fd_ = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (fd_ < 0) return;
    if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) return;
    if (errno == EWOULDBLOCK) {
      log::info("token cache: another process is building ", path.substr(0, path.size() - 5), "; waiting");
      if (::flock(fd_, LOCK_EX) == 0) return;
    }
    ::close(fd_);  // no locking here: go on without
    fd_ = -1;
  }
  ~BuildLock() {
    if (fd_ >= 0) {
      ::flock(fd_, LOCK_UN);
      ::close(fd_);
    }
  }
  BuildLock(const BuildLock&) = delete;
  BuildLock& operator=(const BuildLock&) = delete;

 private:
  int fd_ = -1;
};

// Tokenises `examples` into per-example slots on `threads` workers; returns them in example order.
struct ChunkResult {
  std::vector<std::vector<TokenizedSample>> samples;
  std::vector<SampleStats> stats;
  std::vector<std::string> errors;  // non-empty: the example threw (message)
};

ChunkResult tokenize_chunk(const SampleBuilder& builder, const std::vector<Example>& examples, size_t begin,
                           size_t end, int threads) {
  const size_t n = end - begin;
  ChunkResult r;
  r.samples.resize(n);
  r.stats.resize(n);
  r.errors.resize(n);
  std::atomic<size_t> next{0};
  // Dynamic scheduling (samples differ a lot in length); the slots make the result order-independent.
  parallel_for(static_cast<size_t>(threads), threads, [&](size_t, size_t) {
    for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
      try {
        r.samples[i] = builder.build(examples[begin + i], r.stats[i]);
      } catch (const Error& e) {
        r.samples[i].clear();
        r.errors[i] = e.what();
      }
    }
  });
  return r;
}

}  // namespace

TokenCache TokenCache::open_or_build(const TokenCacheOptions& options, const Tokenizer& tokenizer,
                                     const ChatTemplate& chat_template) {
  MLA_CHECK(!options.cache_dir.empty(), "token cache: no cache folder given");
  const nlohmann::json inputs = key_inputs(options, tokenizer, chat_template);
  const std::string key = key_of(inputs);
  const std::string folder = (fs::path(options.cache_dir) / key).string();
  make_dirs(options.cache_dir);
  const BuildLock lock(folder + ".lock");

  if (is_directory(folder)) {
    try {
      TokenCache cache = open(folder);
      MLA_CHECK(cache.key() == key, folder, "/meta.json: key ", cache.key(), " does not match the folder's key ", key);
      log::info("token cache: reusing ", folder, " (", cache.size(), " samples, ", cache.num_tokens(), " tokens)");
      return cache;
    } catch (const Error& e) {
      if (!options.rebuild_if_invalid)
        fail(e.what(), " (delete ", folder, " or set rebuild_if_invalid to rebuild it)");
      log::warn("token cache: ", e.what(), "; rebuilding");
      // Renamed away first so that no other process opens a half-deleted folder.
      const std::string doomed = temp_folder_for(folder) + ".invalid";
      std::error_code ec;
      fs::rename(folder, doomed, ec);
      fs::remove_all(ec ? fs::path(folder) : fs::path(doomed), ec);
    }
  }

  const auto t0 = std::chrono::steady_clock::now();
  const int threads = options.num_threads > 0 ? options.num_threads : default_num_threads();
  const SampleBuilder builder(tokenizer, chat_template, options.sample);
  const std::string tmp = temp_folder_for(folder);
  make_dirs(tmp);
  try {
    BinWriter tokens((fs::path(tmp) / "tokens.bin").string());
    BinWriter mask((fs::path(tmp) / "mask.bin").string());
    BinWriter index((fs::path(tmp) / "index.bin").string());
    int64_t offset = 0, max_len = 0, samples = 0;
    index.write(&offset, sizeof(offset));
    SampleStats stats;
    DatasetStats dstats;
    const size_t chunk = std::max<size_t>(1, options.chunk_examples);
    for (const nlohmann::json& f : inputs["files"]) {
      const std::string file = f["path"];
      SchemaOptions schema = options.schema;
      if (schema.max_examples) {
        if (dstats.examples >= schema.max_examples) break;
        schema.max_examples -= dstats.examples;
      }
      DatasetStats file_stats;
      const std::vector<Example> examples = read_examples(file, schema, &file_stats);
      dstats.files += file_stats.files;
      dstats.rows += file_stats.rows;
      dstats.examples += file_stats.examples;
      dstats.skipped += file_stats.skipped;
      if (dstats.first_skip_reason.empty()) dstats.first_skip_reason = file_stats.first_skip_reason;
      for (size_t begin = 0; begin < examples.size(); begin += chunk) {
        const size_t end = std::min(examples.size(), begin + chunk);
        ChunkResult r = tokenize_chunk(builder, examples, begin, end, threads);
        for (size_t i = 0; i < r.samples.size(); ++i) {
          if (!r.errors[i].empty()) {
            if (!options.skip_invalid) fail(r.errors[i]);
            ++r.stats[i].invalid;
            if (r.stats[i].first_invalid.empty()) r.stats[i].first_invalid = r.errors[i];
            if (stats.invalid < 3) log::warn("skipping invalid example: ", r.errors[i]);
          }
          stats.add(r.stats[i]);
          for (const TokenizedSample& s : r.samples[i]) {
            MLA_CHECK(s.ids.size() == s.loss_mask.size() && !s.ids.empty(), "token cache: ", s.source,
                      ": bad sample (", s.ids.size(), " ids, ", s.loss_mask.size(), " mask entries)");
            tokens.write(s.ids.data(), s.ids.size() * sizeof(int32_t));
            mask.write(s.loss_mask.data(), s.loss_mask.size());
            offset += static_cast<int64_t>(s.ids.size());
            index.write(&offset, sizeof(offset));
            max_len = std::max<int64_t>(max_len, static_cast<int64_t>(s.ids.size()));
            ++samples;
          }
        }
      }
    }
    MLA_CHECK(samples > 0, "token cache: no samples from ", inputs["files"].size(), " data file(s) (",
              stats.summary(), ")");
    nlohmann::json meta = {
        {"format_version", kTokenCacheFormat},
        {"key", key},
        {"num_samples", samples},
        {"num_tokens", offset},
        {"trained_tokens", stats.trained_tokens},
        {"max_sample_tokens", max_len},
        {"max_seq_len", options.sample.max_seq_len},
        {"pad_id", default_pad_id(tokenizer)},
        {"sample_stats", stats_json(stats)},
        {"dataset_stats", dataset_stats_json(dstats)},
        {"inputs", inputs},
        {"tokenizer_file", options.tokenizer_file.empty() ? "" : absolute_path(options.tokenizer_file)},
    };
    meta["checksums"] = {{"tokens.bin", tokens.finish()}, {"mask.bin", mask.finish()}, {"index.bin", index.finish()}};
    write_text_file_synced((fs::path(tmp) / "meta.json").string(), meta.dump(2) + "\n");
    fsync_dir(tmp);
    std::error_code ec;
    fs::rename(tmp, folder, ec);
    if (ec) {
      // Another process finished the same key first (rename onto a non-empty folder fails): use theirs.
      MLA_CHECK(is_directory(folder), "token cache: cannot rename ", tmp, " to ", folder, " (", ec.message(), ")");
      log::info("token cache: ", folder, " was built concurrently; using that one");
      fs::remove_all(tmp, ec);
      return open(folder);
    }
    fsync_dir(options.cache_dir);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    log::info("token cache: built ", folder, " in ", seconds, " s on ", threads, " threads: ", stats.summary());
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  TokenCache cache = open(folder);
  cache.built_ = true;
  return cache;
}

// ----------------------------------------------------------------------------------------------- open --
TokenCache TokenCache::open(const std::string& folder) {
  TokenCache c;
  c.folder_ = folder;
  const std::string meta_path = (fs::path(folder) / "meta.json").string();
  MLA_CHECK(file_exists(meta_path), meta_path, ": missing (not a token cache folder, or an unfinished one)");
  try {
    c.meta_ = nlohmann::json::parse(read_text_file(meta_path));
    MLA_CHECK(c.meta_.value("format_version", 0) == kTokenCacheFormat, "format version ",
              c.meta_.value("format_version", 0), ", expected ", kTokenCacheFormat);
    c.key_ = c.meta_.at("key").get<std::string>();
    c.num_samples_ = c.meta_.at("num_samples");
    c.num_tokens_ = c.meta_.at("num_tokens");
    c.trained_tokens_ = c.meta_.at("trained_tokens");
    c.max_sample_tokens_ = c.meta_.at("max_sample_tokens");
    c.max_seq_len_ = c.meta_.at("max_seq_len");
    c.pad_id_ = c.meta_.at("pad_id");
    c.stats_ = stats_from_json(c.meta_.at("sample_stats"));
    c.dataset_stats_ = dataset_stats_from_json(c.meta_.at("dataset_stats"));
    for (const char* name : kBinFiles) (void)c.meta_.at("checksums").at(name).get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    fail(meta_path, ": invalid token cache metadata (", e.what(), ")");
  } catch (const Error& e) {
    fail(meta_path, ": ", e.what());
  }
  MLA_CHECK(c.num_samples_ > 0 && c.num_tokens_ >= c.num_samples_, meta_path, ": ", c.num_samples_, " samples and ",
            c.num_tokens_, " tokens is not a valid cache");

  const auto expect_size = [&](const MappedFile& f, int64_t expected, const std::string& what) {
    MLA_CHECK(static_cast<int64_t>(f.size()) == expected, f.path(), ": ", f.size(), " bytes, expected ", expected,
              " (", what, " per meta.json): the token cache is truncated or corrupt");
  };
  c.tokens_ = MappedFile((fs::path(folder) / "tokens.bin").string());
  expect_size(c.tokens_, c.num_tokens_ * 4, std::to_string(c.num_tokens_) + " int32 tokens");
  c.mask_ = MappedFile((fs::path(folder) / "mask.bin").string());
  expect_size(c.mask_, c.num_tokens_, std::to_string(c.num_tokens_) + " uint8 mask entries");
  c.index_ = MappedFile((fs::path(folder) / "index.bin").string());
  expect_size(c.index_, (c.num_samples_ + 1) * 8, std::to_string(c.num_samples_ + 1) + " int64 offsets");

  // The index drives every read: a bad offset would read out of the mapping, so all are checked (8 bytes
  // per sample: cheap next to what the samples themselves are).
  const auto* index = reinterpret_cast<const int64_t*>(c.index_.data());
  MLA_CHECK(index[0] == 0 && index[c.num_samples_] == c.num_tokens_, c.index_.path(), ": offsets run from ",
            index[0], " to ", index[c.num_samples_], ", expected 0 to ", c.num_tokens_, ": corrupt token cache");
  int64_t longest = 0;
  for (int64_t i = 0; i < c.num_samples_; ++i) {
    const int64_t len = index[i + 1] - index[i];
    MLA_CHECK(len >= 1 && (c.max_seq_len_ == 0 || len <= c.max_seq_len_), c.index_.path(), ": sample ", i, " has ",
              len, " tokens (max_seq_len ", c.max_seq_len_, "): corrupt token cache");
    longest = std::max(longest, len);
  }
  MLA_CHECK(longest == c.max_sample_tokens_, c.index_.path(), ": longest sample ", longest, " tokens, meta.json says ",
            c.max_sample_tokens_, ": corrupt token cache");
  return c;
}

void TokenCache::verify_checksums() const {
  const MappedFile* files[] = {&tokens_, &mask_, &index_};
  for (size_t k = 0; k < 3; ++k) {
    Hash128 h;
    h.update(files[k]->data(), files[k]->size());
    const std::string expected = meta_.at("checksums").at(kBinFiles[k]);
    MLA_CHECK(h.hex() == expected, files[k]->path(), ": checksum ", h.hex(), " differs from meta.json's ", expected,
              ": the token cache is corrupt");
  }
}

// ------------------------------------------------------------------------------------------- access --
void TokenCache::check_index(int64_t i) const {
  MLA_CHECK(i >= 0 && i < num_samples_, "token cache ", folder_, ": sample ", i, " out of range (", num_samples_,
            " samples)");
}

int64_t TokenCache::length(int64_t i) const {
  check_index(i);
  const auto* index = reinterpret_cast<const int64_t*>(index_.data());
  return index[i + 1] - index[i];
}

std::span<const int32_t> TokenCache::ids(int64_t i) const {
  check_index(i);
  const auto* index = reinterpret_cast<const int64_t*>(index_.data());
  return {reinterpret_cast<const int32_t*>(tokens_.data()) + index[i], static_cast<size_t>(index[i + 1] - index[i])};
}

std::span<const uint8_t> TokenCache::mask(int64_t i) const {
  check_index(i);
  const auto* index = reinterpret_cast<const int64_t*>(index_.data());
  return {mask_.data() + index[i], static_cast<size_t>(index[i + 1] - index[i])};
}

int64_t TokenCache::trained_tokens(int64_t i) const {
  const std::span<const uint8_t> m = mask(i);
  int64_t n = 0;
  for (size_t t = 1; t < m.size(); ++t) n += m[t] != 0;
  return n;
}

TokenizedSample TokenCache::sample(int64_t i) const {
  TokenizedSample s;
  const std::span<const int32_t> id = ids(i);
  const std::span<const uint8_t> m = mask(i);
  s.ids.assign(id.begin(), id.end());
  s.loss_mask.assign(m.begin(), m.end());
  s.source = key_ + "#" + std::to_string(i);
  return s;
}

}  // namespace mlaforge
