// SFT samples (data/sft_sample.h): segment-wise tokenisation against the Hugging Face `tokenizers` ids of
// the whole rendered text (tests/python/refs_chat.py), loss masks position by position on hand-checked
// conversations, raw-text samples and the truncation policy.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mmap_file.h"
#include "data/sft_sample.h"
#include "tests/support/test_support.h"

namespace mlaforge {
namespace {

const char* kCases = "chat/cases.json";

const nlohmann::json& cases() {
  static const nlohmann::json refs =
      nlohmann::json::parse(read_text_file(testing::test_data_dir() + "/" + kCases));
  return refs;
}

// Tokenizers are large (Qwen3: 11 MB of JSON): load each once per process.
const Tokenizer& tokenizer_at(const std::string& path) {
  static std::mutex mutex;
  static std::map<std::string, std::unique_ptr<Tokenizer>> loaded;
  std::lock_guard<std::mutex> lock(mutex);
  auto& t = loaded[path];
  if (!t) t = load_tokenizer(path);
  return *t;
}

const Tokenizer& asset_tokenizer(const std::string& name) {
  return tokenizer_at(testing::asset_path("tokenizers/" + name + "/tokenizer.json"));
}

std::vector<Message> messages_of(const nlohmann::json& conv, size_t count) {
  std::vector<Message> out;
  for (size_t i = 0; i < count; ++i) out.push_back({conv[i]["role"], conv[i]["content"]});
  return out;
}

Example chat(std::vector<Message> messages, std::string source = "test") {
  Example e;
  e.messages = std::move(messages);
  e.source = std::move(source);
  return e;
}

std::vector<uint8_t> mask_of(const std::string& bits) {
  std::vector<uint8_t> out;
  for (char c : bits)
    if (c == '0' || c == '1') out.push_back(c == '1');
  return out;
}

// The heart of it: for every template, conversation and vocabulary in the references, the ids built
// segment by segment equal HF's ids of the whole rendered string. Encoding each segment on its own would
// not (counted below): SentencePiece adds a dummy-prefix "▁" to every segment start and byte-level BPE
// merges "\n" + "\n\n" into one token.
TEST(SftSample, SegmentTokensEqualWholeTextTokens) {
  REQUIRE_TEST_DATA(kCases);
  const auto& refs = cases();
  std::map<std::string, int> naive_mismatch, checked;
  int64_t straddles = 0;
  for (const auto& c : refs["cases"]) {
    const Tokenizer& tok = tokenizer_at(refs["tokenizers"][c["tokenizer"].get<std::string>()]);
    const ChatTemplate t = ChatTemplate::builtin(c["template"].get<std::string>());
    ChatRenderOptions o;
    o.add_generation_prompt = c["add_generation_prompt"];
    if (!c["think"].is_null()) o.think = parse_think_policy(c["think"].get<std::string>());
    const auto segments =
        t.render(messages_of(refs["conversations"][c["conversation"].get<std::string>()], c["messages"]), o);
    const SegmentTokens got = tokenize_segments(tok, segments, single_token_markers(tok, t));
    const std::vector<int32_t> expect = c["ids"];
    const std::string what = c["template"].get<std::string>() + "/" + c["tokenizer"].get<std::string>() + "/" +
                             c["conversation"].get<std::string>();
    ASSERT_EQ(got.ids, expect) << what << " gen=" << c["add_generation_prompt"];
    // Segment ranges tile the ids.
    ASSERT_EQ(got.segment_end.size(), segments.size());
    EXPECT_EQ(got.segment_end.back(), got.ids.size());
    for (size_t k = 1; k < got.segment_end.size(); ++k) EXPECT_LE(got.segment_end[k - 1], got.segment_end[k]);
    straddles += got.straddling;

    std::vector<int32_t> naive;
    for (const auto& s : segments) {
      const auto ids = tok.encode(s.text, false);
      naive.insert(naive.end(), ids.begin(), ids.end());
    }
    const std::string key = c["template"].get<std::string>() + "/" + c["tokenizer"].get<std::string>();
    naive_mismatch[key] += naive != expect;
    ++checked[key];
  }
  for (const auto& [key, n] : checked)
    std::printf("[ segments ] %-22s %2d cases, naive per-segment encoding wrong in %2d\n", key.c_str(), n,
                naive_mismatch[key]);
  std::printf("[ segments ] %lld boundaries fell inside a token\n", static_cast<long long>(straddles));
  EXPECT_EQ(checked.size(), 8u);
  // Naive per-segment encoding is wrong for every SentencePiece-style case, and for ChatML's leading
  // newlines ("whitespace" conversation: "\n" + "\n\nLeading" vs "\n\n\nLeading").
  EXPECT_EQ(naive_mismatch["gemma/gemma_sp"], checked["gemma/gemma_sp"]);
  EXPECT_EQ(naive_mismatch["mistral/mistral_v1"], checked["mistral/mistral_v1"]);
  EXPECT_GE(naive_mismatch["chatml/qwen3"], 2);
  EXPECT_EQ(naive_mismatch["llama3/llama3"], 0);  // content trimmed, boundaries at special tokens
  EXPECT_GT(straddles, 0);
}

// <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n with Qwen3's vocabulary.
TEST(SftSample, HandCheckedChatmlMask) {
  REQUIRE_ASSET("tokenizers/qwen3/tokenizer.json");
  SampleOptions opt;
  opt.verify_tokenization = true;
  const SampleBuilder b(asset_tokenizer("qwen3"), ChatTemplate::builtin("chatml"), opt);
  const TokenizedSample s = b.tokenize(chat({{"user", "Hi"}, {"assistant", "Hello!"}}));
  const std::vector<int32_t> ids = {151644, 872,   198, 13048, 151645, 198,   // <|im_start|> user \n Hi <|im_end|> \n
                                    151644, 77091, 198,                       // <|im_start|> assistant \n
                                    9707,   0,     151645, 198};              // Hello ! <|im_end|> \n
  EXPECT_EQ(s.ids, ids);
  // Trained: "Hello", "!", <|im_end|>. Not the header, not the "\n" after <|im_end|>.
  EXPECT_EQ(s.loss_mask, mask_of("000000 000 1110"));
  EXPECT_EQ(s.trained_tokens(), 3);
  EXPECT_EQ(show_loss_mask(asset_tokenizer("qwen3"), s),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n«Hello!<|im_end|>»\n");

  // User turns trained too: their text and end token, never their header.
  SampleOptions both = opt;
  both.render.trained_roles = {"user", "assistant"};
  const SampleBuilder b2(asset_tokenizer("qwen3"), ChatTemplate::builtin("chatml"), both);
  EXPECT_EQ(b2.tokenize(chat({{"user", "Hi"}, {"assistant", "Hello!"}})).loss_mask, mask_of("000110 000 1110"));
}

TEST(SftSample, HandCheckedLlama3Mask) {
  REQUIRE_ASSET("tokenizers/llama3/tokenizer.json");
  const SampleBuilder b(asset_tokenizer("llama3"), ChatTemplate::builtin("llama3"));
  const TokenizedSample s = b.tokenize(chat({{"system", "Be brief."}, {"user", "2+2?"}, {"assistant", "4"}}));
  const std::vector<int32_t> ids = {128000,                                      // <|begin_of_text|>
                                    128006, 9125,  128007, 271, 3513, 10015, 13, 128009,  // system: Be brief.
                                    128006, 882,   128007, 271, 17,   10,    17, 30, 128009,  // user: 2+2?
                                    128006, 78191, 128007, 271, 19,   128009};  // assistant: 4 <|eot_id|>
  EXPECT_EQ(s.ids, ids);
  EXPECT_EQ(s.loss_mask, mask_of("0 00000000 000000000 000011"));
  // The model's BOS comes from the template text, once: not added again.
  EXPECT_EQ(std::count(s.ids.begin(), s.ids.end(), 128000), 1);
}

// A straddling token (ChatML header "\n" + content "\n\nX" -> one "\n\n\n" token) goes to the content.
TEST(SftSample, StraddlingTokenBelongsToTheLaterSegment) {
  REQUIRE_ASSET("tokenizers/qwen3/tokenizer.json");
  SampleOptions opt;
  opt.verify_tokenization = true;
  const SampleBuilder b(asset_tokenizer("qwen3"), ChatTemplate::builtin("chatml"), opt);
  const auto segs = b.render({{"assistant", "\n\nX"}});
  const SegmentTokens t = b.tokenize_rendered(segs);
  EXPECT_EQ(t.ids, (std::vector<int32_t>{151644, 77091, 1406, 55, 151645, 198}));
  EXPECT_EQ(t.straddling, 1);
  EXPECT_EQ(t.segment_end, (std::vector<size_t>{2, 4, 5, 6}));  // header keeps <|im_start|> assistant only
  SampleStats stats;
  const auto out = b.build(chat({{"user", "Q"}, {"assistant", "\n\nX"}}), stats);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(stats.straddling_boundaries, 1);
  const TokenizedSample& s = out[0];
  EXPECT_EQ(std::vector<uint8_t>(s.loss_mask.end() - 4, s.loss_mask.end()), mask_of("1110"));  // \n\n\n X <|im_end|> \n
}

TEST(SftSample, DeepseekThinkMask) {
  REQUIRE_TEST_DATA(kCases);
  const auto& refs = cases();
  const Tokenizer& tok = tokenizer_at(refs["tokenizers"]["deepseek_qwen"]);
  const SampleBuilder b(tok, ChatTemplate::builtin("deepseek_r1"));
  const auto conv = messages_of(refs["conversations"]["think"], 5);
  const TokenizedSample s = b.tokenize(chat(conv));
  const std::string shown = show_loss_mask(tok, s);
  // History answer trained without its reasoning (strip_history); the final answer with it; both end tokens.
  EXPECT_EQ(shown,
            "<｜begin▁of▁sentence｜>Reason step by step.<｜User｜>What is 2 + 2?<｜Assistant｜>«\n\nThe answer is "
            "4.<｜end▁of▁sentence｜>»<｜User｜>And 3 * 3?<｜Assistant｜>«<think>\n\nNow 3 * 3: nine. Check: 3 + 3 + 3 = "
            "9.\n\n</think>\n\n9 — nine.<｜end▁of▁sentence｜>»");
}

TEST(SftSample, RawText) {
  REQUIRE_TEST_DATA(kCases);
  const auto& refs = cases();
  for (const auto& c : refs["text_cases"]) {
    const std::string name = c["tokenizer"];
    const Tokenizer& tok = tokenizer_at(refs["tokenizers"][name]);
    const SampleBuilder b(tok, ChatTemplate::builtin(name == "llama3" ? "llama3" : "qwen3"));
    Example e;
    e.is_text = true;
    e.text = c["text"];
    const TokenizedSample s = b.tokenize(e);
    std::vector<int32_t> expect = c["ids"];
    if (name == "llama3") {  // BOS <|begin_of_text|> + text + EOS <|end_of_text|>
      expect.insert(expect.begin(), 128000);
      expect.push_back(128001);
    } else {  // Qwen3: no BOS; its config's EOS is <|im_end|>
      expect.push_back(151645);
    }
    EXPECT_EQ(s.ids, expect) << name;
    ASSERT_EQ(s.loss_mask.size(), expect.size());
    EXPECT_EQ(s.loss_mask[0], 0);
    EXPECT_EQ(s.trained_tokens(), static_cast<int64_t>(expect.size()) - 1);  // every token but the first
  }
  // text_eos picks another end token; "none" drops it.
  const Tokenizer& qwen = tokenizer_at(refs["tokenizers"]["qwen3"]);
  SampleOptions o;
  o.text_eos = "<|endoftext|>";
  Example e;
  e.is_text = true;
  e.text = "abc";
  EXPECT_EQ(SampleBuilder(qwen, ChatTemplate::builtin("qwen3"), o).tokenize(e).ids.back(), 151643);
  o.text_eos = "none";
  EXPECT_EQ(SampleBuilder(qwen, ChatTemplate::builtin("qwen3"), o).tokenize(e).ids, qwen.encode("abc"));
  o.text_eos = "<|no such token|>";
  EXPECT_THROW(SampleBuilder(qwen, ChatTemplate::builtin("qwen3"), o), Error);
}

TEST(SftSample, TemplateMustBelongToTheVocabulary) {
  REQUIRE_ASSET("tokenizers/llama3/tokenizer.json");
  const Tokenizer& llama3 = asset_tokenizer("llama3");
  const SampleBuilder builder(llama3, ChatTemplate::builtin("chatml"));
  // Raw text never renders the template: a text-only run works with a template the vocabulary lacks.
  Example text;
  text.is_text = true;
  text.text = "plain text";
  EXPECT_EQ(builder.tokenize(text).ids.size(), llama3.encode("plain text", false).size() + 2);  // + BOS, EOS
  // The first conversation rendered with it names the example and the missing marker.
  Example conversation;
  conversation.source = "data.jsonl:3";
  conversation.messages = {{"user", "hi"}, {"assistant", "hello"}};
  try {
    builder.tokenize(conversation);
    ADD_FAILURE() << "chatml accepted with Llama-3's vocabulary";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'<|im_start|>'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("data.jsonl:3"), std::string::npos) << e.what();
  }
}

// ------------------------------------------------------------------------------------ truncation --
class Truncation : public ::testing::Test {
 protected:
  void SetUp() override { REQUIRE_ASSET("tokenizers/qwen3/tokenizer.json"); }
  static SampleBuilder builder(const char* name, int64_t max_len, bool inside = false) {
    SampleOptions o;
    o.max_seq_len = max_len;
    o.truncate_inside_turn = inside;
    o.verify_tokenization = true;
    return SampleBuilder(asset_tokenizer("qwen3"), ChatTemplate::builtin(name), o);
  }
  const std::vector<Message> conv = {{"user", "First question, please answer it."},
                                     {"assistant", "First answer, which is fairly short."},
                                     {"user", "Second question?"},
                                     {"assistant", "Second answer, a much longer one that goes on and on and on."}};
};

TEST_F(Truncation, FittingSamplesAreUnchanged) {
  const auto full = builder("chatml", 0).tokenize(chat(conv));
  SampleStats stats;
  const auto out = builder("chatml", static_cast<int64_t>(full.size())).build(chat(conv), stats);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ids, full.ids);
  EXPECT_EQ(out[0].loss_mask, full.loss_mask);
  EXPECT_EQ(stats.samples, 1);
  EXPECT_EQ(stats.truncated_turns + stats.truncated_inside + stats.dropped_too_long, 0);
}

TEST_F(Truncation, DropsWholeTrailingTurns) {
  const auto full = builder("chatml", 0).tokenize(chat(conv));
  const auto first = builder("chatml", 0).tokenize(chat({conv[0], conv[1]}));
  ASSERT_LT(first.size() + 5, full.size());
  SampleStats stats;
  // Room for the first exchange and part of the second: the second is dropped whole.
  const auto out = builder("chatml", static_cast<int64_t>(full.size()) - 1).build(chat(conv), stats);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ids, first.ids);
  EXPECT_EQ(out[0].loss_mask, first.loss_mask);
  EXPECT_EQ(out[0].ids[out[0].size() - 2], 151645);  // the kept answer ends with <|im_end|> (then "\n")
  EXPECT_EQ(out[0].loss_mask[out[0].size() - 2], 1);
  EXPECT_EQ(stats.truncated_turns, 1);
  EXPECT_EQ(stats.trained_tokens, first.trained_tokens());

  // Not even the first answer fits: dropped and counted.
  SampleStats stats2;
  EXPECT_TRUE(builder("chatml", static_cast<int64_t>(first.size()) - 1).build(chat(conv), stats2).empty());
  EXPECT_EQ(stats2.dropped_too_long, 1);
  EXPECT_EQ(stats2.samples, 0);
}

TEST_F(Truncation, InsideTurnOnlyWhenAsked) {
  const auto full = builder("chatml", 0).tokenize(chat(conv));
  const int64_t max_len = static_cast<int64_t>(full.size()) - 6;
  SampleStats stats;
  const auto out = builder("chatml", max_len, true).build(chat(conv), stats);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(static_cast<int64_t>(out[0].size()), max_len);  // cut inside the last answer (all trained)
  EXPECT_EQ(std::vector<int32_t>(full.ids.begin(), full.ids.begin() + max_len), out[0].ids);
  EXPECT_NE(out[0].ids.back(), 151645);  // no end token: the model is not taught to stop here
  EXPECT_EQ(out[0].loss_mask.back(), 1);
  EXPECT_EQ(stats.truncated_inside, 1);
  // Cut inside the second user turn: trailing untrained tokens go, the first answer's tokens stay.
  const auto first = builder("chatml", 0).tokenize(chat({conv[0], conv[1]}));
  const auto out2 = builder("chatml", static_cast<int64_t>(first.size()) + 3, true).build(chat(conv), stats);
  ASSERT_EQ(out2.size(), 1u);
  EXPECT_EQ(out2[0].ids, std::vector<int32_t>(first.ids.begin(), first.ids.end() - 1));  // up to <|im_end|>
}

TEST_F(Truncation, NothingToTrain) {
  SampleStats stats;
  EXPECT_TRUE(builder("chatml", 0).build(chat({{"system", "S"}, {"user", "U"}}), stats).empty());
  EXPECT_EQ(stats.dropped_no_trained, 1);
  EXPECT_EQ(stats.examples, 1);
}

// Truncation re-renders the kept prefix: under Qwen3's rule the kept final answer gets its reasoning back.
TEST_F(Truncation, RerendersThePrefix) {
  const std::vector<Message> think = {{"user", "Q1"},
                                      {"assistant", "<think>\nreasoning one\n</think>\n\nA1"},
                                      {"user", "Q2"},
                                      {"assistant", "<think>\nreasoning two is long, long, long, long\n</think>\n\nA2"}};
  const auto full = builder("qwen3", 0).tokenize(chat(think));
  SampleStats stats;
  const auto out = builder("qwen3", static_cast<int64_t>(full.size()) - 1).build(chat(think), stats);
  ASSERT_EQ(out.size(), 1u);
  const std::string text = asset_tokenizer("qwen3").decode(out[0].ids);
  EXPECT_EQ(text, "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n<think>\nreasoning one\n</think>\n\nA1"
                  "<|im_end|>\n");
  EXPECT_EQ(stats.truncated_turns, 1);
}

TEST_F(Truncation, RawTextWindows) {
  SampleOptions o;
  o.max_seq_len = 8;
  const SampleBuilder b(asset_tokenizer("qwen3"), ChatTemplate::builtin("qwen3"), o);
  Example e;
  e.is_text = true;
  e.text = "One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen.";
  const TokenizedSample full = b.tokenize(e);
  ASSERT_GT(full.size(), 16u);
  SampleStats stats;
  const auto windows = b.build(e, stats);
  ASSERT_GE(windows.size(), 3u);
  // Windows overlap by one token; dropping that token from each later window gives back the whole text,
  // and every token but the very first is a target exactly once.
  std::vector<int32_t> joined = windows[0].ids;
  int64_t trained = 0;
  for (size_t w = 0; w < windows.size(); ++w) {
    EXPECT_LE(windows[w].size(), 8u);
    EXPECT_EQ(windows[w].loss_mask[0], 0);
    if (w > 0) {
      EXPECT_EQ(windows[w].ids[0], windows[w - 1].ids.back());
      joined.insert(joined.end(), windows[w].ids.begin() + 1, windows[w].ids.end());
    }
    trained += windows[w].trained_tokens();
  }
  EXPECT_EQ(joined, full.ids);
  EXPECT_EQ(trained, full.trained_tokens());
  EXPECT_EQ(stats.text_windows, static_cast<int64_t>(windows.size()) - 1);
  // Without splitting: one sample, cut.
  o.split_long_text = false;
  SampleStats stats2;
  const auto cut = SampleBuilder(asset_tokenizer("qwen3"), ChatTemplate::builtin("qwen3"), o).build(e, stats2);
  ASSERT_EQ(cut.size(), 1u);
  EXPECT_EQ(cut[0].ids, std::vector<int32_t>(full.ids.begin(), full.ids.begin() + 8));
  EXPECT_EQ(stats2.truncated_inside, 1);
}

TEST(SftSample, MistralTruncationMovesTheSystemPrompt) {
  REQUIRE_TEST_DATA(kCases);
  const Tokenizer& tok = tokenizer_at(cases()["tokenizers"]["mistral_v1"]);
  const std::vector<Message> conv = {
      {"system", "Sys."}, {"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}, {"assistant", "A2 is longer."}};
  SampleOptions o;
  o.verify_tokenization = true;
  const auto full = SampleBuilder(tok, ChatTemplate::builtin("mistral"), o).tokenize(chat(conv));
  o.max_seq_len = static_cast<int64_t>(full.size()) - 2;
  SampleStats stats;
  const auto out = SampleBuilder(tok, ChatTemplate::builtin("mistral"), o).build(chat(conv), stats);
  ASSERT_EQ(out.size(), 1u);
  const std::vector<Message> prefix(conv.begin(), conv.begin() + 3);
  EXPECT_EQ(ChatTemplate::builtin("mistral").render_text(prefix), "<s>[INST] Sys.\n\nU1[/INST] A1</s>");
  EXPECT_EQ(out[0].ids, SampleBuilder(tok, ChatTemplate::builtin("mistral")).tokenize(chat(prefix)).ids);
  EXPECT_EQ(out[0].ids.back(), 2);  // </s>, trained
  EXPECT_EQ(out[0].loss_mask.back(), 1);
}

TEST(SftSample, BuildAllSkipsInvalidExamples) {
  REQUIRE_TEST_DATA(kCases);
  const Tokenizer& tok = tokenizer_at(cases()["tokenizers"]["gemma_sp"]);
  const SampleBuilder b(tok, ChatTemplate::builtin("gemma"));
  const std::vector<Example> examples = {chat({{"user", "a"}, {"assistant", "b"}}, "f.jsonl:1"),
                                         chat({{"user", "a"}, {"tool", "b"}}, "f.jsonl:2"),
                                         chat({{"user", "c"}, {"assistant", "d"}}, "f.jsonl:3")};
  SampleStats stats;
  EXPECT_THROW(b.build_all(examples, stats), Error);
  SampleStats stats2;
  const auto out = b.build_all(examples, stats2, true);
  EXPECT_EQ(out.size(), 2u);
  EXPECT_EQ(stats2.invalid, 1);
  EXPECT_NE(stats2.first_invalid.find("f.jsonl:2"), std::string::npos);
  EXPECT_EQ(out[1].source, "f.jsonl:3");
  EXPECT_NE(stats2.summary().find("skipped 1 invalid"), std::string::npos);
}

TEST(SftSample, EncodePromptMatchesReference) {
  REQUIRE_TEST_DATA(kCases);
  const auto& refs = cases();
  int checked = 0;
  for (const auto& c : refs["cases"]) {
    if (!c["add_generation_prompt"].get<bool>() || !c["think"].is_null()) continue;
    const Tokenizer& tok = tokenizer_at(refs["tokenizers"][c["tokenizer"].get<std::string>()]);
    const SampleBuilder b(tok, ChatTemplate::builtin(c["template"].get<std::string>()));
    const auto messages = messages_of(refs["conversations"][c["conversation"].get<std::string>()], c["messages"]);
    EXPECT_EQ(b.encode_prompt(messages), c["ids"].get<std::vector<int32_t>>()) << c["template"] << c["conversation"];
    ++checked;
  }
  EXPECT_GE(checked, 40);
}

}  // namespace
}  // namespace mlaforge
