"""Dataset files written by the real libraries (pyarrow for Parquet, json for JSONL), read back by
tests/core/dataset_test.cpp, with what the C++ readers must produce.

Writes out_dir/datasets/:
  *.parquet, *.jsonl, *.json, *.txt         inputs: several row groups, list<struct> messages, ShareGPT with a
                                            system column, prompt/response, nulls, many Arrow types
  hf/data/{train-0000{0,1}-of-00002,test-00000-of-00001}.parquet   a Hugging Face dataset folder
  plain/{a,b}.jsonl                         a folder with no split names
  truncated.parquet, corrupt_pages.parquet  damaged copies of messages.parquet
  bad_*.jsonl, bad_rows.parquet             malformed rows, one problem each
  expected.json                             what the C++ side must read (see its keys below)

expected.json:
  rows:      [{path, columns, rows}]          read_rows(path, columns) -> rows (all values, JSON)
  examples:  [{path, options, examples, skipped}]  read_examples(path, options) -> [{source, is_text, text, messages}]
  documents: [{path, column, documents}]      read_text_documents(path, column)
  row_errors:[{path, format, options, results}] row_to_example per row -> "ok" or the error's substrings
  errors:    [{path, options, error}]         read_examples(path, options) throws, message contains each substring
Sources are relative to out_dir/datasets.
"""
import datetime
import decimal
import json
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


# Conversations of the shape R1-distillation SFT sets have: a <think> block, LaTeX, unicode, newlines.
MESSAGES_ROWS = [
    msgs(("user", "What is 2+2?"), ("assistant", "<think>\n2+2 is 4.\n</think>\n\nThe answer is $4$.")),
    msgs(("system", "You are a careful mathematician."), ("user", "Solve $x^2=9$."),
         ("assistant", "<think>x = ±3</think>\n$x=\\pm 3$")),
    msgs(("user", "Say hi in Japanese and add an emoji."), ("assistant", "こんにちは 😀")),
    msgs(("user", "First question"), ("assistant", "First answer"), ("user", "Follow-up?"),
         ("assistant", "Follow-up answer.\n\nWith two paragraphs.")),
    msgs(("user", "Tabs\tand \"quotes\" and \\ backslashes"), ("assistant", "Handled: \t \" \\")),
    msgs(("user", "Empty reply allowed?"), ("assistant", "")),
    msgs(("user", "Last one, in its own row group"), ("assistant", "Done.")),
]


def write_parquet(table, path, **kwargs):
    tmp = f"{path}.{os.getpid()}.tmp"
    pq.write_table(table, tmp, **kwargs)
    os.replace(tmp, path)


def write_text(path, text, mode="w"):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, mode, encoding=None if "b" in mode else "utf-8", newline=None if "b" in mode else "") as f:
        f.write(text)
    os.replace(tmp, path)


def example(source, messages=None, text=None):
    if text is not None:
        return {"source": source, "is_text": True, "text": text, "messages": []}
    return {"source": source, "is_text": False, "text": "", "messages": messages}


def jsonl(rows, blank_after=()):
    """JSON lines with blank lines after the given 0-based rows; returns (text, 1-based line numbers)."""
    lines, numbers = [], []
    for i, row in enumerate(rows):
        lines.append(json.dumps(row, ensure_ascii=False))
        numbers.append(len(lines))
        if i in blank_after:
            lines.append("   ")
            lines.append("")
    return "\n".join(lines) + "\n", numbers


def messages_table():
    n = len(MESSAGES_ROWS)
    message_type = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    return pa.table({
        "id": pa.array(range(100, 100 + n), pa.int64()),
        "messages": pa.array(MESSAGES_ROWS, message_type),
        "score": pa.array([0.5, None, 1.25, -3.0, 2.0, None, 7.5], pa.float64()),
        "tags": pa.array([["math"], None, [], ["a", None, "b"], ["x"], ["y", "z"], None], pa.list_(pa.string())),
        "meta": pa.array([{"source": "s1", "level": 1}, None, {"source": None, "level": 3},
                          {"source": "s4", "level": None}, {"source": "s5", "level": 5},
                          {"source": "s6", "level": 6}, {"source": "s7", "level": 7}],
                         pa.struct([("source", pa.string()), ("level", pa.int32())])),
        "flag": pa.array([True, False, None, True, False, True, False], pa.bool_()),
    })


def types_table():
    """Every Arrow type the row reader converts, with the JSON each value must become."""
    cols, expected = {}, {}

    def add(name, array, values=None):
        cols[name] = array
        expected[name] = array.to_pylist() if values is None else values

    add("i8", pa.array([-128, None, 127], pa.int8()))
    add("i16", pa.array([-32768, 5, None], pa.int16()))
    add("i32", pa.array([None, -7, 2**31 - 1], pa.int32()))
    add("i64", pa.array([-(2**63), 2**62, None], pa.int64()))
    add("u8", pa.array([0, 255, None], pa.uint8()))
    add("u32", pa.array([2**32 - 1, None, 1], pa.uint32()))
    add("u64", pa.array([2**63 + 5, 0, None], pa.uint64()))
    add("f16", pa.array([0.5, None, -2.0], pa.float16()), [0.5, None, -2.0])
    add("f32", pa.array([1.5, -0.25, None], pa.float32()))
    add("f64", pa.array([3.14159, None, -1e-300], pa.float64()))
    add("b", pa.array([True, None, False], pa.bool_()))
    add("s", pa.array(["plain", "", None], pa.string()))
    add("ls", pa.array(["large", None, "ünïcode ∑"], pa.large_string()))
    add("bin", pa.array([b"bytes", None, b""], pa.binary()), ["bytes", None, ""])
    add("dict", pa.array(["red", "green", "red"]).dictionary_encode())
    add("null", pa.array([None, None, None], pa.null()))
    add("li", pa.array([[1, None, 3], None, []], pa.list_(pa.int64())))
    add("lli", pa.array([[["a"], []], [None, ["b", "c"]], None], pa.list_(pa.list_(pa.string()))))
    add("large_list", pa.array([[1.0], [], None], pa.large_list(pa.float64())))
    add("fixed", pa.array([[1, 2], None, [5, 6]], pa.list_(pa.int32(), 2)))
    add("nested", pa.array([{"a": {"b": [1, 2]}, "c": "x"}, {"a": None, "c": None}, None],
                           pa.struct([("a", pa.struct([("b", pa.list_(pa.int64()))])), ("c", pa.string())])))
    add("map", pa.array([[("k1", 1), ("k2", None)], [], None], pa.map_(pa.string(), pa.int64())),
        [{"k1": 1, "k2": None}, {}, None])
    add("imap", pa.array([[(1, "one")], None, [(2, "two"), (3, "three")]], pa.map_(pa.int32(), pa.string())),
        [[[1, "one"]], None, [[2, "two"], [3, "three"]]])
    # Temporal and decimal values come out in Arrow's own text form (the same cast in C++ and here).
    for name, array in [
        ("date", pa.array([datetime.date(2024, 1, 2), None, datetime.date(1970, 1, 1)], pa.date32())),
        ("ts", pa.array([datetime.datetime(2024, 1, 2, 3, 4, 5, 6), None, datetime.datetime(2000, 1, 1)],
                        pa.timestamp("us"))),
        ("dec", pa.array([decimal.Decimal("1.50"), decimal.Decimal("-123.45"), None], pa.decimal128(5, 2))),
    ]:
        add(name, array, pc.cast(array, pa.string()).to_pylist())
    table = pa.table(cols)
    rows = [{name: expected[name][i] for name in cols} for i in range(table.num_rows)]
    return table, rows


def main(out_dir: str, assets_dir: str) -> None:
    root = os.path.join(out_dir, "datasets")
    for sub in ["", "hf/data", "plain"]:
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    P = lambda *parts: os.path.join(root, *parts)  # noqa: E731
    exp = {"rows": [], "examples": [], "documents": [], "row_errors": [], "errors": []}

    # --- messages: list<struct<role, content>> plus columns of every common kind, 3 row groups --------
    table = messages_table()
    write_parquet(table, P("messages.parquet"), row_group_size=3, compression="zstd")
    assert pq.ParquetFile(P("messages.parquet")).num_row_groups == 3
    exp["rows"].append({"path": "messages.parquet", "columns": [], "rows": table.to_pylist()})
    exp["rows"].append({"path": "messages.parquet", "columns": ["flag", "id", "absent"],
                        "rows": table.select(["id", "flag"]).to_pylist()})
    exp["rows"].append({"path": "messages.parquet", "columns": ["absent"], "rows": [{}] * table.num_rows})
    msg_examples = [example(f"messages.parquet:row {i}", m) for i, m in enumerate(MESSAGES_ROWS)]
    exp["examples"].append({"path": "messages.parquet", "options": {}, "examples": msg_examples, "skipped": 0})
    exp["examples"].append({"path": "messages.parquet", "options": {"format": "messages", "max_examples": 4},
                            "examples": msg_examples[:4], "skipped": 0})
    with_sys = []
    for e in msg_examples:
        m = e["messages"]
        with_sys.append(dict(e, messages=m if m[0]["role"] == "system" else msgs(("system", "Be brief.")) + m))
    exp["examples"].append({"path": "messages.parquet", "options": {"system_prompt": "Be brief."},
                            "examples": with_sys, "skipped": 0})
    # The same conversations as JSONL (blank lines, a CRLF line) and as a JSON array.
    text, lines = jsonl([{"messages": m, "id": i} for i, m in enumerate(MESSAGES_ROWS)], blank_after=(1, 4))
    text = text.replace('"id": 0}\n', '"id": 0}\r\n')
    write_text(P("messages.jsonl"), text)
    exp["examples"].append({"path": "messages.jsonl", "options": {},
                            "examples": [example(f"messages.jsonl:{lines[i]}", m) for i, m in enumerate(MESSAGES_ROWS)],
                            "skipped": 0})
    write_text(P("array.json"), json.dumps([{"messages": m} for m in MESSAGES_ROWS[:3]], indent=1))
    exp["examples"].append({"path": "array.json", "options": {},
                            "examples": [example(f"array.json:[{i}]", m) for i, m in enumerate(MESSAGES_ROWS[:3])],
                            "skipped": 0})
    write_text(P("lines.json"), jsonl([{"messages": m} for m in MESSAGES_ROWS[:2]])[0])
    exp["examples"].append({"path": "lines.json", "options": {},
                            "examples": [example(f"lines.json:{i + 1}", m) for i, m in enumerate(MESSAGES_ROWS[:2])],
                            "skipped": 0})

    # --- ShareGPT: conversations [{from, value}] + a system column (string, null, empty) -----------
    share = [
        ("You are Stratos.", [("human", "Q1"), ("gpt", "A1")]),
        (None, [("user", "Q2"), ("assistant", "A2"), ("human", "Q3"), ("gpt", "A3")]),
        ("", [("system", "Inline system"), ("Human", "Q4"), ("GPT", "A4")]),
        ("Sys", [("human", "Q5"), ("function", "tool output"), ("gpt", "A5")]),
    ]
    role = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
            "function": "tool"}
    share_table = pa.table({
        "system": pa.array([s for s, _ in share], pa.string()),
        "conversations": pa.array([[{"from": f, "value": v} for f, v in c] for _, c in share],
                                  pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
        "id": pa.array(["a", "b", "c", "d"]),
    })
    write_parquet(share_table, P("sharegpt.parquet"), row_group_size=2)
    share_examples = []
    for i, (s, conv) in enumerate(share):
        m = (msgs(("system", s)) if s else []) + [{"role": role[f.lower()], "content": v} for f, v in conv]
        share_examples.append(example(f"sharegpt.parquet:row {i}", m))
    exp["examples"].append({"path": "sharegpt.parquet", "options": {}, "examples": share_examples, "skipped": 0})
    write_text(P("sharegpt.jsonl"), jsonl([{"conversations": [{"from": f, "value": v} for f, v in conv], "system": s}
                                           for s, conv in share])[0])
    exp["examples"].append({"path": "sharegpt.jsonl", "options": {"format": "sharegpt"},
                            "examples": [dict(e, source=f"sharegpt.jsonl:{i + 1}") for i, e in enumerate(share_examples)],
                            "skipped": 0})

    # --- prompt/response, with nested alternatives for path options ----------------------------------
    pr = [("What is 1+1?", "2", ["<think>1+1</think> 2", "alt"], "two"),
          ("Name a prime.", "7", ["<think>primes</think> 7"], "seven")]
    pr_table = pa.table({
        "prompt": [p for p, *_ in pr], "response": [r for _, r, *_ in pr],
        "question": [f"Q: {p}" for p, *_ in pr], "code": [c for *_, c, _ in pr],
        "meta": [{"answer": a} for *_, a in pr],
    })
    write_parquet(pr_table, P("prompt_response.parquet"))
    exp["examples"].append({"path": "prompt_response.parquet", "options": {}, "skipped": 0, "examples": [
        example(f"prompt_response.parquet:row {i}", msgs(("user", p), ("assistant", r)))
        for i, (p, r, _, _) in enumerate(pr)]})
    exp["examples"].append({"path": "prompt_response.parquet",
                            "options": {"prompt_column": "question", "response_column": "code[0]",
                                        "system_prompt": "Think step by step."}, "skipped": 0, "examples": [
        example(f"prompt_response.parquet:row {i}",
                msgs(("system", "Think step by step."), ("user", f"Q: {p}"), ("assistant", c[0])))
        for i, (p, _, c, _) in enumerate(pr)]})
    exp["examples"].append({"path": "prompt_response.parquet",
                            "options": {"format": "prompt_response", "response_column": "meta.answer"}, "skipped": 0,
                            "examples": [example(f"prompt_response.parquet:row {i}", msgs(("user", p), ("assistant", a)))
                                         for i, (p, _, _, a) in enumerate(pr)]})
    write_text(P("prompt_response.jsonl"), jsonl([{"question": f"Q: {p}", "code": c} for p, _, c, _ in pr])[0])
    # Row 2 has no code[1]: an error by default, skipped and counted with skip_malformed.
    exp["errors"].append({"path": "prompt_response.jsonl",
                          "options": {"prompt_column": "question", "response_column": "code[1]"},
                          "error": ["prompt_response.jsonl:2", "field 'code[1]'", "missing"]})
    exp["examples"].append({"path": "prompt_response.jsonl",
                            "options": {"prompt_column": "question", "response_column": "code[1]",
                                        "skip_malformed": True}, "skipped": 1,
                            "examples": [example("prompt_response.jsonl:1", msgs(("user", "Q: What is 1+1?"),
                                                                                 ("assistant", "alt")))]})

    # --- raw text for continued pre-training ----------------------------------------------------------
    docs = ["First document.\nSecond line.", "Второй документ.", "Third ∑ document with $x$."]
    write_parquet(pa.table({"text": docs, "other": ["x" * 1000] * 3}), P("text.parquet"))
    exp["rows"].append({"path": "text.parquet", "columns": ["text"], "rows": [{"text": d} for d in docs]})
    exp["examples"].append({"path": "text.parquet", "options": {}, "skipped": 0,
                            "examples": [example(f"text.parquet:row {i}", text=d) for i, d in enumerate(docs)]})
    write_text(P("text.txt"), "\n\n" + "\n\n  \n".join(docs) + "\n\n\n")
    exp["examples"].append({"path": "text.txt", "options": {}, "skipped": 0,
                            "examples": [example(f"text.txt:paragraph {i + 1}", text=d) for i, d in enumerate(docs)]})
    write_text(P("text_null.jsonl"), jsonl([{"text": docs[0]}, {"text": None}, {"text": ""}, {"text": docs[1]}])[0])
    exp["documents"] += [
        {"path": "text.parquet", "column": "text", "documents": docs},
        {"path": "text.txt", "column": "text", "documents": docs},
        {"path": "text_null.jsonl", "column": "text", "documents": [docs[0], docs[1]]},
        {"path": "prompt_response.parquet", "column": "question", "documents": [f"Q: {p}" for p, *_ in pr]},
        {"path": "messages.parquet", "column": "text",
         "documents": ["\n\n".join(t["content"] for t in m if t["content"]) for m in MESSAGES_ROWS]},
        {"path": "sharegpt.parquet", "column": "text",
         "documents": ["\n\n".join(t["content"] for t in e["messages"]) for e in share_examples]},
    ]
    exp["errors"].append({"path": "text_null.jsonl", "options": {},
                          "error": ["text_null.jsonl:2", "field 'text'", "expected a string, found null"]})

    # --- every Arrow type the reader converts ---------------------------------------------------------
    types, type_rows = types_table()
    write_parquet(types, P("types.parquet"), row_group_size=2)
    exp["rows"].append({"path": "types.parquet", "columns": [], "rows": type_rows})

    # --- a Hugging Face dataset folder: data/<split>-NNNNN-of-NNNNN.parquet ------------------------
    hf_train = [MESSAGES_ROWS[0:3], MESSAGES_ROWS[3:5]]
    hf_test = MESSAGES_ROWS[5:7]
    write_text(P("hf", "README.md"), "---\nconfigs: [{config_name: default}]\n---\nA test dataset.\n")
    for k, rows in enumerate(hf_train):
        write_parquet(pa.table({"messages": rows}), P("hf", "data", f"train-0000{k}-of-00002.parquet"))
    write_parquet(pa.table({"messages": hf_test}), P("hf", "data", "test-00000-of-00001.parquet"))
    exp["examples"].append({"path": "hf", "options": {}, "skipped": 0, "examples": [
        example(f"hf/data/train-0000{k}-of-00002.parquet:row {i}", m)
        for k, rows in enumerate(hf_train) for i, m in enumerate(rows)]})
    exp["examples"].append({"path": "hf", "options": {"split": "test"}, "skipped": 0, "examples": [
        example(f"hf/data/test-00000-of-00001.parquet:row {i}", m) for i, m in enumerate(hf_test)]})
    exp["examples"].append({"path": "hf/data/train-*.parquet", "options": {}, "skipped": 0,
                            "examples": exp["examples"][-2]["examples"]})
    exp["errors"].append({"path": "hf", "options": {"split": "validation"},
                          "error": ["hf", "no files for split 'validation'", "test, train"]})
    for name, rows in [("b.jsonl", MESSAGES_ROWS[2:3]), ("a.jsonl", MESSAGES_ROWS[0:2])]:
        write_text(P("plain", name), jsonl([{"messages": m} for m in rows])[0])
    exp["examples"].append({"path": "plain", "options": {}, "skipped": 0, "examples": [
        example("plain/a.jsonl:1", MESSAGES_ROWS[0]), example("plain/a.jsonl:2", MESSAGES_ROWS[1]),
        example("plain/b.jsonl:1", MESSAGES_ROWS[2])]})
    exp["errors"].append({"path": "no_such_*.parquet", "options": {}, "error": ["no_such_*.parquet", "matches no file"]})
    exp["errors"].append({"path": "missing.jsonl", "options": {}, "error": ["missing.jsonl", "no such file"]})

    # --- damaged Parquet files -----------------------------------------------------------------------
    data = open(P("messages.parquet"), "rb").read()
    write_text(P("truncated.parquet"), data[: len(data) // 2], mode="wb")
    exp["errors"].append({"path": "truncated.parquet", "options": {},
                          "error": ["truncated.parquet", "not a readable Parquet file"]})
    # Garble the column chunks of row group 1 but keep the footer: opening works, decoding must fail.
    rg = pq.ParquetFile(P("messages.parquet")).metadata.row_group(1)
    garbled = bytearray(data)
    for c in range(rg.num_columns):
        chunk = rg.column(c)
        start = chunk.data_page_offset
        if chunk.has_dictionary_page:
            start = min(start, chunk.dictionary_page_offset)
        for i in range(start, start + chunk.total_compressed_size):
            garbled[i] = (garbled[i] * 31 + 7) & 0xFF
    write_text(P("corrupt_pages.parquet"), bytes(garbled), mode="wb")
    exp["errors"].append({"path": "corrupt_pages.parquet", "options": {},
                          "error": ["corrupt_pages.parquet", "row group 1"]})

    # --- malformed rows: one problem each --------------------------------------------------------------
    good = msgs(("user", "ok"), ("assistant", "fine"))
    bad_rows = [
        ({"messages": good}, "ok"),
        ({"id": 1}, ["field 'messages'", "missing"]),
        ({"messages": msgs(("user", "hi"), ("bot", "hello"))}, ["field 'messages[1].role'", "unknown role 'bot'"]),
        ({"messages": []}, ["field 'messages'", "empty conversation"]),
        ({"messages": msgs(("assistant", "hi"), ("user", "bye"))}, ["field 'messages'", "last turn is 'user'"]),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
         ["field 'messages[1].content'", "found null"]),
        ({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]},
         ["field 'messages[0].content'", "missing"]),
        ({"messages": "not a list"}, ["field 'messages'", "expected a list of turns, found string"]),
        ({"messages": [{"role": 3, "content": "x"}]}, ["field 'messages[0].role'", "expected a string, found number"]),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "part 1, "},
                                                   {"type": "text", "text": "part 2"}]},
                       {"role": "assistant", "content": "ok"}]}, "ok"),
    ]
    text, lines = jsonl([r for r, _ in bad_rows], blank_after=(0,))
    write_text(P("bad_rows.jsonl"), text)
    exp["row_errors"].append({"path": "bad_rows.jsonl", "format": "messages", "options": {}, "results": [
        {"source": f"bad_rows.jsonl:{lines[i]}", "expect": e} for i, (_, e) in enumerate(bad_rows)]})
    exp["errors"].append({"path": "bad_rows.jsonl", "options": {},
                          "error": [f"bad_rows.jsonl:{lines[1]}", "field 'messages'", "missing"]})
    exp["examples"].append({"path": "bad_rows.jsonl", "options": {"skip_malformed": True}, "skipped": 8,
                            "examples": [example(f"bad_rows.jsonl:{lines[0]}", good),
                                         example(f"bad_rows.jsonl:{lines[9]}",
                                                 msgs(("user", "part 1, part 2"), ("assistant", "ok")))]})
    # The same problems as Parquet rows (list<struct> with nulls instead of absent keys).
    pq_bad = [good, None, msgs(("user", "hi"), ("bot", "hello")), [], msgs(("assistant", "hi"), ("user", "bye")),
              [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]]
    write_parquet(pa.table({"messages": pa.array(pq_bad, pa.list_(pa.struct([("role", pa.string()),
                                                                             ("content", pa.string())])))}),
                  P("bad_rows.parquet"), row_group_size=4)
    exp["row_errors"].append({"path": "bad_rows.parquet", "format": "messages", "options": {}, "results": [
        {"source": "bad_rows.parquet:row 0", "expect": "ok"},
        {"source": "bad_rows.parquet:row 1", "expect": ["field 'messages'", "expected a list of turns, found null"]},
        {"source": "bad_rows.parquet:row 2", "expect": ["field 'messages[1].role'", "unknown role 'bot'"]},
        {"source": "bad_rows.parquet:row 3", "expect": ["field 'messages'", "empty conversation"]},
        {"source": "bad_rows.parquet:row 4", "expect": ["field 'messages'", "last turn is 'user'"]},
        {"source": "bad_rows.parquet:row 5", "expect": ["field 'messages[1].content'", "found null"]}]})
    exp["row_errors"].append({"path": "bad_rows.parquet", "format": "messages",
                              "options": {"require_assistant_last": False}, "results": [
        {"source": "bad_rows.parquet:row 4", "expect": "ok"}]})
    exp["examples"].append({"path": "bad_rows.parquet", "options": {"skip_malformed": True}, "skipped": 5,
                            "examples": [example("bad_rows.parquet:row 0", good)]})
    exp["errors"].append({"path": "bad_rows.parquet", "options": {"skip_malformed": False},
                          "error": ["bad_rows.parquet:row 1", "field 'messages'"]})
    share_bad = [
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
         ["field 'conversations[1].from'", "unknown speaker 'robot'"]),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]},
         ["field 'conversations[1].value'", "missing"]),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": 5},
         ["field 'system'", "expected a string, found number"]),
        ({"conversations": [{"value": "q"}]}, ["field 'conversations[0].from'", "missing"]),
    ]
    write_text(P("bad_sharegpt.jsonl"), jsonl([r for r, _ in share_bad])[0])
    exp["row_errors"].append({"path": "bad_sharegpt.jsonl", "format": "sharegpt", "options": {}, "results": [
        {"source": f"bad_sharegpt.jsonl:{i + 1}", "expect": e} for i, (_, e) in enumerate(share_bad)]})
    write_text(P("bad_syntax.jsonl"), '{"text": "fine"}\n\n{"text": "broken\n{"text": "after"}\n')
    exp["errors"].append({"path": "bad_syntax.jsonl", "options": {},
                          "error": ["bad_syntax.jsonl:3", "malformed JSON", "parse error"]})
    write_text(P("bad_not_object.jsonl"), '{"text": "fine"}\n[1, 2]\n')
    exp["errors"].append({"path": "bad_not_object.jsonl", "options": {},
                          "error": ["bad_not_object.jsonl:2", "not an object"]})
    write_text(P("unknown_schema.jsonl"), '{"question": "q", "answer": "a"}\n')
    exp["errors"].append({"path": "unknown_schema.jsonl", "options": {},
                          "error": ["unknown_schema.jsonl:1", "cannot tell the dataset schema", "'answer', 'question'"]})
    exp["errors"].append({"path": "unknown_schema.jsonl", "options": {"format": "chatml"},
                          "error": ["unknown dataset format 'chatml'"]})
    exp["errors"].append({"path": "text.txt", "options": {"format": "messages"},
                          "error": ["text.txt", "plain-text file"]})

    tmp = P(f"expected.json.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(exp, f, ensure_ascii=False, indent=1)
    os.replace(tmp, P("expected.json"))
