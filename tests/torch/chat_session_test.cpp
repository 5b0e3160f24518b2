// Multi-turn chat with the KV cache kept across turns (model/chat_session.h): every turn must equal
// decoding the whole re-rendered conversation from scratch -- same tokens, logits within 1e-5 -- while
// prefilling only part of the prompt. Real tokenizers and chat templates (Llama-3, Qwen3 with its reasoning
// rule, ChatML with a system prompt) on a tiny random model with the tokenizer's vocabulary; its replies
// are arbitrary token strings, whose decoded text often re-encodes to other tokens, so the cache is
// truncated at the first changed token as well as extended.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/sft_sample.h"
#include "data/tokenizer.h"
#include "model/chat_session.h"
#include "model/generate.h"
#include "tests/torch/trainer_test_util.h"

namespace mlaforge {
namespace {

constexpr double kLogitsTol = 1e-5;

Decoder tiny_model_for(const Tokenizer& tok, uint64_t seed) {
  nlohmann::json j = {{"model_type", "llama"},        {"vocab_size", tok.vocab_size()}, {"hidden_size", 32},
                      {"intermediate_size", 64},      {"num_hidden_layers", 2},        {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},     {"rms_norm_eps", 1e-5},          {"rope_theta", 10000.0},
                      {"max_position_embeddings", 4096}, {"tie_word_embeddings", true}};
  Decoder model = testing::random_decoder(ModelConfig::from_json(j, "tiny-chat"), seed);
  // Tied unit-scale embeddings give logits up to ~25, where float32 rounding alone is ~2e-6: scale them to
  // logits of a few units so that 1e-5 is a tolerance with headroom (measured: 7.6e-6 unscaled, 3e-6 scaled).
  torch::NoGradGuard no_grad;
  model->embed->weight.mul_(0.25);
  return model;
}

struct ChatCase {
  std::string tokenizer;  // under the assets' tokenizers/
  std::string template_name;
  std::string system;
};

void run_conversation(const ChatCase& c) {
  REQUIRE_ASSET("tokenizers/" + c.tokenizer + "/tokenizer.json");
  auto tok = load_tokenizer(testing::asset_path("tokenizers/" + c.tokenizer + "/tokenizer.json"));
  Decoder model = tiny_model_for(*tok, 3);
  ChatOptions options;
  options.chat_template = ChatTemplate::builtin(c.template_name);
  options.system = c.system;
  options.sampling.max_new_tokens = 12;
  ChatSession chat(*model, *tok, options);
  // The from-scratch reference renders the same conversation independently.
  const SampleBuilder builder(*tok, options.chat_template);

  const std::vector<std::string> users = {"Hello! Who are you?", "Tell me a short story about a fox.",
                                          "Thanks. Now in one word?"};
  int64_t reused_total = 0, prompt_total = 0;
  for (size_t i = 0; i < users.size(); ++i) {
    std::vector<Message> conversation = chat.messages();
    conversation.push_back({"user", users[i]});
    const std::vector<int32_t> ids32 = builder.encode_prompt(conversation);
    const std::vector<int64_t> ids(ids32.begin(), ids32.end());

    std::vector<torch::Tensor> cached_logits, scratch_logits;
    std::string streamed;
    ChatTurn turn = chat.reply(users[i], [&](std::string_view piece) { streamed += piece; },
                               [&](int64_t, const torch::Tensor& l) { cached_logits.push_back(l[0].clone()); });
    GenerateResult scratch = generate(*model, ids, chat.options().sampling, {},
                                      [&](int64_t, const torch::Tensor& l) { scratch_logits.push_back(l[0].clone()); });

    const std::string what = c.tokenizer + "/" + c.template_name + " turn " + std::to_string(i + 1);
    EXPECT_EQ(turn.result.prompt_tokens, static_cast<int64_t>(ids.size())) << what;
    EXPECT_EQ(turn.result.tokens, scratch.tokens) << what;
    ASSERT_EQ(cached_logits.size(), scratch_logits.size()) << what;
    double err = 0;
    for (size_t s = 0; s < cached_logits.size(); ++s)
      err = std::max(err, (cached_logits[s] - scratch_logits[s]).abs().max().item<double>());
    EXPECT_LE(err, kLogitsTol) << what;
    // The streamed text is the reply (the reply drops a final stop token, which is special and not streamed).
    std::vector<int32_t> reply_ids(turn.result.tokens.begin(), turn.result.tokens.end());
    if (turn.result.stop_reason == "eos") reply_ids.pop_back();
    EXPECT_EQ(turn.reply, tok->decode(reply_ids, true)) << what;
    EXPECT_EQ(streamed, turn.reply) << what;
    ASSERT_EQ(chat.messages().back().role, "assistant");
    EXPECT_EQ(chat.messages().back().content, turn.reply);
    if (i == 0) {
      EXPECT_EQ(turn.result.reused_tokens, 0) << what;
    } else {
      // Later turns start from the cache: at least the previous prompt (its header and earlier turns).
      EXPECT_GT(turn.result.reused_tokens, 0) << what;
      EXPECT_LT(turn.prefilled_tokens(), turn.result.prompt_tokens) << what;
      reused_total += turn.result.reused_tokens;
      prompt_total += turn.result.prompt_tokens;
    }
    std::printf("[chat] %-28s prompt %3lld tokens: reused %3lld, prefilled %3lld; %zu new tokens (%s), logits diff %.2g\n",
                what.c_str(), static_cast<long long>(turn.result.prompt_tokens),
                static_cast<long long>(turn.result.reused_tokens), static_cast<long long>(turn.prefilled_tokens()),
                turn.result.tokens.size(), turn.result.stop_reason.c_str(), err);
  }
  std::printf("[chat] %-28s later turns: %lld of %lld prompt tokens from the cache\n",
              (c.tokenizer + "/" + c.template_name).c_str(), static_cast<long long>(reused_total),
              static_cast<long long>(prompt_total));

  // /reset: the same first question gives the same first answer, from an empty cache.
  chat.reset();
  EXPECT_EQ(chat.messages().size(), c.system.empty() ? 0u : 1u);
  ChatTurn again = chat.reply(users[0]);
  EXPECT_EQ(again.result.reused_tokens, 0);
  std::vector<Message> first = c.system.empty() ? std::vector<Message>{} : std::vector<Message>{{"system", c.system}};
  first.push_back({"user", users[0]});
  const std::vector<int32_t> ids32 = builder.encode_prompt(first);
  EXPECT_EQ(again.result.tokens, generate(*model, {ids32.begin(), ids32.end()}, chat.options().sampling).tokens);
}

TEST(ChatSession, Llama3CachedTurnsEqualScratch) { run_conversation({"llama3", "llama3", ""}); }
TEST(ChatSession, Qwen3CachedTurnsEqualScratch) { run_conversation({"qwen3", "qwen3", ""}); }
TEST(ChatSession, ChatmlWithSystemCachedTurnsEqualScratch) {
  run_conversation({"qwen3", "chatml", "You are a terse assistant."});
}

// A conversation that outgrows the context limit is refused before decoding and the turn is taken back.
TEST(ChatSession, ContextLimitTakesTheTurnBack) {
  REQUIRE_ASSET("tokenizers/llama3/tokenizer.json");
  auto tok = load_tokenizer(testing::asset_path("tokenizers/llama3/tokenizer.json"));
  Decoder model = tiny_model_for(*tok, 4);
  ChatOptions options;
  options.chat_template = ChatTemplate::builtin("llama3");
  options.sampling.max_new_tokens = 8;
  options.max_context = 40;
  ChatSession chat(*model, *tok, options);
  chat.reply("Hi");  // about 20 tokens with the reply
  const size_t before = chat.messages().size();
  try {
    chat.reply("This question is long enough to push the conversation past forty tokens for sure.");
    FAIL() << "expected the context limit error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds the context limit of 40"), std::string::npos) << e.what();
  }
  EXPECT_EQ(chat.messages().size(), before);
}

// The template must belong to the vocabulary: ChatML markers are not single Llama-3 tokens.
TEST(ChatSession, RefusesATemplateOutsideTheVocabulary) {
  REQUIRE_ASSET("tokenizers/llama3/tokenizer.json");
  auto tok = load_tokenizer(testing::asset_path("tokenizers/llama3/tokenizer.json"));
  Decoder model = tiny_model_for(*tok, 5);
  ChatOptions options;
  options.chat_template = ChatTemplate::builtin("chatml");
  EXPECT_THROW(ChatSession(*model, *tok, options), Error);
}

// The streamer releases text only when it is stable: never half a UTF-8 character.
TEST(TextStreamer, ReleasesCompleteCharactersOnly) {
  REQUIRE_ASSET("tokenizers/llama3/tokenizer.json");
  auto tok = load_tokenizer(testing::asset_path("tokenizers/llama3/tokenizer.json"));
  const std::string text = "Füchse 🦊 laufen schnell. 狐狸跑得快。";
  const std::vector<int32_t> ids = tok->encode(text, false);
  TextStreamer stream(*tok);
  std::string out;
  for (int32_t id : ids) {
    const std::string piece = stream.push(id);
    out += piece;
    // What is out so far is a prefix of the text that ends on a character boundary.
    ASSERT_EQ(text.compare(0, out.size(), out), 0) << out;
    if (out.size() < text.size()) EXPECT_NE(static_cast<unsigned char>(text[out.size()]) & 0xC0, 0x80u) << out;
  }
  out += stream.finish();
  EXPECT_EQ(out, text);
}

}  // namespace
}  // namespace mlaforge
