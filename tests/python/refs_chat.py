"""Chat template references: conversations rendered by jinja2 and tokenised by the `tokenizers` library,
for tests/core/chat_template_test.cpp and tests/core/sft_sample_test.cpp.

Templates. Where a real template is available it is used as published: Llama-3's and Qwen3's, from
<assets>/tokenizers/{llama3,qwen3}/tokenizer_config.json. Llama-3's early template (the one in the asset)
appends the assistant header unconditionally, even without add_generation_prompt (later revisions made it
conditional); for training renders that trailing header is removed here, after checking it is there. The
other built-ins have no template file in the assets: the Jinja sources below (CHATML, QWEN25, MISTRAL,
DEEPSEEK_R1, GEMMA3) are OUR TRANSCRIPTIONS of each format's documented layout (the published templates
without their tool-call branches), not the vendors' files:
  CHATML       plain ChatML, every role verbatim
  QWEN25       Qwen2.5-Instruct: ChatML, default system prompt, tool results wrapped in <tool_response>
  MISTRAL      Mistral-7B-Instruct-v0.3: [INST] user[/INST] + " " + answer|trim + </s>, the system prompt
               before the last user message (the published template compares the message dict to the last
               user message; here the index is compared, which differs only when two user turns are equal)
  DEEPSEEK_R1  DeepSeek-R1 / R1-Distill: system prompts joined in front, <｜User｜>/<｜Assistant｜>, generation
               prompt "<｜Assistant｜><think>\n". `think_policy` selects what happens to reasoning: the
               published template strips it from every assistant turn (strip_all); strip_history strips it
               from turns before the last user message only (identical for inference prompts).
  GEMMA3       Gemma 3: system folded into the first user turn, role `model`, content trimmed.
Jinja runs as transformers runs chat templates: a sandboxed environment with trim_blocks, lstrip_blocks
and the loopcontrols extension.

Tokenizers. llama3 and qwen3 are the asset files. Templates whose markers those vocabularies lack get a
vocabulary derived here (written under <out>/chat/, each a folder with tokenizer.json):
  deepseek_qwen   Qwen3's tokenizer.json plus <｜begin▁of▁sentence｜>, <｜end▁of▁sentence｜>, <｜User｜>,
                  <｜Assistant｜> as special tokens (how the R1-Distill-Qwen tokenizers are built)
  mistral_v1      Llama-2's tokenizer.json unchanged: a SentencePiece-BPE vocabulary in which [INST] and
                  [/INST] are plain text, as in Mistral-7B v0.1 / Mixtral-8x7B
  mistral_v3      the same vocabulary with [INST] and [/INST] as control tokens and, instead of the Prepend
                  normalizer, a Metaspace pre-tokenizer with prepend_scheme "first" (as in Mistral v0.3's
                  tokenizer.json): text after a special token gets no "▁", the case where encoding a
                  segment on its own would add one
  gemma_sp        Llama-2's vocabulary plus <bos>, <eos>, <start_of_turn>, <end_of_turn>, with the Metaspace
                  "first" pre-tokenizer of mistral_v3: the "\n" after <end_of_turn> must not get a "▁"
                  (real Gemma vocabularies add no dummy prefix at all; this is the harder case)

Writes <out>/chat/cases.json:
  conversations  name -> [{role, content}]
  tokenizers     name -> tokenizer.json path
  cases          [{template, tokenizer, conversation, messages: how many of the conversation's messages are
                  rendered, add_generation_prompt, think (null: template default), text, ids}]
  detect         [{name, source, expect}]: Jinja sources and the built-in each must be detected as ("" for
                  one that must be rejected), with the default system prompt expected for ChatML ones
  text_cases     [{tokenizer, text, ids}]: raw text encoded without special tokens
"""
import json
import os

LLAMA3_ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"

CHATML = r"""{%- for message in messages %}
    {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}"""

QWEN25 = r"""{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}"""

MISTRAL = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set ns = namespace(last_user=-1) %}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- set ns.last_user = loop.index0 %}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
    {%- if message["role"] == "user" %}
        {%- if loop.index0 == ns.last_user and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token }}
    {%- endif %}
{%- endfor %}"""

DEEPSEEK_R1 = r"""{%- set ns = namespace(system_prompt='', is_first_sp=true, last_query=messages|length - 1) %}
{%- for message in messages %}
    {%- if message['role'] == 'user' %}
        {%- set ns.last_query = loop.index0 %}
    {%- endif %}
    {%- if message['role'] == 'system' %}
        {%- if ns.is_first_sp %}
            {%- set ns.system_prompt = message['content'] %}
            {%- set ns.is_first_sp = false %}
        {%- else %}
            {%- set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{{- bos_token + ns.system_prompt }}
{%- for message in messages %}
    {%- if message['role'] == 'user' %}
        {{- '<｜User｜>' + message['content'] }}
    {%- elif message['role'] == 'assistant' %}
        {%- set content = message['content'] %}
        {%- if '</think>' in content and (think_policy == 'strip_all' or (think_policy == 'strip_history' and loop.index0 < ns.last_query)) %}
            {%- set content = content.split('</think>')[-1] %}
        {%- endif %}
        {{- '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<｜Assistant｜><think>\n' }}
{%- endif %}"""

GEMMA3 = r"""{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set first_user_prefix = "" %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
    {%- if message['role'] == 'assistant' %}
        {%- set role = "model" %}
    {%- else %}
        {%- set role = message['role'] %}
    {%- endif %}
    {{- '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\n' }}
{%- endif %}"""

# For detection only: SmolLM2-Instruct's layout (ChatML with a literal default system prompt, the default
# model of this project) and Llama-2-chat's (<<SYS>>, which must be rejected). Transcriptions.
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA2_CHAT = ("{% if messages[0]['role'] == 'system' %}{% set system_message = '<<SYS>>\\n' + messages[0]['content'] + "
               "'\\n<</SYS>>\\n\\n' %}{% endif %}{% for message in messages %}{{ bos_token + '[INST] ' + "
               "message['content'] + ' [/INST]' }}{% endfor %}")

THINK_1 = "<think>\nThe user asks for 2 + 2.\nThat is 4.\n</think>\n\nThe answer is 4."
THINK_2 = "<think>\n\nNow 3 * 3: nine. Check: 3 + 3 + 3 = 9.\n\n</think>\n\n9 — nine."

CONVERSATIONS = {
    "basic": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ],
    "multi_turn": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke about compilers."},
        {"role": "assistant", "content": "I would, but it only works after the third pass."},
    ],
    "think": [
        {"role": "system", "content": "Reason step by step."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": THINK_1},
        {"role": "user", "content": "And 3 * 3?"},
        {"role": "assistant", "content": THINK_2},
    ],
    "unicode": [
        {"role": "user", "content": "日本語で答えて 🙂 — naïve café, Ελληνικά, العربية, संस्कृतम्"},
        {"role": "assistant", "content": "はい、もちろんです！🎉 Ça va? Ünïcödé… 👩‍👩‍👧‍👦 ∑ₖ xₖ² ≤ 1"},
    ],
    "whitespace": [
        {"role": "user", "content": "  padded question \n"},
        {"role": "assistant", "content": "\n\nLeading newlines, trailing spaces  \n"},
        {"role": "user", "content": "\tTabbed\u3000"},
        {"role": "assistant", "content": " Leading space\u00a0"},
    ],
    "prompt": [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And of grass?"},
    ],
    "tools": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Let me look both up."},
        {"role": "tool", "content": "{\"city\": \"Paris\", \"celsius\": 21}"},
        {"role": "tool", "content": "{\"city\": \"Rome\", \"celsius\": 25}"},
        {"role": "assistant", "content": "Paris 21 °C, Rome 25 °C."},
    ],
    "late_system": [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "system", "content": "From now on, answer in French."},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Très bien, merci."},
    ],
}

# Which conversations each template can render (gemma/mistral need alternation; tools/late systems are
# ChatML-family and llama3 only).
ALTERNATING = ["basic", "multi_turn", "think", "unicode", "whitespace", "prompt"]
TEMPLATES = {
    # name: (jinja source or asset name, tokenizer, bos, eos, conversations, think policies to render)
    "chatml": (CHATML, "qwen3", "", "<|im_end|>", ALTERNATING + ["tools", "late_system"], [None]),
    "qwen2": (QWEN25, "qwen3", "", "<|im_end|>", ALTERNATING + ["tools", "late_system"], [None]),
    "qwen3": ("asset:qwen3", "qwen3", "", "<|im_end|>", ALTERNATING + ["tools", "late_system"], [None]),
    "llama3": ("asset:llama3", "llama3", "<|begin_of_text|>", "<|end_of_text|>", ALTERNATING + ["tools", "late_system"],
               [None]),
    "mistral": (MISTRAL, "mistral_v1", "<s>", "</s>", ALTERNATING, [None]),
    "deepseek_r1": (DEEPSEEK_R1, "deepseek_qwen", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                    ALTERNATING + ["late_system"], [None, "keep_all", "strip_all"]),
    "gemma": (GEMMA3, "gemma_sp", "<bos>", "<eos>", ALTERNATING, [None]),
}
# Extra (template, tokenizer) pairs: the same renders under another vocabulary.
EXTRA_TOKENIZERS = {"mistral": ["mistral_v3"]}

DEFAULT_THINK = {"deepseek_r1": "strip_history", "qwen3": "strip_history"}

TEXTS = [
    "Once upon a time, there was a little robot.\n\nIt liked numbers: 3.14159, 2024, 1e-5.",
    "  Leading spaces, unicode — 日本語 🙂, and a trailing newline\n",
]


def _environment():
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = raise_exception
    return env


def _write_json(path, obj):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)


def _derived_tokenizer(base_path, folder, tokens, metaspace_first=False):
    from tokenizers import AddedToken, Tokenizer

    with open(base_path, encoding="utf-8") as f:
        spec = json.load(f)
    if metaspace_first:
        # What transformers makes of a Llama/Mistral SentencePiece model with legacy=False (Mistral v0.3's
        # tokenizer.json): no Prepend normalizer, a Metaspace pre-tokenizer that adds the "▁" only at the
        # very start of the text, not after special tokens.
        spec["normalizer"] = None
        spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                                 "split": False}
    tok = Tokenizer.from_str(json.dumps(spec))
    if tokens:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "tokenizer.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    tok.save(tmp)
    os.replace(tmp, path)
    return path


def main(out_dir, assets_dir):
    from tokenizers import Tokenizer

    tok_dir = os.path.abspath(os.path.join(assets_dir, "tokenizers"))
    needed = ["llama3/tokenizer.json", "llama3/tokenizer_config.json", "qwen3/tokenizer.json",
              "qwen3/tokenizer_config.json", "llama2/tokenizer.json"]
    missing = [n for n in needed if not os.path.exists(os.path.join(tok_dir, n))]
    if missing:
        print(f"refs_chat: assets missing ({', '.join(missing)}): no chat references", flush=True)
        return
    out = os.path.abspath(os.path.join(out_dir, "chat"))
    os.makedirs(out, exist_ok=True)

    real = {}
    for name in ("llama3", "qwen3"):
        with open(os.path.join(tok_dir, name, "tokenizer_config.json"), encoding="utf-8") as f:
            real[name] = json.load(f)["chat_template"]

    llama2 = os.path.join(tok_dir, "llama2", "tokenizer.json")
    qwen3 = os.path.join(tok_dir, "qwen3", "tokenizer.json")
    tokenizer_paths = {
        "llama3": os.path.join(tok_dir, "llama3", "tokenizer.json"),
        "qwen3": qwen3,
        "deepseek_qwen": _derived_tokenizer(qwen3, os.path.join(out, "deepseek_qwen"),
                                            ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>",
                                             "<｜Assistant｜>"]),
        "mistral_v1": _derived_tokenizer(llama2, os.path.join(out, "mistral_v1"), []),
        "mistral_v3": _derived_tokenizer(llama2, os.path.join(out, "mistral_v3"), ["[INST]", "[/INST]"],
                                         metaspace_first=True),
        "gemma_sp": _derived_tokenizer(llama2, os.path.join(out, "gemma_sp"),
                                       ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], metaspace_first=True),
    }
    tokenizers = {name: Tokenizer.from_file(path) for name, path in tokenizer_paths.items()}

    env = _environment()
    cases = []
    for template, (source, tok_name, bos, eos, conversations, thinks) in TEMPLATES.items():
        jinja = env.from_string(real[source[6:]] if source.startswith("asset:") else source)
        for tok in [tok_name] + EXTRA_TOKENIZERS.get(template, []):
            for conv in conversations:
                messages = CONVERSATIONS[conv]
                renders = []
                if messages[-1]["role"] == "assistant":
                    renders.append((len(messages), False))      # training sample
                    renders.append((len(messages) - 1, True))   # the prompt for its last answer
                else:
                    renders.append((len(messages), True))
                for count, gen in renders:
                    for think in thinks:
                        policy = think or DEFAULT_THINK.get(template, "keep_all")
                        text = jinja.render(messages=messages[:count], add_generation_prompt=gen, bos_token=bos,
                                            eos_token=eos, think_policy=policy)
                        if source == "asset:llama3" and not gen:
                            assert text.endswith(LLAMA3_ASSISTANT_HEADER), "llama3 template layout changed"
                            text = text[: -len(LLAMA3_ASSISTANT_HEADER)]
                        ids = tokenizers[tok].encode(text, add_special_tokens=False).ids
                        cases.append({"template": template, "tokenizer": tok, "conversation": conv, "messages": count,
                                      "add_generation_prompt": gen, "think": think, "text": text, "ids": ids})

    detect = [
        {"name": "llama3 (asset)", "source": real["llama3"], "expect": "llama3", "system": ""},
        {"name": "qwen3 (asset)", "source": real["qwen3"], "expect": "qwen3", "system": ""},
        {"name": "chatml", "source": CHATML, "expect": "chatml", "system": ""},
        {"name": "qwen2.5", "source": QWEN25, "expect": "qwen2",
         "system": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."},
        {"name": "smollm2", "source": SMOLLM2, "expect": "chatml",
         "system": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
        {"name": "mistral", "source": MISTRAL, "expect": "mistral", "system": ""},
        {"name": "deepseek_r1", "source": DEEPSEEK_R1, "expect": "deepseek_r1", "system": ""},
        {"name": "gemma3", "source": GEMMA3, "expect": "gemma", "system": ""},
        {"name": "llama2-chat", "source": LLAMA2_CHAT, "expect": "", "system": ""},
        {"name": "unknown", "source": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
         "expect": "", "system": ""},
    ]
    text_cases = [{"tokenizer": tok, "text": t, "ids": tokenizers[tok].encode(t, add_special_tokens=False).ids}
                  for tok in ("llama3", "qwen3") for t in TEXTS]

    _write_json(os.path.join(out, "cases.json"),
                {"conversations": CONVERSATIONS, "tokenizers": tokenizer_paths, "cases": cases, "detect": detect,
                 "text_cases": text_cases})
    print(f"refs_chat: {len(cases)} rendered cases over {len(TEMPLATES)} templates", flush=True)
