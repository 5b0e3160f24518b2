#include "model/chat_session.h"

#include <algorithm>

#include "core/error.h"

namespace mlaforge {
namespace {

// Length of the longest prefix of `text` that ends on a complete UTF-8 character and not inside a
// trailing run of U+FFFD (what decoders print for the first bytes of a character whose last bytes are
// still to come: it turns into the real character once they arrive).
size_t stable_prefix(const std::string& text) {
  size_t end = text.size();
  // Back up over an incomplete last character.
  size_t start = end;
  while (start > 0 && (static_cast<unsigned char>(text[start - 1]) & 0xC0) == 0x80) --start;
  if (start > 0) {
    const auto lead = static_cast<unsigned char>(text[start - 1]);
    const size_t need = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : 4;
    if (end - (start - 1) < need) end = start - 1;
  }
  static const std::string replacement = "\xEF\xBF\xBD";
  while (end >= replacement.size() && text.compare(end - replacement.size(), replacement.size(), replacement) == 0)
    end -= replacement.size();
  return end;
}

}  // namespace

std::string TextStreamer::push(int64_t id) {
  ids_.push_back(static_cast<int32_t>(id));
  text_ = tokenizer_.decode(ids_, skip_special_);
  // Release only text that extends what was already printed (a later token can change the decoding of
  // the tail, never of a stable prefix in practice; if it ever does, wait rather than print garbage).
  const size_t stable = stable_prefix(text_);
  if (stable <= released_ || text_.compare(0, released_, text_, 0, released_) != 0) return {};
  std::string out = text_.substr(released_, stable - released_);
  released_ = stable;
  return out;
}

std::string TextStreamer::finish() {
  if (text_.size() <= released_) return {};
  std::string out = text_.substr(released_);
  released_ = text_.size();
  return out;
}

std::vector<int64_t> chat_stop_ids(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                                   const std::vector<int64_t>& eos_ids) {
  std::vector<int64_t> ids;
  auto add = [&](std::optional<int32_t> id) {
    if (id && std::find(ids.begin(), ids.end(), *id) == ids.end()) ids.push_back(*id);
  };
  for (int64_t id : eos_ids) add(static_cast<int32_t>(id));
  add(tokenizer.eos_id);
  add(tokenizer.token_to_id(chat_template.end_of_turn()));
  return ids;
}

ChatSession::ChatSession(DecoderImpl& model, const Tokenizer& tokenizer, ChatOptions options)
    : tokenizer_(tokenizer),
      options_(std::move(options)),
      builder_(tokenizer, options_.chat_template, SampleOptions{.render = {.think = options_.think}}),
      session_(model) {
  // Fail now, not at the first turn, when the template cannot be written in this vocabulary.
  single_token_markers(tokenizer, options_.chat_template);
  const std::vector<int64_t> eos = options_.sampling.stop_ids;
  options_.sampling.stop_ids = chat_stop_ids(tokenizer, options_.chat_template, eos);
  reset();
}

void ChatSession::reset() {
  messages_.clear();
  if (!options_.system.empty()) messages_.push_back({"system", options_.system});
  session_.reset();
}

std::vector<int64_t> ChatSession::prompt_ids() const {
  const std::vector<int32_t> ids = builder_.encode_prompt(messages_, "chat");
  return {ids.begin(), ids.end()};
}

ChatTurn ChatSession::reply(const std::string& user, const std::function<void(std::string_view)>& on_text,
                            const LogitsObserver& on_logits) {
  messages_.push_back({"user", user});
  std::vector<int64_t> prompt;
  try {
    prompt = prompt_ids();
    const int64_t needed = static_cast<int64_t>(prompt.size()) + options_.sampling.max_new_tokens;
    MLA_CHECK(options_.max_context <= 0 || needed <= options_.max_context, "the conversation is ", prompt.size(),
              " tokens; with ", options_.sampling.max_new_tokens, " new tokens it exceeds the context limit of ",
              options_.max_context, " (start over with /reset)");
  } catch (...) {
    messages_.pop_back();
    throw;
  }

  TextStreamer stream(tokenizer_);
  auto on_token = [&](int64_t id) {
    const std::string piece = stream.push(id);
    if (on_text && !piece.empty()) on_text(piece);
    for (const auto& s : options_.stop_strings)
      if (!s.empty() && stream.text().find(s) != std::string::npos) return false;
    return true;
  };
  ChatTurn turn;
  turn.result = session_.generate(prompt, options_.sampling, on_token, on_logits);
  const std::string rest = stream.finish();
  if (on_text && !rest.empty()) on_text(rest);

  // The history gets the reply's text without the stop token (the template writes its own end of turn).
  std::vector<int32_t> ids(turn.result.tokens.begin(), turn.result.tokens.end());
  if (turn.result.stop_reason == "eos" && !ids.empty()) ids.pop_back();
  turn.reply = tokenizer_.decode(ids, /*skip_special=*/true);
  messages_.push_back({"assistant", turn.reply});
  return turn;
}

}  // namespace mlaforge
