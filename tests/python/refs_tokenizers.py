"""Tokenizer references: a deterministic > 1 MB corpus and, for every tokenizer, the ids and decoded text
produced by the Hugging Face `tokenizers` library (tokenizer.json files, SmolLM2's GGUF vocabulary) and by
the `sentencepiece` library (.model files).

Writes under <out>/tokenizers/:
  corpus.bin           documents: u32 count, then per document u32 length + UTF-8 bytes
  <name>.ref.bin       u32 stride (documents 0, stride, 2*stride... are covered), u32 count, then
                       per document: ids (no special tokens), ids (add_special_tokens=True),
                       decode(ids), decode(ids_special, skip_special_tokens=True); then random id
                       sequences with decode(seq) and decode(seq, skip_special_tokens=True).
                       Each id list is u32 count + int32 ids; each string u32 length + bytes, length
                       0xFFFFFFFF meaning "not checked".
  manifest.json        tokenizer name -> source file, loader, special ids and token probes
  synth_*.json         small tokenizer.json files built here with the components the real files do not
                       use (Metaspace, Split behaviours, lstrip/rstrip/single_word/normalized added
                       tokens, Lowercase/NFKC/Strip/Replace normalizers, Bert/Template post-processors...),
                       with references on every 5th document
  llama2_gguf_vocab.json    Llama-2 SentencePiece vocabulary as a GGUF "llama" vocabulary
  smollm2_gguf_vocab.json   SmolLM2's GGUF vocabulary (tokenizer.ggml.*), when the GGUF file exists
                            ($MLAFORGE_SMOLLM2_GGUF, default ~/.cache/mlaforge/models, see default_model.py);
                            its reference is an HF tokenizer built from that vocabulary and merges with
                            SmolLM2's tokenizer.json pre-tokenizer (Digits(individual) + ByteLevel)

SentencePiece references: the library does not recognise control tokens written in text, while
transformers' LlamaTokenizer and our tokenizer do; the reference therefore splits the text on <unk>, <s>
and </s> (leftmost-longest) and encodes each chunk with sentencepiece, the way HF's legacy Llama
tokenizer does. Decoding is checked against sentencepiece's decode of the ids without control tokens.
"""
from default_model import find_default_model
import json
import os
import random
import struct
import time
from array import array

CORPUS_SEED = 20240611
NOT_CHECKED = 0xFFFFFFFF


SPECIAL_STRINGS = [
    "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<s>", "</s>", "<unk>", "<|endoftext|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|reserved_special_token_5|>", "<repo_name>", "<file_sep>",
    # near misses and adjacency
    "<|im_start", "<thin k>", "</think", "< s>", "<<s>>", "<s><s>", "<|im_end|><|im_start|>", "<think></think>",
    "<|endoftext|>\n", " <s> ", "<|im_start|>\n", "<0x41>", "<0x0A>",
]


# ----------------------------------------------------------------------------------------- corpus --
def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _rand_chars(rng, ranges, n):
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def _sentences(stories, rng, k):
    return " ".join(rng.choice(stories) for _ in range(k))


def build_corpus(assets_dir):
    rng = random.Random(CORPUS_SEED)
    docs = []

    # English prose: TinyStories paragraphs grouped by 3 (keeps blank lines inside documents).
    with open(os.path.join(assets_dir, "text/tinystories_val_part1.txt"), encoding="utf-8") as f:
        paragraphs = [p for p in f.read().split("\n\n") if p.strip()]
    for i in range(0, len(paragraphs), 3):
        docs.append("\n\n".join(paragraphs[i:i + 3]))
    stories = [s.strip() for p in paragraphs[:2000] for s in p.split(". ") if len(s.strip().split(" ")) >= 3]
    with open(os.path.join(assets_dir, "text/cs336_tinystories_sample.txt"), encoding="utf-8") as f:
        docs.extend(d for d in f.read().split("<|endoftext|>") if d.strip())
        f.seek(0)
        docs.append(f.read())  # whole file, with the special-token separators in it

    # Long reasoning with math / LaTeX / code, and math problems with solutions.
    sky = _read_jsonl(os.path.join(assets_dir, "reasoning/skythought/Sky-T1-math-correct-5K-27B_aime24.jsonl"))
    sky += _read_jsonl(os.path.join(assets_dir, "reasoning/skythought/Sky-T1-math-correct-5K-27B_amc23.jsonl"))
    budget = 380_000
    for rec in sky:
        text = rec["code"][0]
        if budget <= 0:
            break
        text = text[: min(len(text), 40_000)]
        docs.append(text)
        budget -= len(text.encode("utf-8"))
    limo = _read_jsonl(os.path.join(assets_dir, "reasoning/math_eval/limo_eval_math_test.jsonl"))
    for rec in limo[:260]:
        docs.append(rec["problem"] + "\n\n" + rec.get("solution", "") + "\n\nAnswer: $\\boxed{" + str(rec["answer"]) + "}$")

    # Chat transcripts with special tokens in the middle of text.
    for _ in range(120):
        think = _sentences(stories, rng, rng.randint(1, 6))
        doc = (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
               f"{_sentences(stories, rng, rng.randint(1, 3))}<|im_end|>\n<|im_start|>assistant\n<think>\n{think}\n"
               f"</think>\n\n{_sentences(stories, rng, 2)}<|im_end|>\n")
        if rng.random() < 0.5:
            doc = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + doc +
                   "<|eot_id|><s>[INST] " + rng.choice(stories) + " [/INST]</s>")
        docs.append(doc)
    for _ in range(150):
        words = _sentences(stories, rng, 2).split(" ")
        for _ in range(rng.randint(1, 5)):
            pos = rng.randint(0, len(words))
            sep = rng.choice(["", " ", "\n", "  "])
            words.insert(pos, sep + rng.choice(SPECIAL_STRINGS) + rng.choice(["", " ", "\n"]))
        docs.append(" ".join(words) if rng.random() < 0.7 else "".join(words))

    # CJK, kana, Hangul with CJK punctuation and some ASCII.
    cjk = [(0x4E00, 0x9FFF)] * 6 + [(0x3040, 0x309F), (0x30A0, 0x30FF), (0xAC00, 0xD7A3), (0x3400, 0x4DBF)]
    punct = "，。！？「」『』、：；（）《》…・ー"
    for _ in range(110):
        parts = []
        for _ in range(rng.randint(20, 120)):
            r = rng.random()
            if r < 0.7:
                parts.append(_rand_chars(rng, cjk, rng.randint(1, 6)))
            elif r < 0.85:
                parts.append(rng.choice(punct))
            elif r < 0.95:
                parts.append(" " + rng.choice(stories).split(" ")[0] + " ")
            else:
                parts.append(str(rng.randint(0, 99999)))
        docs.append("".join(parts))

    # Emoji: singles, skin tones, ZWJ families, flags, keycaps, variation selectors.
    emoji_ranges = [(0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6C5), (0x1F900, 0x1F9FF), (0x2600, 0x26FF)]
    specials = ["👨‍👩‍👧‍👦", "👍🏽", "👩🏿‍💻", "🇺🇸", "🇯🇵", "🏳️‍🌈", "1️⃣", "#️⃣", "❤️", "☺️", "🤷‍♂️", "🧑🏻‍🤝‍🧑🏾"]
    for _ in range(70):
        parts = []
        for _ in range(rng.randint(10, 80)):
            r = rng.random()
            if r < 0.4:
                parts.append(_rand_chars(rng, emoji_ranges, rng.randint(1, 4)))
            elif r < 0.6:
                parts.append(rng.choice(specials))
            elif r < 0.9:
                parts.append(" " + " ".join(rng.choice(stories).split(" ")[:rng.randint(1, 5)]) + " ")
            else:
                parts.append(rng.choice(["!", "!!", "?", "...", "\n", " "]))
        docs.append("".join(parts))

    # Other scripts, combining marks (decomposed forms: NFC matters for Qwen), symbols.
    script_ranges = [(0x0400, 0x04FF), (0x0370, 0x03FF), (0x0600, 0x06FF), (0x05D0, 0x05EA), (0x0900, 0x097F),
                     (0x0E00, 0x0E5B), (0x0530, 0x058F), (0x10A0, 0x10FF), (0x1200, 0x137F), (0x0B80, 0x0BFF),
                     (0x1E00, 0x1EFF), (0x2200, 0x22FF), (0x2190, 0x21FF), (0x2500, 0x257F), (0x20A0, 0x20C0),
                     (0x0100, 0x024F), (0x1100, 0x11FF), (0x0300, 0x036F), (0xFF00, 0xFFEF), (0x1D400, 0x1D7FF)]
    for _ in range(110):
        parts = []
        for _ in range(rng.randint(10, 60)):
            r = rng.random()
            if r < 0.6:
                parts.append(_rand_chars(rng, script_ranges, rng.randint(1, 9)))
            elif r < 0.75:
                base = rng.choice("aeiouAEIOUnNcCsSzZ")
                parts.append(base + _rand_chars(rng, [(0x0300, 0x036F)], rng.randint(1, 3)))
            else:
                parts.append(rng.choice([" ", "  ", ", ", ". ", "\n", " - ", "'s ", "'LL "]))
        docs.append("".join(parts))
    docs.append("Ａｌｐｈａ ｏｎｅ ﬁﬂ ǅ ǈ Ω Å ﬀ ℌ ℍ ⅓ ① ㍿ ㈱ é é ñ ñ 한국어 한국어 Ä Ä")

    # Whitespace of every kind, in runs.
    spaces = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r", " \n", "\n ", " \t\n", "\u00a0", "\u1680",
              "\u2000", "\u2003", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\x85",
              "\x0b", "\x0c", "\u200b", "\ufeff", "\u180e", "\u200c", "\u200d"]
    for _ in range(140):
        parts = []
        for _ in range(rng.randint(5, 60)):
            r = rng.random()
            if r < 0.5:
                parts.append("".join(rng.choice(spaces) for _ in range(rng.randint(1, 8))))
            elif r < 0.6:
                parts.append(" " * rng.randint(1, 40))
            else:
                parts.append(rng.choice(rng.choice(stories).split(" ")))
        docs.append("".join(parts))
    docs += [" ", "  ", "\n", "\t", " \n ", "\n\n\n", " " * 1000, "\t" * 300, "\n" * 200, " \t" * 100, "\r\n" * 50,
             "   leading", "trailing   ", "\u3000\u3000x\u00a0\u00a0y  \n"]

    # Numbers.
    digit_sets = ["0123456789", "٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹", "०१२३४५६७८९", "０１２３４５６７８９", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗",
                  "²³¹⁴⁵", "½¾⅓⅔⅛", "ⅠⅡⅢⅣⅫⅬ", "①②③④⑩", "๐๑๒๓", "᠐᠑᠒"]
    for _ in range(90):
        parts = []
        for _ in range(rng.randint(5, 40)):
            r = rng.random()
            if r < 0.4:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 30))))
            elif r < 0.55:
                parts.append(f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 8)}f}")
            elif r < 0.65:
                parts.append(f"{rng.randint(1, 999)},{rng.randint(0, 999):03d},{rng.randint(0, 999):03d}")
            elif r < 0.8:
                ds = rng.choice(digit_sets)
                parts.append("".join(rng.choice(ds) for _ in range(rng.randint(1, 12))))
            else:
                parts.append(rng.choice([" ", "+", "-", "*", "/", "=", "x", "%", "$", "€", "e-", "E+", "ab", "_"]))
            parts.append(rng.choice(["", " ", " ", ", "]))
        docs.append("".join(parts))
    docs.append("9" * 500)
    docs.append("3.14159265358979323846264338327950288419716939937510" * 5)

    # Contractions and case folding in the regexes.
    contractions = ["don't", "DON'T", "Don'T", "I'm", "I'M", "we'll", "WE'LL", "it's", "IT'S", "you're", "YOU'RE",
                    "they've", "THEY'VE", "he'd", "HE'D", "'s", "'S", "'t", "'T", "'re", "'Re", "'ll", "'lL", "'d",
                    "it’s", "don’t", "'ſ", "'ſt", "'K", "o'clock", "rock'n'roll", "''", "'''", "' s", "'\n", "'1",
                    "İstanbul", "STRASSE", "straße", "ǅemal", "'ǅ", "ΣΑΣ", "ﬁle"]
    for _ in range(60):
        docs.append(" ".join(rng.choice(contractions + stories[:50]) for _ in range(rng.randint(5, 60))))

    # Code and markup.
    code = [
        "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
        "#include <stdio.h>\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
        "for (let i = 0; i < arr.length; ++i) { console.log(`item ${i}: ${arr[i]}`); }",
        "<html>\n  <body class=\"main\">\n    <p>Hello &amp; welcome!</p>\n  </body>\n</html>",
        "{\"key\": [1, 2.5, true, null], \"nested\": {\"a\": \"b\\u00e9\"}}",
        "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name HAVING COUNT(*) > 1;",
        "https://example.com/path/to/page?query=a+b&x=%20y#frag  mailto:someone@example.org",
        "C:\\Users\\name\\Documents\\file.txt  /usr/local/lib/python3.11/site-packages/",
        "^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@(?:[a-z0-9-]+\\.)+[a-z]{2,}$",
        "| col A | col B |\n|-------|-------|\n| 1     | **bold** _it_ `code` |\n",
        "$$\\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}$$ and \\begin{align} a &= b \\\\ c &\\le d \\end{align}",
        "    \n        \n\t\n    x = [\n        1,\n        2,\n    ]\n",
        "0x7fffffff 0b1010 1e-9 -0.0 NaN inf 0o777 1_000_000 123abc abc123 a1b2c3",
    ]
    for _ in range(110):
        parts = [rng.choice(code) for _ in range(rng.randint(1, 6))]
        if rng.random() < 0.3:
            parts.append("".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
                                 for _ in range(rng.randint(50, 400))) + "==")
        docs.append(rng.choice(["\n", "\n\n", " "]).join(parts))

    # Edge cases.
    docs += ["", "a", "A", "'", "''", "▁", "▁▁hello ▁world▁", "Ġhello Ċ", "\x00", "\x00\x01\x02\x1b[0m\x7f",
             "".join(chr(c) for c in range(1, 32)), "".join(chr(c) for c in range(0x80, 0xA0)),
             "\ue000\uf8ff\U000f0000\U0010fffd", "\ufdd0\ufffe\uffff\U0010ffff", "\u0301abc", "a\u200db\u200cc",
             "\u202eevil\u202c \u200fRTL\u200e", "\ufeffBOM at start", "\ufffd replacement \ufffd\ufffd",
             "a" * 2000, "ab" * 1000, "😀" * 300, "!" * 300, "-" * 500, "=" * 257, "é" * 400, "中" * 600,
             "x" + " " * 5000 + "y", "Ⓐⓑⓒ ⒜⒝", "\U0001F1E6\U0001F1E7\U0001F1E8", "a\u0308\u0301\u0323",
             "Ĳ ĳ Ŀ ŀ ŉ ǰ ΐ ẞ", "ﷺ ﷻ ﷽", "ꙮ 𒐫 𒈙", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕌𝕟𝕚𝕔𝕠𝕕𝕖",
             "<0x41><0xE4><0xB8>", "<unk><unk> <s></s><s>", "<|im_start|>", "<|im_start|><|im_end|>",
             "<think>\n\n</think>\n\n", "text<|endoftext|>", "<|endoftext|>text"]
    # Characters assigned in Unicode 14.0-15.1 (and one Unicode 16 symbol). Letters and digits new in
    # Unicode 16 (e.g. Garay digits U+10D40) are left out: the system PCRE2/ICU tables are Unicode 15, while
    # HF's Oniguruma knows Unicode 16, so such characters split differently (a documented limitation).
    docs.append("New: \U0001FAE8 \U0001F6DC \u0CF3 \U00011F00\U00011F01 \U0001E4D0\U0001E4D1 \U00031350 "
                "\U0002EBF0 \U0001CC00 \u1DFA \U0001E290")

    # Strings the synthetic tokenizers add as tokens (lstrip/rstrip/single_word/normalized).
    for _ in range(40):
        words = _sentences(stories, rng, 2).split(" ")
        for _ in range(rng.randint(1, 4)):
            tok = rng.choice(["<mask>", "[WORD]", "[SEP]", "hello world", "Hello World", "HELLO  WORLD", "[WORD]s"])
            pad_l = rng.choice(["", " ", "  ", "\n "])
            pad_r = rng.choice(["", " ", "  ", " \n"])
            words.insert(rng.randint(0, len(words)), pad_l + tok + pad_r)
        docs.append(rng.choice([" ", ""]).join(words))
    docs += ["a <mask> b", "a<mask>b", "  <mask>  x", " <mask>", "<mask> ", "x [WORD] y", "x[WORD]y", "[WORD]",
             "é[WORD]", "[WORD]_", "hello world", "hello worldly", "say hello world!", "ΣΑΣ ΟΔΟΣ Σ", "İI", "``quoted''"]
    for _ in range(5):  # every synthetic tokenizer sees these (stride 5)
        docs += docs[-16:]

    # Long documents: many stories concatenated (tests long words for SentencePiece-style BPE).
    for i in range(12):
        docs.append("\n\n".join(paragraphs[200 + 40 * i: 200 + 40 * i + 40]))

    return docs


def write_corpus(path, docs):
    with open(path, "wb") as f:
        f.write(struct.pack("<I", len(docs)))
        for d in docs:
            b = d.encode("utf-8")
            f.write(struct.pack("<I", len(b)))
            f.write(b)


# ------------------------------------------------------------------------------------- references --
class RefWriter:
    def __init__(self, path):
        self.f = open(path, "wb")

    def ids(self, ids):
        self.f.write(struct.pack("<I", len(ids)))
        self.f.write(array("i", ids).tobytes())

    def text(self, s):
        if s is None:
            self.f.write(struct.pack("<I", NOT_CHECKED))
            return
        b = s.encode("utf-8")
        self.f.write(struct.pack("<I", len(b)))
        self.f.write(b)

    def u32(self, v):
        self.f.write(struct.pack("<I", v))

    def close(self):
        self.f.close()


def random_sequences(rng, vocab_size, corpus_ids, byte_ids, n=300):
    """Id sequences that stress decoding: windows of real encodings (cut inside multi-byte characters),
    random byte tokens, and uniformly random ids."""
    seqs = []
    nonempty = [ids for ids in corpus_ids if len(ids) > 2]
    for i in range(n):
        kind = i % 3
        if kind == 0:
            ids = rng.choice(nonempty)
            a = rng.randrange(len(ids))
            b = min(len(ids), a + rng.randint(1, 12))
            seqs.append(list(ids[a:b]))
        elif kind == 1 and byte_ids:
            seqs.append([rng.choice(byte_ids) for _ in range(rng.randint(1, 8))])
        else:
            seqs.append([rng.randrange(vocab_size) for _ in range(rng.randint(1, 12))])
    return seqs


def hf_reference(name, tk, docs, out_dir, rng, byte_ids, stride=1):
    docs = docs[::stride]
    enc = [e.ids for e in tk.encode_batch(docs, add_special_tokens=False)]
    enc_s = [e.ids for e in tk.encode_batch(docs, add_special_tokens=True)]
    dec = tk.decode_batch(enc, skip_special_tokens=False)
    dec_s = tk.decode_batch(enc_s, skip_special_tokens=True)
    w = RefWriter(os.path.join(out_dir, f"{name}.ref.bin"))
    w.u32(stride)
    w.u32(len(docs))
    for i in range(len(docs)):
        w.ids(enc[i])
        w.ids(enc_s[i])
        w.text(dec[i])
        w.text(dec_s[i])
    seqs = random_sequences(rng, tk.get_vocab_size(with_added_tokens=True), enc, byte_ids)
    w.u32(len(seqs))
    for s in seqs:
        w.ids(s)
        w.text(tk.decode(s, skip_special_tokens=False))
        w.text(tk.decode(s, skip_special_tokens=True))
    w.close()
    return sum(len(e) for e in enc)


def split_leftmost_longest(text, literals):
    """[(chunk, None) | (None, literal)] like HF's added-token split."""
    out, pos, start = [], 0, 0
    by_len = sorted(literals, key=len, reverse=True)
    while pos < len(text):
        hit = next((lit for lit in by_len if text.startswith(lit, pos)), None)
        if hit is None:
            pos += 1
            continue
        if pos > start:
            out.append((text[start:pos], None))
        out.append((None, hit))
        pos += len(hit)
        start = pos
    if start < len(text):
        out.append((text[start:], None))
    return out


def sp_reference(name, sp, docs, out_dir, rng):
    n = sp.get_piece_size()
    specials = {sp.id_to_piece(i): i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)}
    control = {i for i in range(n) if sp.is_control(i)}
    bos = sp.bos_id()
    w = RefWriter(os.path.join(out_dir, f"{name}.ref.bin"))
    w.u32(1)
    w.u32(len(docs))
    all_ids = []
    for d in docs:
        ids = []
        for chunk, lit in split_leftmost_longest(d, list(specials)):
            ids += sp.encode(chunk) if lit is None else [specials[lit]]
        all_ids.append(ids)
        visible = [i for i in ids if i not in control]
        text = sp.decode(visible)
        w.ids(ids)
        w.ids(([bos] if bos >= 0 else []) + ids)
        w.text(text if len(visible) == len(ids) else None)  # decode(ids): checked when no control tokens
        w.text(text)                                        # decode(bos + ids, skip_special=True)
    byte_ids = [i for i in range(n) if sp.is_byte(i)]
    seqs = random_sequences(rng, n, all_ids, byte_ids)
    w.u32(len(seqs))
    for s in seqs:
        s = [i for i in s if i not in control] or [byte_ids[0] if byte_ids else 3]
        text = sp.decode(s)
        w.ids(s)
        w.text(text)
        w.text(text)
    w.close()
    return sum(len(e) for e in all_ids)


def sp_model_types(path):
    """Piece types from a SentencePiece .model (protobuf read by hand; no protobuf module needed)."""
    data = open(path, "rb").read()

    def varint(buf, i):
        v, shift = 0, 0
        while True:
            b = buf[i]
            i += 1
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v, i
            shift += 7

    types, i = [], 0
    while i < len(data):
        key, i = varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = varint(data, i)
            if field == 1:
                msg, j, t = data[i:i + length], 0, 1
                while j < len(msg):
                    k, j = varint(msg, j)
                    if k & 7 == 0:
                        v, j = varint(msg, j)
                        if k >> 3 == 3:
                            t = v
                    elif k & 7 == 5:
                        j += 4
                    elif k & 7 == 2:
                        ln, j = varint(msg, j)
                        j += ln
                    else:
                        j += 8
                types.append(t)
            i += length
    return types


def synthetic_tokenizers(docs, out, assets_dir, rng, manifest):
    """tokenizer.json files using the components the four real files do not, saved by the HF library."""
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers,
                            processors)
    llama2 = os.path.join(assets_dir, "tokenizers/llama2/tokenizer.json")
    llama3 = os.path.join(assets_dir, "tokenizers/llama3/tokenizer.json")
    built = []
    if os.path.exists(llama2):
        tk = Tokenizer.from_file(llama2)
        tk.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"[ \t]{3,}"), "  "),
                                              normalizers.Strip(left=False, right=True)])
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        tk.decoder = decoders.Sequence([decoders.ByteFallback(),
                                        decoders.Metaspace(replacement="▁", prepend_scheme="first")])
        tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
        tk.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False)])
        tk.add_tokens([AddedToken("[WORD]", single_word=True, normalized=False),
                       AddedToken("hello world", normalized=True), AddedToken("<think>", normalized=False)])
        built.append(("synth_metaspace", tk))

        tk = Tokenizer.from_file(llama2)
        tk.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Replace("``", '"'),
                                              normalizers.Replace("''", '"')])
        tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tk.decoder = None
        tk.post_processor = processors.BertProcessing(("</s>", 2), ("<s>", 1))
        tk.add_special_tokens([AddedToken("[SEP]", rstrip=True, normalized=False)])
        built.append(("synth_whitespace", tk))
    if os.path.exists(llama3):
        tk = Tokenizer.from_file(llama3)
        tk.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Strip(left=True, right=False)])
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"[\r\n]+"), behavior="merged_with_previous"),
            pre_tokenizers.Split(" ", behavior="merged_with_next"),
            pre_tokenizers.Split(Regex(r"\p{P}+"), behavior="contiguous", invert=True),
            pre_tokenizers.Split(Regex(r"x+"), behavior="removed"),
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)])
        tk.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A <|end_of_text|>",
                                          special_tokens=[("<|begin_of_text|>", 128000), ("<|end_of_text|>", 128001)])])
        tk.add_special_tokens([AddedToken("[SEP]", rstrip=True, lstrip=True, normalized=False),
                               AddedToken("<mask>", single_word=True, normalized=False)])
        tk.add_tokens([AddedToken("hello world", normalized=True)])
        built.append(("synth_bytelevel", tk))
    for name, tk in built:
        start = time.time()
        path = os.path.join(out, f"{name}.json")
        tk.save(path)
        tk = Tokenizer.from_file(path)
        byte_ids = [i for i in (tk.token_to_id(f"<0x{b:02X}>") for b in range(0x80, 0x100)) if i is not None]
        n_ids = hf_reference(name, tk, docs, out, rng, byte_ids, stride=5)
        manifest["tokenizers"][name] = {"source": f"{name}.json", "loader": "json_test_data", "tokens": n_ids,
                                        "vocab_size": tk.get_vocab_size(with_added_tokens=True),
                                        "probes": probes(tk.token_to_id, ["<mask>", "[WORD]", "hello world", "[SEP]"])}
        print(f"refs_tokenizers: {name} {n_ids} ids in {time.time() - start:.1f}s", flush=True)


def probes(get_id, tokens):
    return [[t, get_id(t)] for t in tokens if get_id(t) is not None]


def main(out_dir, assets_dir):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from tokenizers import Tokenizer, AddedToken, decoders, models, pre_tokenizers
    import sentencepiece as spm

    out = os.path.join(out_dir, "tokenizers")
    os.makedirs(out, exist_ok=True)
    needed = ["text/tinystories_val_part1.txt", "text/cs336_tinystories_sample.txt",
              "reasoning/skythought/Sky-T1-math-correct-5K-27B_aime24.jsonl",
              "reasoning/skythought/Sky-T1-math-correct-5K-27B_amc23.jsonl",
              "reasoning/math_eval/limo_eval_math_test.jsonl"]
    missing = [n for n in needed if not os.path.exists(os.path.join(assets_dir, n))]
    if missing:
        print(f"refs_tokenizers: assets missing ({', '.join(missing)}): no tokenizer references", flush=True)
        return
    docs = build_corpus(assets_dir)
    write_corpus(os.path.join(out, "corpus.bin"), docs)
    total = sum(len(d.encode("utf-8")) for d in docs)
    print(f"refs_tokenizers: corpus {len(docs)} documents, {total} bytes", flush=True)
    manifest = {"corpus_documents": len(docs), "corpus_bytes": total, "tokenizers": {}}
    rng = random.Random(CORPUS_SEED + 1)

    def byte_level_single_byte_ids(tk):
        table = {}
        # GPT-2 byte characters: the 188 printable Latin-1 bytes map to themselves, the rest to U+0100...
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
        cs, extra = list(bs), 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + extra)
                extra += 1
        for b, c in zip(bs, cs):
            table[b] = chr(c)
        return [i for i in (tk.token_to_id(table[b]) for b in range(0x80, 0x100)) if i is not None]

    for name in ("llama3", "qwen3", "llama2"):
        path = os.path.join(assets_dir, "tokenizers", name, "tokenizer.json")
        if not os.path.exists(path):
            print(f"refs_tokenizers: {path} absent, skipping {name}")
            continue
        start = time.time()
        tk = Tokenizer.from_file(path)
        byte_ids = byte_level_single_byte_ids(tk) if name != "llama2" else \
            [tk.token_to_id(f"<0x{b:02X}>") for b in range(0x80, 0x100)]
        n_ids = hf_reference(name, tk, docs, out, rng, byte_ids)
        manifest["tokenizers"][name] = {
            "source": f"tokenizers/{name}/tokenizer.json", "loader": "json", "tokens": n_ids,
            "vocab_size": tk.get_vocab_size(with_added_tokens=True),
            "probes": probes(tk.token_to_id, ["<|begin_of_text|>", "<|im_start|>", "<think>", "<s>", "</s>", "<unk>",
                                              "Ġthe", "▁the", "<0x0A>", "hello", "Hello"]),
        }
        print(f"refs_tokenizers: {name} {n_ids} ids in {time.time() - start:.1f}s", flush=True)

    for name, rel in (("llama2_sp", "tokenizers/llama2-sentencepiece/tokenizer.model"),
                      ("tok512", "models/stories260K/tok512.model")):
        path = os.path.join(assets_dir, rel)
        if not os.path.exists(path):
            print(f"refs_tokenizers: {path} absent, skipping {name}")
            continue
        start = time.time()
        sp = spm.SentencePieceProcessor(model_file=path)
        n_ids = sp_reference(name, sp, docs, out, rng)
        manifest["tokenizers"][name] = {
            "source": rel, "loader": "sentencepiece", "tokens": n_ids, "vocab_size": sp.get_piece_size(),
            "bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(),
            "probes": probes(lambda t: (sp.piece_to_id(t) if sp.id_to_piece(sp.piece_to_id(t)) == t else None),
                             ["<s>", "</s>", "<unk>", "▁the", "<0x0A>", "▁▁"]),
        }
        print(f"refs_tokenizers: {name} {n_ids} ids in {time.time() - start:.1f}s", flush=True)
        if name == "llama2_sp":
            # The same vocabulary as a GGUF "llama" vocabulary (what llama.cpp's converter stores).
            types = sp_model_types(path)
            vocab = {"model": "llama", "pre": "default",
                     "tokens": [sp.id_to_piece(i) for i in range(sp.get_piece_size())],
                     "scores": [sp.get_score(i) for i in range(sp.get_piece_size())],
                     "token_types": types, "merges": [], "bos": sp.bos_id(), "eos": sp.eos_id(),
                     "unk": sp.unk_id(), "pad": None, "add_bos": True, "add_space_prefix": True}
            with open(os.path.join(out, "llama2_gguf_vocab.json"), "w", encoding="utf-8") as f:
                json.dump(vocab, f, ensure_ascii=False)

    synthetic_tokenizers(docs, out, assets_dir, rng, manifest)

    gguf_path = find_default_model() or "(default model)"
    if os.path.exists(gguf_path):
        start = time.time()
        import gguf
        reader = gguf.GGUFReader(gguf_path)

        def field(key, default=None):
            f = reader.fields.get(key)
            return default if f is None else f.contents()

        vocab = {"model": field("tokenizer.ggml.model"), "pre": field("tokenizer.ggml.pre", "default"),
                 "tokens": field("tokenizer.ggml.tokens"), "scores": field("tokenizer.ggml.scores", []),
                 "token_types": field("tokenizer.ggml.token_type"), "merges": field("tokenizer.ggml.merges"),
                 "bos": field("tokenizer.ggml.bos_token_id"), "eos": field("tokenizer.ggml.eos_token_id"),
                 "unk": field("tokenizer.ggml.unknown_token_id"), "pad": field("tokenizer.ggml.padding_token_id"),
                 "add_bos": bool(field("tokenizer.ggml.add_bos_token", False)),
                 "add_space_prefix": bool(field("tokenizer.ggml.add_space_prefix", True))}
        with open(os.path.join(out, "smollm2_gguf_vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        # Reference: HF tokenizers configured like SmolLM2's tokenizer.json (Digits + ByteLevel).
        tokens = vocab["tokens"]
        bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                         merges=[tuple(m.split(" ", 1)) for m in vocab["merges"]])
        tk = Tokenizer(bpe)
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        tk.decoder = decoders.ByteLevel()
        types = vocab["token_types"]
        tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                               for i in range(len(tokens)) if types[i] == 3])
        tk.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                       for i in range(len(tokens)) if types[i] == 4])
        if vocab["add_bos"]:
            raise RuntimeError("SmolLM2 GGUF unexpectedly sets add_bos; extend the reference")
        n_ids = hf_reference("smollm2", tk, docs, out, rng, byte_level_single_byte_ids(tk))
        manifest["tokenizers"]["smollm2"] = {
            "source": gguf_path, "loader": "gguf_json", "vocab_json": "smollm2_gguf_vocab.json", "tokens": n_ids,
            "vocab_size": len(tokens), "probes": probes(tk.token_to_id, ["<|im_start|>", "<|endoftext|>", "Ġthe"]),
        }
        print(f"refs_tokenizers: smollm2 {n_ids} ids in {time.time() - start:.1f}s", flush=True)
    else:
        print(f"refs_tokenizers: {gguf_path} absent (set MLAFORGE_SMOLLM2_GGUF), skipping smollm2", flush=True)

    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    import sys
    main(sys.argv[1], sys.argv[2])
