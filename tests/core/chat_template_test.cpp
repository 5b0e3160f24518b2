// Chat templates (data/chat_template.h): rendered text against jinja2 running the real Llama-3 / Qwen3
// templates and our transcriptions of the others (tests/python/refs_chat.py), template detection, think
// policies and the errors for conversations a template cannot render.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mmap_file.h"
#include "data/chat_template.h"
#include "tests/support/test_support.h"

namespace mlaforge {
namespace {

const char* kCases = "chat/cases.json";

nlohmann::json load_cases() {
  return nlohmann::json::parse(read_text_file(testing::test_data_dir() + "/" + kCases));
}

std::vector<Message> messages_of(const nlohmann::json& conv, size_t count) {
  std::vector<Message> out;
  for (size_t i = 0; i < count; ++i) out.push_back({conv[i]["role"], conv[i]["content"]});
  return out;
}

ChatRenderOptions options_of(const nlohmann::json& c) {
  ChatRenderOptions o;
  o.add_generation_prompt = c["add_generation_prompt"];
  if (!c["think"].is_null()) o.think = parse_think_policy(c["think"].get<std::string>());
  return o;
}

std::string text_of(const std::vector<ChatSegment>& segments) {
  std::string out;
  for (const auto& s : segments) out += s.text;
  return out;
}

// Every (template, conversation, generation prompt, think policy) case renders to jinja2's text exactly.
TEST(ChatTemplate, RendersLikeJinja) {
  REQUIRE_TEST_DATA(kCases);
  const nlohmann::json refs = load_cases();
  std::map<std::string, int> per_template;
  for (const auto& c : refs["cases"]) {
    const ChatTemplate t = ChatTemplate::builtin(c["template"].get<std::string>());
    const auto messages = messages_of(refs["conversations"][c["conversation"].get<std::string>()], c["messages"]);
    const std::string got = t.render_text(messages, options_of(c));
    ASSERT_EQ(got, c["text"].get<std::string>())
        << c["template"] << " / " << c["conversation"] << " gen=" << c["add_generation_prompt"] << " think=" << c["think"];
    ++per_template[t.name()];
  }
  // Each built-in is covered (and the case list did not silently shrink).
  for (const std::string& name : ChatTemplate::builtin_names()) EXPECT_GE(per_template[name], 11) << name;
  EXPECT_GE(refs["cases"].size(), 120u);
}

TEST(ChatTemplate, DetectsModelTemplates) {
  REQUIRE_TEST_DATA(kCases);
  const nlohmann::json refs = load_cases();
  int checked = 0;
  for (const auto& d : refs["detect"]) {
    const std::string expect = d["expect"];
    if (expect.empty()) {
      try {
        detect_chat_template(d["source"], d["name"]);
        ADD_FAILURE() << d["name"] << " was detected as a built-in";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("supported: chatml, qwen2, qwen3, llama3, mistral, deepseek_r1, gemma"),
                  std::string::npos)
            << e.what();
        EXPECT_NE(std::string(e.what()).find(d["name"].get<std::string>()), std::string::npos) << e.what();
      }
    } else {
      const ChatTemplate t = detect_chat_template(d["source"], d["name"]);
      EXPECT_EQ(t.name(), expect) << d["name"];
      EXPECT_EQ(t.default_system(), d["system"].get<std::string>()) << d["name"];
    }
    ++checked;
  }
  EXPECT_EQ(checked, 10);
}

TEST(ChatTemplate, DetectsFromAModelFolder) {
  REQUIRE_ASSET("tokenizers/qwen3/tokenizer_config.json");
  // The asset folders are model folders as far as the template is concerned.
  EXPECT_EQ(detect_chat_template(read_chat_template_source(testing::asset_path("tokenizers/qwen3"))).name(), "qwen3");
  EXPECT_EQ(detect_chat_template(read_chat_template_source(testing::asset_path("tokenizers/llama3"))).name(), "llama3");
  // Llama-2's config has no template: auto has nothing to go on, an explicit name works.
  const std::string none = read_chat_template_source(testing::asset_path("tokenizers/llama2"));
  EXPECT_EQ(none, "");
  EXPECT_THROW(resolve_chat_template("auto", none, "llama2"), Error);
  EXPECT_EQ(resolve_chat_template("mistral", none, "llama2").name(), "mistral");
}

TEST(ChatTemplate, ReadsTemplateSources) {
  const std::string dir = testing::make_temp_dir("chat-src");
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir + "/" + name) << text;
  };
  EXPECT_EQ(read_chat_template_source(dir), "");
  write("chat_template.jinja", "{{ '<start_of_turn>' }}");
  EXPECT_EQ(read_chat_template_source(dir), "{{ '<start_of_turn>' }}");  // the file, when the config has none
  write("tokenizer_config.json", R"({"chat_template": [{"name": "tool_use", "template": "x"},
                                      {"name": "default", "template": "<|im_start|>"}]})");
  EXPECT_EQ(read_chat_template_source(dir), "<|im_start|>");
  write("tokenizer_config.json", R"({"chat_template": "[INST]"})");
  EXPECT_EQ(read_chat_template_source(dir), "[INST]");
  EXPECT_EQ(resolve_chat_template("auto", read_chat_template_source(dir), dir).name(), "mistral");
  write("tokenizer_config.json", R"({"chat_template": [{"name": "rag", "template": "x"}]})");
  EXPECT_THROW(read_chat_template_source(dir), Error);
  write("tokenizer_config.json", "{not json");
  try {
    read_chat_template_source(dir);
    ADD_FAILURE() << "bad JSON accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos);
  }
}

TEST(ChatTemplate, BuiltinNamesAndErrors) {
  EXPECT_EQ(ChatTemplate::builtin_names().size(), 7u);
  try {
    ChatTemplate::builtin("vicuna");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("deepseek_r1"), std::string::npos);
  }
  EXPECT_EQ(ChatTemplate::builtin("qwen2").default_system(),
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_EQ(ChatTemplate::builtin("deepseek_r1").default_think_policy(), ThinkPolicy::strip_history);
  EXPECT_EQ(ChatTemplate::builtin("llama3").default_think_policy(), ThinkPolicy::keep_all);
  EXPECT_EQ(parse_think_policy("strip_all"), ThinkPolicy::strip_all);
  EXPECT_THROW(parse_think_policy("strip"), Error);

  const std::vector<Message> tool = {{"user", "q"}, {"assistant", "a"}, {"tool", "r"}};
  for (const char* name : {"gemma", "mistral", "deepseek_r1"}) {
    try {
      ChatTemplate::builtin(name).render(tool, {}, "data.jsonl:7");
      ADD_FAILURE() << name << " rendered a tool turn";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("data.jsonl:7: message 2"), std::string::npos) << e.what();
    }
  }
  const std::vector<Message> not_alternating = {{"user", "a"}, {"user", "b"}};
  EXPECT_THROW(ChatTemplate::builtin("gemma").render(not_alternating), Error);
  const std::vector<Message> late_system = {{"user", "a"}, {"assistant", "b"}, {"system", "c"}, {"user", "d"}};
  EXPECT_THROW(ChatTemplate::builtin("mistral").render(late_system), Error);
  EXPECT_NO_THROW(ChatTemplate::builtin("llama3").render(late_system));
  EXPECT_THROW(ChatTemplate::builtin("chatml").render({}), Error);
}

// Roles, kinds and trained flags of a rendered conversation, segment by segment.
TEST(ChatTemplate, SegmentsMarkTrainedText) {
  const std::vector<Message> conv = {{"system", "S"}, {"user", "U"}, {"assistant", "A"}};
  const auto segs = ChatTemplate::builtin("chatml").render(conv, {});
  const std::vector<std::tuple<std::string, std::string, SegmentKind, bool, int>> expect = {
      {"<|im_start|>system\n", "system", SegmentKind::header, false, 0},
      {"S", "system", SegmentKind::content, false, 0},
      {"<|im_end|>", "system", SegmentKind::end, false, 0},
      {"\n", "system", SegmentKind::separator, false, 0},
      {"<|im_start|>user\n", "user", SegmentKind::header, false, 1},
      {"U", "user", SegmentKind::content, false, 1},
      {"<|im_end|>", "user", SegmentKind::end, false, 1},
      {"\n", "user", SegmentKind::separator, false, 1},
      {"<|im_start|>assistant\n", "assistant", SegmentKind::header, false, 2},
      {"A", "assistant", SegmentKind::content, true, 2},
      {"<|im_end|>", "assistant", SegmentKind::end, true, 2},
      {"\n", "assistant", SegmentKind::separator, false, 2},
  };
  ASSERT_EQ(segs.size(), expect.size());
  for (size_t i = 0; i < segs.size(); ++i) {
    EXPECT_EQ(segs[i].text, std::get<0>(expect[i])) << i;
    EXPECT_EQ(segs[i].role, std::get<1>(expect[i])) << i;
    EXPECT_EQ(segs[i].kind, std::get<2>(expect[i])) << i;
    EXPECT_EQ(segs[i].trained, std::get<3>(expect[i])) << i;
    EXPECT_EQ(segs[i].message, std::get<4>(expect[i])) << i;
  }
  // Training the user too trains its content and end token, still not its header.
  ChatRenderOptions both;
  both.trained_roles = {"user", "assistant"};
  const auto segs2 = ChatTemplate::builtin("chatml").render(conv, both);
  EXPECT_FALSE(segs2[4].trained);
  EXPECT_TRUE(segs2[5].trained);
  EXPECT_TRUE(segs2[6].trained);
  EXPECT_FALSE(segs2[7].trained);
  // The generation prompt is never trained; Mistral has none (its prompt ends at [/INST]).
  ChatRenderOptions gen;
  gen.add_generation_prompt = true;
  const auto segs3 = ChatTemplate::builtin("deepseek_r1").render({{"user", "U"}}, gen);
  EXPECT_EQ(segs3.back().kind, SegmentKind::generation_prompt);
  EXPECT_EQ(segs3.back().text, "<｜Assistant｜><think>\n");
  EXPECT_FALSE(segs3.back().trained);
  EXPECT_EQ(ChatTemplate::builtin("mistral").render_text({{"user", "U"}}, gen), "<s>[INST] U[/INST]");
  // Gemma: the system prompt is folded into the first user turn, as system content.
  const auto g = ChatTemplate::builtin("gemma").render(conv, {});
  EXPECT_EQ(text_of(g), "<bos><start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n");
  EXPECT_EQ(g[2].role, "system");
  EXPECT_EQ(g[2].text, "S\n\n");
}

TEST(ChatTemplate, ThinkPolicies) {
  const std::vector<Message> conv = {{"user", "Q1"},
                                     {"assistant", "<think>\nr1\n</think>\n\nA1"},
                                     {"user", "Q2"},
                                     {"assistant", "<think>\nr2\n</think>\n\nA2"}};
  auto render = [&](const char* name, std::optional<ThinkPolicy> p) {
    ChatRenderOptions o;
    o.think = p;
    return ChatTemplate::builtin(name).render_text(conv, o);
  };
  // Qwen3's own rule, and the two others applied to its layout.
  EXPECT_EQ(render("qwen3", std::nullopt),
            "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nr2\n</think>\n\nA2<|im_end|>\n");
  EXPECT_EQ(render("qwen3", ThinkPolicy::keep_all),
            "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n<think>\nr1\n</think>\n\nA1<|im_end|>\n"
            "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n<think>\nr2\n</think>\n\nA2<|im_end|>\n");
  EXPECT_EQ(render("qwen3", ThinkPolicy::strip_all),
            "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\nA2<|im_end|>\n");
  // Templates that ignore <think> keep it by default; an explicit policy strips it (leading newlines go).
  EXPECT_NE(render("llama3", std::nullopt).find("<|end_header_id|>\n\n<think>\nr1\n</think>\n\nA1<|eot_id|>"), std::string::npos);
  const std::string stripped = render("chatml", ThinkPolicy::strip_history);
  EXPECT_EQ(stripped.find("r1"), std::string::npos);
  EXPECT_NE(stripped.find("<|im_start|>assistant\nA1<|im_end|>"), std::string::npos);
  EXPECT_NE(stripped.find("<think>\nr2\n</think>\n\nA2"), std::string::npos);
  // No closing tag: nothing is stripped (the official templates split on </think> only).
  ChatRenderOptions all;
  all.think = ThinkPolicy::strip_all;
  EXPECT_EQ(ChatTemplate::builtin("deepseek_r1").render_text({{"user", "Q"}, {"assistant", "<think>\nunfinished"}}, all),
            "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\nunfinished<｜end▁of▁sentence｜>");
}

TEST(ChatTemplate, PythonStrip) {
  EXPECT_EQ(python_strip("  \t\nabc \n"), "abc");
  EXPECT_EQ(python_strip("\u3000\u00a0x y\u2003\u205f"), "x y");  // ideographic, no-break and other spaces
  EXPECT_EQ(python_strip("\u200bx\u200b"), "\u200bx\u200b");       // zero-width space is not whitespace
  EXPECT_EQ(python_strip("\x1c\x1fé\xc2\x85"), "é");  // file separators and NEL (U+0085) are
  EXPECT_EQ(python_strip("日本"), "日本");
  EXPECT_EQ(python_strip("   "), "");
  EXPECT_EQ(python_strip(std::string("\xff a \xff")), "\xff a \xff");  // invalid UTF-8 is not space
}

TEST(ChatTemplate, DefaultSystemPrompt) {
  const std::vector<Message> conv = {{"user", "U"}};
  EXPECT_EQ(ChatTemplate::builtin("qwen2").render_text(conv),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nU<|im_end|>\n");
  const ChatTemplate custom(ChatFormat::chatml, "chatml", "Be kind.");
  EXPECT_EQ(custom.render_text(conv), "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");
  EXPECT_EQ(custom.render_text({{"system", "Mine."}, {"user", "U"}}),
            "<|im_start|>system\nMine.<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");
  EXPECT_EQ(custom.describe(), "chatml (default system prompt: \"Be kind.\")");
}

}  // namespace
}  // namespace mlaforge
