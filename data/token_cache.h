#pragma once
// A tokenised dataset on disk, torch-free: the data files are read (data/dataset.h), rendered and tokenised
// (data/sft_sample.h) ONCE, and the samples are kept in a memory-mapped folder that every later run (and
// every data-parallel rank) opens in milliseconds.
//
// Folder `<cache_dir>/<key>/`:
//   tokens.bin  int32 little-endian token ids, all samples concatenated in dataset order
//   mask.bin    uint8 loss mask, one byte per token (data/sft_sample.h convention: 1 = the token is a target)
//   index.bin   int64 offsets, num_samples + 1 of them: sample i is tokens [index[i], index[i + 1])
//   meta.json   counts, SampleStats, DatasetStats, the pad id, a checksum of each .bin file, and the key's
//               inputs in readable form ("inputs")
// The folder is written as `<key>.tmp-<pid>-<nonce>/` and renamed to `<key>/` only when complete, so a
// crashed build never leaves a folder that looks finished (a stale .tmp-* folder may stay behind: safe to
// delete). Processes opening the same key take an flock on `<cache_dir>/<key>.lock` (an empty file left in
// place), so the ranks of a job on one machine build once while the others wait and then reuse the folder.
// Without working flock (some network file systems) each builds its own temporary folder; the first rename
// wins and the others drop theirs and open the winner's: duplicated work, never a wrong cache.
//
// The key: 32 hex digits, a 128-bit non-cryptographic hash (see token_cache.cpp) of the canonical JSON of
//   * every data file after resolve_data_files (globs and folders expanded, sorted): its absolute path,
//     size in bytes and modification time in nanoseconds. Why mtime and not a content hash: hashing a
//     multi-GB dataset on every start costs a full read, and any tool that rewrites a file changes its mtime.
//     A file edited in place within one mtime tick at the same size is not noticed; hash_data_contents
//     replaces the mtime by a hash of the bytes when that matters;
//   * the tokenizer: kind, vocabulary size, a fingerprint of the object (every id's token string and special
//     flag, the bos/eos/pad/unk ids, and the ids of fixed probe texts, which exercise the normaliser,
//     pre-tokeniser and merges) and, when TokenCacheOptions::tokenizer_file is given, a hash of that file's
//     bytes (and of tokenizer_config.json beside it / in it): give it whenever there is a file;
//   * the chat template's name and default system prompt, the think policy in force (the template's own
//     when unset), the trained roles;
//   * SampleOptions' max_seq_len, truncate_inside_turn, split_long_text, text_bos, text_eos;
//   * every SchemaOptions field, skip_invalid;
//   * kTokenCacheFormat (this file layout) and kTokenizationVersion (bumped when rendering or tokenisation
//     code changes what a sample looks like, so old caches are not reused after such a fix).
// Not in the key: num_threads (the output does not depend on it: checked bitwise by the tests),
// verify_tokenization (a check, not an input), the cache folder.
//
// Tokenisation is parallel (core/threads.h): each data file's examples are processed in chunks, every worker
// taking the next unprocessed example of the chunk; results land in per-example slots and are written in
// example order, and errors are reported for the first failing example in order. The files are therefore
// byte-identical for any thread count. Memory: one data file's Examples (read_examples reads a file whole)
// plus one chunk of samples.
//
// Opening checks that meta.json parses and has the expected format version and key, that each .bin file
// has exactly the size meta.json implies, and that index.bin is 0 .. num_tokens, non-decreasing, with no
// empty sample and none longer than max_seq_len. A failure is an Error naming the file, what was expected
// and what was found. verify_checksums() additionally re-hashes the bytes (a full read; not done on open).
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "core/mmap_file.h"
#include "data/chat_template.h"
#include "data/dataset.h"
#include "data/sft_sample.h"
#include "data/tokenizer.h"

namespace mlaforge {

constexpr int kTokenCacheFormat = 1;
constexpr int kTokenizationVersion = 1;

struct TokenCacheOptions {
  std::vector<std::string> data;     // files, globs or dataset folders (each resolved with schema.split)
  SchemaOptions schema;
  SampleOptions sample;              // max_seq_len etc.; render.add_generation_prompt must be false
  std::string cache_dir;             // the parent folder of the <key>/ folders
  std::string tokenizer_file;        // tokenizer.json / .model / .bin or a model folder; "" = object only
  bool skip_invalid = false;         // count (SampleStats::invalid) and skip examples that cannot be rendered
  bool hash_data_contents = false;   // key on a hash of each data file's bytes instead of its mtime
  bool rebuild_if_invalid = false;   // a corrupt/truncated cache folder is deleted and rebuilt, not an error
  int num_threads = 0;               // tokenisation threads; 0 = default_num_threads()
  size_t chunk_examples = 2048;      // examples tokenised per parallel chunk (memory only; no effect on output)
};

class TokenCache {
 public:
  // The cache for these inputs: opened when `<cache_dir>/<key>/` exists and is valid, built otherwise
  // (also when it is invalid and options.rebuild_if_invalid). The tokenizer is only used while building
  // (and for the key); the returned cache does not refer to it.
  static TokenCache open_or_build(const TokenCacheOptions& options, const Tokenizer& tokenizer,
                                  const ChatTemplate& chat_template);
  // An existing cache folder, validated as described above. Throws naming the file at fault.
  static TokenCache open(const std::string& folder);

  // The key's inputs (readable JSON) and the key itself, without building anything.
  static nlohmann::json key_inputs(const TokenCacheOptions& options, const Tokenizer& tokenizer,
                                   const ChatTemplate& chat_template);
  static std::string key_of(const nlohmann::json& inputs);

  TokenCache() = default;
  TokenCache(TokenCache&&) noexcept = default;
  TokenCache& operator=(TokenCache&&) noexcept = default;

  const std::string& folder() const { return folder_; }
  const std::string& key() const { return key_; }
  bool built() const { return built_; }  // true when this open_or_build tokenised (false: reused)
  const nlohmann::json& meta() const { return meta_; }

  int64_t size() const { return num_samples_; }            // number of samples
  int64_t num_tokens() const { return num_tokens_; }
  int64_t total_trained_tokens() const { return trained_tokens_; }
  int64_t max_sample_tokens() const { return max_sample_tokens_; }
  int64_t max_seq_len() const { return max_seq_len_; }     // SampleOptions::max_seq_len (0: unlimited)
  int64_t pad_id() const { return pad_id_; }               // default_pad_id(tokenizer) at build time
  const SampleStats& stats() const { return stats_; }
  const DatasetStats& dataset_stats() const { return dataset_stats_; }

  int64_t length(int64_t i) const;                         // tokens of sample i
  std::span<const int32_t> ids(int64_t i) const;           // views into the mapping
  std::span<const uint8_t> mask(int64_t i) const;
  int64_t trained_tokens(int64_t i) const;                 // loss terms of sample i: sum of mask[1..]
  TokenizedSample sample(int64_t i) const;                 // a copy; source "<key>#<i>"

  // Re-hashes the three .bin files and compares with meta.json; throws naming the first that differs.
  void verify_checksums() const;

 private:
  void check_index(int64_t i) const;

  std::string folder_, key_;
  bool built_ = false;
  nlohmann::json meta_;
  MappedFile tokens_, mask_, index_;
  int64_t num_samples_ = 0, num_tokens_ = 0, trained_tokens_ = 0, max_sample_tokens_ = 0;
  int64_t max_seq_len_ = 0, pad_id_ = 0;
  SampleStats stats_;
  DatasetStats dataset_stats_;
};

// The fingerprint of a tokenizer object described above (32 hex digits). Deterministic; costs one pass
// over the vocabulary (a few ms for 150k tokens).
std::string tokenizer_fingerprint(const Tokenizer& tokenizer);

// 32-hex-digit hash of a file's bytes (streamed). Throws naming the file when unreadable.
std::string hash_file(const std::string& path);

}  // namespace mlaforge
