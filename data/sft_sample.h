#pragma once
// Supervised fine-tuning samples, torch-free: an Example (data/conversation.h) becomes token ids and a
// per-token loss mask, within a maximum length.
//
// Loss mask convention: loss_mask[i] == 1 means ids[i] is a training TARGET, i.e. the model is trained to
// predict ids[i] from ids[0..i). loss_mask[0] is always 0 (nothing predicts the first token), so
// trained_tokens() is exactly the number of loss terms. Chat samples train the segments the template marks
// trained (data/chat_template.h: by default the assistant's content and its end-of-turn token, never role
// headers); raw-text samples (continued pre-training) are [BOS] + text + [EOS] with every token after the
// first trained.
//
// Tokenisation. Token boundaries must not depend on how the text was cut into segments, and each
// segment's tokens must be known for the mask. The rendered text is cut into runs at the template's marker
// strings that the tokenizer has as added tokens (<|im_start|>, <|eot_id|>, </s>, <think>...): every
// tokenizer splits there (added tokens are matched before normalisation and pre-tokenisation), so encoding
// the runs one by one gives the same ids as encoding the whole text. A run that follows a marker is encoded
// with that marker in front and the marker's id dropped, so that the tokenizer sees it "not at the start
// of the text" exactly as in the whole string (Metaspace prepend_scheme "first", SentencePiece dummy
// prefixes). Inside a run (a role header and the message text after it: "<|im_start|>assistant\n" +
// "Hello"), segment boundaries are found by encoding the run up to the boundary and taking the longest
// common prefix with the run's ids. Where a token straddles a boundary (a message starting with "\n\n"
// after a header ending in "\n": byte-level BPE merges "\n\n\n"; Llama-2's "[INST] " + "user" ->
// "▁user") that token belongs to the LATER segment, and SampleStats::straddling_boundaries counts it. Naive
// segment-by-segment encoding would differ from the whole text exactly there (and, with SentencePiece,
// at every segment start, by a spurious dummy-prefix "▁"); tests/core/sft_sample_test.cpp checks that the
// concatenated segment ids equal the Hugging Face `tokenizers` ids of the whole rendered text for every
// built-in template on multi-turn, unicode, <think> and leading-whitespace conversations.
//
// Truncation to max_seq_len (a sample that fits is never changed):
//   * chat, default: the conversation is cut after its last trained message (an assistant turn by default)
//     that still fits: messages[0:k] is RE-RENDERED and re-tokenised (so the kept prefix is exactly what the
//     template makes of that shorter conversation: the kept final answer keeps its reasoning under
//     strip_history, Mistral's system prompt moves, ...) and the largest k that fits wins. A kept answer
//     always has its end-of-turn token. When no trained message fits, the example is dropped and counted
//     (dropped_too_long).
//   * chat, truncate_inside_turn: the tokens past max_seq_len are cut off, so the last answer may be kept
//     without its end token (the model then never learns to stop there); trailing untrained tokens are
//     removed; dropped when no trained token is left.
//   * raw text: split_long_text (default) cuts the ids into windows of max_seq_len that overlap by one
//     token, so every token but the very first is a target exactly once (only the first window has BOS,
//     only the last EOS); otherwise the text is cut at max_seq_len.
//   * an example with no trained token at all (a conversation without an assistant answer) is dropped and
//     counted (dropped_no_trained).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/chat_template.h"
#include "data/conversation.h"
#include "data/tokenizer.h"

namespace mlaforge {

struct TokenizedSample {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;  // 1: ids[i] is a target (predicted from ids[0..i)); loss_mask[0] == 0
  std::string source;              // Example::source, for messages

  size_t size() const { return ids.size(); }
  int64_t trained_tokens() const;
};

// Ids of a rendered conversation with each segment's token range. segment_end[k] is the token offset where
// segment k ends (it starts at segment_end[k-1], or 0); an empty range is possible when a segment's text
// went into a straddling token of the next one.
struct SegmentTokens {
  std::vector<int32_t> ids;
  std::vector<size_t> segment_end;
  int64_t straddling = 0;  // segment boundaries that fell inside a token (see above)
};

// The marker strings of `chat_template` that `tokenizer` encodes as exactly one token: where
// tokenize_segments may cut. Throws an Error when one of chat_template.required_tokens() is not a single
// token (a template that does not belong to this model's vocabulary).
std::vector<std::string> single_token_markers(const Tokenizer& tokenizer, const ChatTemplate& chat_template);

// Tokenises rendered segments as described above (never adds BOS/EOS: the template writes them).
SegmentTokens tokenize_segments(const Tokenizer& tokenizer, const std::vector<ChatSegment>& segments,
                                const std::vector<std::string>& markers);

struct SampleOptions {
  ChatRenderOptions render;          // trained roles and think policy; add_generation_prompt must be false
  int64_t max_seq_len = 0;           // tokens per sample, 0 = unlimited
  bool truncate_inside_turn = false;
  bool split_long_text = true;
  // Raw text: "auto" (the tokenizer's BOS / EOS if it has one), "none", or a token's text ("<|endoftext|>").
  std::string text_bos = "auto";
  std::string text_eos = "auto";
  // Also encode each rendered conversation whole and throw if the ids differ from the segment-wise ids
  // (costs a second encode; the tests turn it on).
  bool verify_tokenization = false;
};

struct SampleStats {
  int64_t examples = 0;             // examples given to build()
  int64_t samples = 0;              // samples produced
  int64_t tokens = 0;               // tokens in the samples produced
  int64_t trained_tokens = 0;       // loss terms in the samples produced
  int64_t truncated_turns = 0;      // chat examples whose trailing turns were dropped
  int64_t truncated_inside = 0;     // examples cut at max_seq_len inside a turn or a text
  int64_t text_windows = 0;         // extra samples from splitting long raw text
  int64_t dropped_no_trained = 0;   // examples without any trained token
  int64_t dropped_too_long = 0;     // examples with no trained token left within max_seq_len
  int64_t invalid = 0;              // examples that could not be rendered (build_all with skip_invalid)
  int64_t straddling_boundaries = 0;  // segment boundaries inside a token, in the full renderings
  std::string first_invalid;        // the first invalid example's error

  void add(const SampleStats& other);
  std::string summary() const;      // one line for the log
};

class SampleBuilder {
 public:
  // Checks the template against the tokenizer (single_token_markers) and resolves text_bos/text_eos. A
  // template the vocabulary cannot write is reported when the first conversation is rendered, so that a
  // text-only model still builds raw-text samples.
  // The tokenizer must outlive the builder. All methods are const and thread-safe.
  SampleBuilder(const Tokenizer& tokenizer, ChatTemplate chat_template, SampleOptions options = {});

  const ChatTemplate& chat_template() const { return template_; }
  const SampleOptions& options() const { return options_; }

  // The whole example, no length limit (raw text: BOS + text + EOS).
  TokenizedSample tokenize(const Example& example) const;
  // tokenize() plus the truncation policy: 0 samples (dropped), 1, or several (split raw text).
  std::vector<TokenizedSample> build(const Example& example, SampleStats& stats) const;
  // build() over many examples, in order. skip_invalid: an example that throws (unsupported role, roles
  // not alternating...) is counted in stats.invalid and skipped instead of failing the whole run.
  std::vector<TokenizedSample> build_all(const std::vector<Example>& examples, SampleStats& stats,
                                         bool skip_invalid = false) const;

  // Inference: the conversation rendered with the generation prompt, as ids (what generation continues).
  std::vector<int32_t> encode_prompt(const std::vector<Message>& messages, std::string_view source = {}) const;

  // Segments and their tokens for a conversation (tokenize() is built on it); exposed for tests and for
  // printing a sample with its mask.
  std::vector<ChatSegment> render(const std::vector<Message>& messages, std::string_view source = {}) const;
  SegmentTokens tokenize_rendered(const std::vector<ChatSegment>& segments, std::string_view source = {}) const;

 private:
  TokenizedSample tokenize_text(const Example& example) const;
  TokenizedSample sample_from(const std::vector<ChatSegment>& segments, const SegmentTokens& tokens,
                              const std::string& source) const;
  std::vector<TokenizedSample> fit_text(TokenizedSample sample, SampleStats& stats) const;
  std::vector<TokenizedSample> fit_chat(const Example& example, TokenizedSample full,
                                        const std::vector<ChatSegment>& segments, const SegmentTokens& tokens,
                                        SampleStats& stats) const;

  const Tokenizer& tokenizer_;
  ChatTemplate template_;
  SampleOptions options_;
  void check_template(std::string_view source) const;  // throws template_error_ if set

  std::vector<std::string> markers_;
  std::string template_error_;  // why the template cannot be tokenised with this vocabulary ("": it can)
  std::optional<int32_t> text_bos_, text_eos_;
};

// Debug view of a sample: the decoded text with each trained stretch wrapped in «...».
std::string show_loss_mask(const Tokenizer& tokenizer, const TokenizedSample& sample);

}  // namespace mlaforge
