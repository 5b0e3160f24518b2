#include "data/sft_sample.h"

#include <algorithm>
#include <sstream>

#include "core/error.h"
#include "core/log.h"

namespace mlaforge {

namespace {

bool starts_with(std::string_view s, std::string_view p) { return s.size() >= p.size() && s.substr(0, p.size()) == p; }
bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

// The longest marker `text` starts / ends with ("" when none).
std::string_view marker_at_start(std::string_view text, const std::vector<std::string>& markers) {
  std::string_view best;
  for (const std::string& m : markers)
    if (m.size() > best.size() && starts_with(text, m)) best = m;
  return best;
}
std::string_view marker_at_end(std::string_view text, const std::vector<std::string>& markers) {
  std::string_view best;
  for (const std::string& m : markers)
    if (m.size() > best.size() && ends_with(text, m)) best = m;
  return best;
}

// encode(anchor + text) without the anchor's one token (anchor empty: plain encode).
std::vector<int32_t> encode_anchored(const Tokenizer& tok, std::string_view anchor, int32_t anchor_id,
                                     std::string_view text) {
  if (anchor.empty()) return tok.encode(text, false);
  std::string joined;
  joined.reserve(anchor.size() + text.size());
  joined.append(anchor).append(text);
  std::vector<int32_t> ids = tok.encode(joined, false);
  // The anchor is an added token: every tokenizer emits it first and alone. If one did not, cutting here
  // would not be safe, and that is a bug in the marker list, not in the data.
  MLA_CHECK(!ids.empty() && ids[0] == anchor_id, "tokenize_segments: marker '", anchor,
            "' did not encode as its own first token (tokenizer ", tok.kind(), ")");
  ids.erase(ids.begin());
  return ids;
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

std::optional<int32_t> resolve_special(const Tokenizer& tok, const std::string& spec, std::optional<int32_t> automatic,
                                       const char* what) {
  if (spec == "auto") return automatic;
  if (spec == "none" || spec.empty()) return std::nullopt;
  const auto id = tok.token_to_id(spec);
  MLA_CHECK(id.has_value(), "sample options: ", what, " token '", spec, "' is not in the vocabulary (tokenizer ",
            tok.kind(), ")");
  return id;
}

int64_t count_trained(const std::vector<uint8_t>& mask) {
  int64_t n = 0;
  for (uint8_t m : mask) n += m;
  return n;
}

// Drops tokens after the last trained one: they are inputs that predict nothing trained.
void trim_untrained_tail(TokenizedSample& s) {
  size_t end = s.loss_mask.size();
  while (end > 0 && s.loss_mask[end - 1] == 0) --end;
  s.ids.resize(end);
  s.loss_mask.resize(end);
}

void count_sample(SampleStats& stats, const TokenizedSample& s) {
  ++stats.samples;
  stats.tokens += static_cast<int64_t>(s.size());
  stats.trained_tokens += s.trained_tokens();
}

}  // namespace

int64_t TokenizedSample::trained_tokens() const { return count_trained(loss_mask); }

// ------------------------------------------------------------------------------- tokenisation --
std::vector<std::string> single_token_markers(const Tokenizer& tokenizer, const ChatTemplate& chat_template) {
  const std::vector<std::string> required = chat_template.required_tokens();
  std::vector<std::string> out;
  for (const std::string& m : chat_template.marker_strings()) {
    const auto id = tokenizer.token_to_id(m);
    const std::vector<int32_t> ids = tokenizer.encode(m, false);
    const bool single = id.has_value() && ids.size() == 1 && ids[0] == *id;
    if (single) {
      if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
    } else if (std::find(required.begin(), required.end(), m) != required.end()) {
      fail("chat template ", chat_template.name(), " writes '", m, "', which this tokenizer (", tokenizer.kind(),
           ") does not have as one token (it encodes to ", ids.size(),
           " tokens): the template does not belong to this model's vocabulary; use the model's own template");
    }
  }
  return out;
}

SegmentTokens tokenize_segments(const Tokenizer& tokenizer, const std::vector<ChatSegment>& segments,
                                const std::vector<std::string>& markers) {
  SegmentTokens out;
  out.segment_end.assign(segments.size(), 0);
  size_t a = 0;
  while (a < segments.size()) {
    // The run [a, b): up to the next segment boundary at a marker.
    size_t b = a + 1;
    while (b < segments.size() && marker_at_start(segments[b].text, markers).empty() &&
           marker_at_end(segments[b - 1].text, markers).empty())
      ++b;
    std::string_view anchor;
    int32_t anchor_id = -1;
    if (a > 0 && marker_at_start(segments[a].text, markers).empty()) {
      anchor = marker_at_end(segments[a - 1].text, markers);
      if (!anchor.empty()) {
        const auto id = tokenizer.token_to_id(anchor);
        MLA_CHECK(id.has_value(), "tokenize_segments: marker '", anchor, "' is not a token (use single_token_markers)");
        anchor_id = *id;
      }
    }
    std::string run;
    for (size_t k = a; k < b; ++k) run += segments[k].text;
    const std::vector<int32_t> ids = encode_anchored(tokenizer, anchor, anchor_id, run);

    // Boundaries inside the run: longest common prefix of the run's ids and the ids of the run's prefix.
    size_t offset = 0, taken = 0;
    for (size_t k = a; k + 1 < b; ++k) {
      offset += segments[k].text.size();
      const std::vector<int32_t> prefix =
          encode_anchored(tokenizer, anchor, anchor_id, std::string_view(run).substr(0, offset));
      const size_t lcp = common_prefix(prefix, ids);
      if (lcp < prefix.size()) ++out.straddling;
      taken = std::max(taken, lcp);
      out.segment_end[k] = out.ids.size() + taken;
    }
    out.ids.insert(out.ids.end(), ids.begin(), ids.end());
    out.segment_end[b - 1] = out.ids.size();
    a = b;
  }
  return out;
}

// --------------------------------------------------------------------------------------- stats --
void SampleStats::add(const SampleStats& o) {
  examples += o.examples;
  samples += o.samples;
  tokens += o.tokens;
  trained_tokens += o.trained_tokens;
  truncated_turns += o.truncated_turns;
  truncated_inside += o.truncated_inside;
  text_windows += o.text_windows;
  dropped_no_trained += o.dropped_no_trained;
  dropped_too_long += o.dropped_too_long;
  invalid += o.invalid;
  straddling_boundaries += o.straddling_boundaries;
  if (first_invalid.empty()) first_invalid = o.first_invalid;
}

std::string SampleStats::summary() const {
  std::ostringstream s;
  s << examples << " examples -> " << samples << " samples, " << tokens << " tokens (" << trained_tokens
    << " trained)";
  if (truncated_turns) s << "; " << truncated_turns << " lost trailing turns";
  if (truncated_inside) s << "; " << truncated_inside << " cut inside a turn/text";
  if (text_windows) s << "; " << text_windows << " extra text windows";
  if (dropped_no_trained) s << "; dropped " << dropped_no_trained << " with nothing to train";
  if (dropped_too_long) s << "; dropped " << dropped_too_long << " too long";
  if (invalid) s << "; skipped " << invalid << " invalid (first: " << first_invalid << ")";
  return s.str();
}

// ------------------------------------------------------------------------------------- builder --
SampleBuilder::SampleBuilder(const Tokenizer& tokenizer, ChatTemplate chat_template, SampleOptions options)
    : tokenizer_(tokenizer), template_(std::move(chat_template)), options_(std::move(options)) {
  MLA_CHECK(!options_.render.add_generation_prompt,
            "sample options: add_generation_prompt is for inference prompts (encode_prompt), not training samples");
  MLA_CHECK(options_.max_seq_len == 0 || options_.max_seq_len >= 2, "sample options: max_seq_len ",
            options_.max_seq_len, " is too small (at least 2 tokens, or 0 for no limit)");
  // Raw-text examples never render the template, so a template whose markers the vocabulary lacks (a
  // base model trained on text only) is an error only when a conversation is rendered with it.
  try {
    markers_ = single_token_markers(tokenizer_, template_);
  } catch (const Error& e) {
    template_error_ = e.what();
  }
  text_bos_ = resolve_special(tokenizer_, options_.text_bos, tokenizer_.bos_id, "text_bos");
  text_eos_ = resolve_special(tokenizer_, options_.text_eos, tokenizer_.eos_id, "text_eos");
}

std::vector<ChatSegment> SampleBuilder::render(const std::vector<Message>& messages, std::string_view source) const {
  return template_.render(messages, options_.render, source);
}

SegmentTokens SampleBuilder::tokenize_rendered(const std::vector<ChatSegment>& segments,
                                               std::string_view source) const {
  check_template(source);
  SegmentTokens tokens = tokenize_segments(tokenizer_, segments, markers_);
  if (options_.verify_tokenization) {
    std::string whole;
    for (const ChatSegment& s : segments) whole += s.text;
    const std::vector<int32_t> expect = tokenizer_.encode(whole, false);
    if (expect != tokens.ids) {
      const size_t at = common_prefix(expect, tokens.ids);
      fail(source.empty() ? std::string("conversation") : std::string(source),
           ": segment-wise tokenisation differs from encoding the whole text at token ", at, " (", tokens.ids.size(),
           " vs ", expect.size(), " tokens, template ", template_.name(), ", tokenizer ", tokenizer_.kind(), ")");
    }
  }
  return tokens;
}

TokenizedSample SampleBuilder::sample_from(const std::vector<ChatSegment>& segments, const SegmentTokens& tokens,
                                           const std::string& source) const {
  TokenizedSample s;
  s.ids = tokens.ids;
  s.source = source;
  s.loss_mask.assign(s.ids.size(), 0);
  size_t begin = 0;
  for (size_t k = 0; k < segments.size(); ++k) {
    const size_t end = tokens.segment_end[k];
    if (segments[k].trained) std::fill(s.loss_mask.begin() + begin, s.loss_mask.begin() + end, 1);
    begin = std::max(begin, end);
  }
  if (!s.loss_mask.empty()) s.loss_mask[0] = 0;
  return s;
}

TokenizedSample SampleBuilder::tokenize_text(const Example& example) const {
  TokenizedSample s;
  s.source = example.source;
  if (text_bos_) s.ids.push_back(*text_bos_);
  const std::vector<int32_t> body = tokenizer_.encode(example.text, false);
  s.ids.insert(s.ids.end(), body.begin(), body.end());
  if (text_eos_) s.ids.push_back(*text_eos_);
  s.loss_mask.assign(s.ids.size(), 1);
  if (!s.loss_mask.empty()) s.loss_mask[0] = 0;
  return s;
}

TokenizedSample SampleBuilder::tokenize(const Example& example) const {
  if (example.is_text) return tokenize_text(example);
  const std::vector<ChatSegment> segments = render(example.messages, example.source);
  return sample_from(segments, tokenize_rendered(segments, example.source), example.source);
}

std::vector<TokenizedSample> SampleBuilder::fit_text(TokenizedSample sample, SampleStats& stats) const {
  const size_t max_len = static_cast<size_t>(options_.max_seq_len);
  std::vector<TokenizedSample> out;
  if (!options_.split_long_text) {
    sample.ids.resize(max_len);
    sample.loss_mask.resize(max_len);
    ++stats.truncated_inside;
    out.push_back(std::move(sample));
    return out;
  }
  // Windows [s, s + max_len) with s advancing by max_len - 1: window k's first token is window k-1's last,
  // so it is context (mask 0) here and was a target there.
  for (size_t s = 0; s + 1 < sample.size(); s += max_len - 1) {
    const size_t e = std::min(s + max_len, sample.size());
    TokenizedSample w;
    w.source = sample.source;
    w.ids.assign(sample.ids.begin() + s, sample.ids.begin() + e);
    w.loss_mask.assign(sample.loss_mask.begin() + s, sample.loss_mask.begin() + e);
    w.loss_mask[0] = 0;
    out.push_back(std::move(w));
    if (e == sample.size()) break;
  }
  stats.text_windows += static_cast<int64_t>(out.size()) - 1;
  return out;
}

std::vector<TokenizedSample> SampleBuilder::fit_chat(const Example& example, TokenizedSample full,
                                                     const std::vector<ChatSegment>& segments,
                                                     const SegmentTokens& tokens, SampleStats& stats) const {
  const size_t max_len = static_cast<size_t>(options_.max_seq_len);
  std::vector<TokenizedSample> out;
  if (options_.truncate_inside_turn) {
    full.ids.resize(max_len);
    full.loss_mask.resize(max_len);
    trim_untrained_tail(full);
    if (full.trained_tokens() == 0) {
      ++stats.dropped_too_long;
      return out;
    }
    ++stats.truncated_inside;
    out.push_back(std::move(full));
    return out;
  }
  // Where each message's tokens end in the full rendering: an estimate of the length of messages[0:k],
  // exact for templates whose rendering of a prefix is a prefix of the rendering, and never more than the
  // re-rendered length for the others (re-rendering only adds: kept reasoning, a moved system prompt), so
  // skipping a k whose estimate is too long never skips one that would fit.
  const std::vector<Message>& m = example.messages;
  std::vector<size_t> message_end(m.size(), 0);
  for (size_t k = 0; k < segments.size(); ++k)
    if (segments[k].message >= 0)
      message_end[segments[k].message] = std::max(message_end[segments[k].message], tokens.segment_end[k]);
  const auto& roles = options_.render.trained_roles;
  for (size_t k = m.size() - 1; k >= 1; --k) {
    if (std::find(roles.begin(), roles.end(), m[k - 1].role) == roles.end()) continue;
    if (message_end[k - 1] > max_len) continue;
    const std::vector<Message> prefix(m.begin(), m.begin() + static_cast<std::ptrdiff_t>(k));
    const std::vector<ChatSegment> seg = render(prefix, example.source);
    const SegmentTokens tok = tokenize_rendered(seg, example.source);
    if (tok.ids.size() > max_len) continue;  // re-rendering made it longer (reasoning kept, system moved)
    TokenizedSample s = sample_from(seg, tok, example.source);
    if (s.trained_tokens() == 0) continue;
    ++stats.truncated_turns;
    out.push_back(std::move(s));
    return out;
  }
  ++stats.dropped_too_long;
  return out;
}

std::vector<TokenizedSample> SampleBuilder::build(const Example& example, SampleStats& stats) const {
  ++stats.examples;
  std::vector<TokenizedSample> out;
  const size_t max_len = static_cast<size_t>(options_.max_seq_len);
  if (example.is_text) {
    TokenizedSample s = tokenize_text(example);
    if (s.trained_tokens() == 0) {
      ++stats.dropped_no_trained;
      return out;
    }
    if (max_len == 0 || s.size() <= max_len)
      out.push_back(std::move(s));
    else
      out = fit_text(std::move(s), stats);
  } else {
    const std::vector<ChatSegment> segments = render(example.messages, example.source);
    const SegmentTokens tokens = tokenize_rendered(segments, example.source);
    stats.straddling_boundaries += tokens.straddling;
    TokenizedSample s = sample_from(segments, tokens, example.source);
    if (s.trained_tokens() == 0) {
      ++stats.dropped_no_trained;
      return out;
    }
    if (max_len == 0 || s.size() <= max_len) {
      out.push_back(std::move(s));
    } else {
      out = fit_chat(example, std::move(s), segments, tokens, stats);
    }
  }
  for (const TokenizedSample& s : out) count_sample(stats, s);
  return out;
}

std::vector<TokenizedSample> SampleBuilder::build_all(const std::vector<Example>& examples, SampleStats& stats,
                                                      bool skip_invalid) const {
  std::vector<TokenizedSample> out;
  out.reserve(examples.size());
  for (const Example& e : examples) {
    std::vector<TokenizedSample> got;
    try {
      got = build(e, stats);
    } catch (const Error& err) {
      if (!skip_invalid) throw;
      ++stats.invalid;
      if (stats.first_invalid.empty()) stats.first_invalid = err.what();
      if (stats.invalid <= 3) log::warn("skipping invalid example: ", err.what());
      continue;
    }
    for (TokenizedSample& s : got) out.push_back(std::move(s));
  }
  return out;
}

std::vector<int32_t> SampleBuilder::encode_prompt(const std::vector<Message>& messages, std::string_view source) const {
  ChatRenderOptions render = options_.render;
  render.add_generation_prompt = true;
  check_template(source);
  return tokenize_segments(tokenizer_, template_.render(messages, render, source), markers_).ids;
}

void SampleBuilder::check_template(std::string_view source) const {
  if (template_error_.empty()) return;
  if (source.empty()) fail(template_error_);
  fail(source, ": ", template_error_);
}

std::string show_loss_mask(const Tokenizer& tokenizer, const TokenizedSample& sample) {
  std::string out;
  size_t i = 0;
  while (i < sample.size()) {
    size_t j = i;
    while (j < sample.size() && sample.loss_mask[j] == sample.loss_mask[i]) ++j;
    const std::vector<int32_t> run(sample.ids.begin() + i, sample.ids.begin() + j);
    const std::string text = tokenizer.decode(run, false);
    out += sample.loss_mask[i] ? "«" + text + "»" : text;
    i = j;
  }
  return out;
}

}  // namespace mlaforge
