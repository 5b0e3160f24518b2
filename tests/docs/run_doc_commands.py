#!/usr/bin/env python3
"""Runs every ```bash block of the user guide (docs/*.md) against the real binaries on tiny real assets.

A test tool only (mlaforge never runs Python). Each page runs in a fresh temporary folder: its blocks, in
order, each as its own `bash` process started in that folder, with the variables the guide uses pointed at
small real inputs:

    MODEL    stories260K (llama2.c .bin; its tokenizer tok512.model is found next to it)
    CALIB    TinyStories paragraphs 201-264 (calibration text, blank-line separated)
    EVAL     TinyStories paragraphs 1-20 (held-out evaluation text)
    TEXT     TinyStories paragraphs 401-800 (plain training text)
    DATA     a JSONL of 8 R1-style conversations (`messages`, the answer after a <think> block), written here
    OUT      the page's own output folder (empty at the start)

and `mlaforge` / `mlarun` (and the test Python as `python`) first on PATH, one CPU thread per process.
Blocks share the page's folder (files one block writes are there for the next), not shell variables.

A block may be preceded (blank lines aside) by HTML comments that say how to treat it:

    <!-- not-tested: REASON -->        skipped and counted; the reason is required (GPU, serving, real paths)
    <!-- requires: ITEM[, ITEM] -->    skipped, with the missing item named, unless every ITEM is there:
                                       `python:MODULE` an importable module, anything else a command on PATH
    <!-- expect: REGEX -->             must succeed and its output (stdout + stderr) must match REGEX
    <!-- expect-failure: REGEX -->     must FAIL (non-zero exit status) with output matching REGEX

Without a marker a block must exit 0; blocks run with `set -e -o pipefail`, and a failure names the page,
the block number, its line in the page and the command that failed, followed by the tail of its output.

    run_doc_commands.py --mlaforge BIN --mlarun BIN --assets DIR [--python PY] [--docs DIR] [--page NAME]
                        [--keep] [--block-timeout S]

Exit status: 0 all run blocks passed, 1 a block failed (or a page is malformed), 77 assets missing.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

FENCE_OPEN = re.compile(r"^```bash\s*$")
FENCE_CLOSE = re.compile(r"^```\s*$")
MARKER = re.compile(r"^<!--\s*([a-z-]+)\s*:\s*(.*?)\s*-->\s*$")
KNOWN_MARKERS = ("not-tested", "requires", "expect", "expect-failure")
FAIL_TAG = "__DOC_COMMAND_FAILED__"


class Block:
    def __init__(self, page, number, line, code, markers):
        self.page, self.number, self.line, self.code, self.markers = page, number, line, code, markers

    def name(self):
        return f"{self.page} block {self.number} (line {self.line})"

    def first_line(self):
        for line in self.code.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                return line.strip()
        return self.code.strip().splitlines()[0] if self.code.strip() else "(empty)"


def parse_page(path):
    """Every ```bash block with the HTML-comment markers right above it (blank lines between allowed)."""
    page = os.path.basename(path)
    lines = open(path, encoding="utf-8").read().split("\n")
    blocks, errors = [], []
    i = 0
    while i < len(lines):
        if not FENCE_OPEN.match(lines[i]):
            i += 1
            continue
        start = i
        markers = {}
        j = i - 1
        while j >= 0 and (not lines[j].strip() or MARKER.match(lines[j].strip())):
            m = MARKER.match(lines[j].strip())
            if m:
                key, value = m.group(1), m.group(2)
                if key not in KNOWN_MARKERS:
                    errors.append(f"{page}:{j + 1}: unknown marker '{key}' (known: {', '.join(KNOWN_MARKERS)})")
                elif not value:
                    errors.append(f"{page}:{j + 1}: marker '{key}' needs a value (a reason, a regex or items)")
                markers.setdefault(key, value)
            j -= 1
        k = i + 1
        while k < len(lines) and not FENCE_CLOSE.match(lines[k]):
            k += 1
        if k == len(lines):
            errors.append(f"{page}:{start + 1}: ```bash block never closed")
            break
        code = "\n".join(lines[start + 1:k]) + "\n"
        if "expect" in markers and "expect-failure" in markers:
            errors.append(f"{page}:{start + 1}: both expect and expect-failure")
        for key in ("expect", "expect-failure"):
            if key in markers:
                try:
                    re.compile(markers[key])
                except re.error as e:
                    errors.append(f"{page}:{start + 1}: bad {key} regex '{markers[key]}': {e}")
        blocks.append(Block(page, len(blocks) + 1, start + 1, code, markers))
        i = k + 1
    return blocks, errors


def split_paragraphs(path):
    """Blank-line separated paragraphs, as `mlaforge eval` and the awk RS="" in the shell tests split them."""
    paras, cur = [], []
    for line in open(path, encoding="utf-8").read().split("\n"):
        if line.strip() == "":
            if cur:
                paras.append("\n".join(cur))
                cur = []
        else:
            cur.append(line)
    if cur:
        paras.append("\n".join(cur))
    return paras


# R1-style rows: a question, then the answer after a <think> block (what DeepSeek-R1 traces look like).
R1_ROWS = [
    ("What is 2 + 3?", "Start at 2 and count three more: 3, 4, 5.", "2 + 3 = 5."),
    ("Is 7 a prime number?", "7 is not divisible by 2, 3, 4, 5 or 6.", "Yes, 7 is prime."),
    ("What is 6 times 4?", "6 + 6 + 6 + 6 = 24.", "6 x 4 = 24."),
    ("Which is bigger, 9 or 12?", "12 - 9 = 3, which is positive.", "12 is bigger."),
    ("What is half of 10?", "10 split into two equal parts is 5 and 5.", "Half of 10 is 5."),
    ("How many legs do two cats have?", "One cat has 4 legs, so two have 4 + 4 = 8.", "Two cats have 8 legs."),
    ("What comes after Tuesday?", "The days go Monday, Tuesday, Wednesday.", "Wednesday."),
    ("What is 15 - 7?", "15 - 5 = 10, and 10 - 2 = 8.", "15 - 7 = 8."),
]


def write_fixtures(assets, folder):
    """The page's input files; returns the environment variables that name them."""
    text = os.path.join(assets, "text", "tinystories_val_part1.txt")
    paras = split_paragraphs(text)
    os.makedirs(folder, exist_ok=True)
    files = {"EVAL": paras[0:20], "CALIB": paras[200:264], "TEXT": paras[400:800]}
    env = {}
    for var, docs in files.items():
        path = os.path.join(folder, var.lower() + ".txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n\n".join(docs) + "\n")
        env[var] = path
    data = os.path.join(folder, "r1.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        for q, think, answer in R1_ROWS:
            row = {"messages": [{"role": "user", "content": q},
                                {"role": "assistant", "content": f"<think>{think}</think>{answer}"}]}
            f.write(json.dumps(row) + "\n")
    env["DATA"] = data
    env["MODEL"] = os.path.join(assets, "models", "stories260K", "stories260K.bin")
    return env


def missing_requirement(items, python):
    for item in (s.strip() for s in items.split(",")):
        if not item:
            continue
        if item.startswith("python:"):
            module = item[len("python:"):]
            ok = python and subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0
            if not ok:
                return f"the test Python lacks the module '{module}'"
        elif shutil.which(item) is None:
            return f"'{item}' is not on PATH"
    return None


def run_block(block, cwd, env, timeout):
    """(passed, seconds, output, failed command)"""
    expect_failure = "expect-failure" in block.markers
    # The ERR trap names the command that failed (set -e stops right after it).
    prologue = "set -o pipefail\n" if expect_failure else \
        f"set -eE -o pipefail\ntrap 'echo \"{FAIL_TAG} $((LINENO - 2)) $BASH_COMMAND\" >&2' ERR\n"
    start = time.time()
    try:
        p = subprocess.run(["bash", "--noprofile", "--norc", "-c", prologue + block.code], cwd=cwd, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        rc, out = p.returncode, p.stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace")
        return False, time.time() - start, out, f"timed out after {timeout} s"
    seconds = time.time() - start
    failed_cmd = None
    for line in out.splitlines():
        if line.startswith(FAIL_TAG):  # "<line in the block> <command>"
            n, _, cmd = line[len(FAIL_TAG):].strip().partition(" ")
            failed_cmd = f"`{cmd}` (line {block.line + int(n)} of {block.page})" if n.isdigit() else cmd
    shown = "\n".join(l for l in out.splitlines() if not l.startswith(FAIL_TAG))
    if expect_failure:
        regex = block.markers["expect-failure"]
        if rc == 0:
            return False, seconds, shown, "expected to fail, but exited 0"
        if not re.search(regex, out, re.MULTILINE):
            return False, seconds, shown, f"failed (exit {rc}) as expected, but the output does not match /{regex}/"
        return True, seconds, shown, None
    if rc != 0:
        return False, seconds, shown, f"exit {rc} from {failed_cmd or '`' + block.first_line() + '`'}"
    if "expect" in block.markers and not re.search(block.markers["expect"], out, re.MULTILINE):
        return False, seconds, shown, f"exit 0, but the output does not match /{block.markers['expect']}/"
    return True, seconds, shown, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mlaforge", required=True)
    ap.add_argument("--mlarun", required=True)
    ap.add_argument("--assets", required=True)
    ap.add_argument("--python", default="")
    ap.add_argument("--docs", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs"))
    ap.add_argument("--page", action="append", default=[], help="run only this page (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders (each block's output is in block-NN.log)")
    ap.add_argument("--block-timeout", type=float, default=180)
    args = ap.parse_args()

    needed = [os.path.join(args.assets, "models", "stories260K", f) for f in ("stories260K.bin", "tok512.model")]
    needed.append(os.path.join(args.assets, "text", "tinystories_val_part1.txt"))
    absent = [p for p in needed if not os.path.isfile(p)]
    if absent:
        print(f"skipped: the doc test needs the shared assets, not found: {', '.join(absent)}")
        return 77
    for b in (args.mlaforge, args.mlarun):
        if not os.access(b, os.X_OK):
            print(f"FAIL: {b} is not an executable (build the mlaforge and mlarun targets)")
            return 1

    docs = os.path.abspath(args.docs)
    pages = sorted(f for f in os.listdir(docs) if f.endswith(".md"))
    pages.sort(key=lambda f: (f != "README.md", f))  # the index first
    if args.page:
        pages = [p for p in pages if p in args.page or p[:-3] in args.page]
    parsed, errors = [], []
    for page in pages:
        blocks, errs = parse_page(os.path.join(docs, page))
        parsed.append((page, blocks))
        errors += errs
    if errors:
        for e in errors:
            print(f"FAIL {e}")
        return 1

    bindirs = [os.path.dirname(os.path.abspath(args.mlaforge)), os.path.dirname(os.path.abspath(args.mlarun))]
    if args.python:
        bindirs.append(os.path.dirname(os.path.abspath(args.python)))
    base_env = dict(os.environ)
    # The pages describe a plain machine: no thread settings, no injected faults, and no Slurm allocation
    # (inside one mlarun would pick srun, and the dry-run blocks show mpirun).
    for var in [v for v in base_env if v.startswith("SLURM_") or v.startswith("MLAFORGE_")]:
        base_env.pop(var)
    base_env.pop("OMP_NUM_THREADS", None)
    base_env.update({
        "PATH": os.pathsep.join(bindirs + [base_env.get("PATH", "/usr/bin:/bin")]),
        # One thread per process: the CI machine has 2 cores and runs 2 ranks in the MPI blocks.
        "OMP_NUM_THREADS": "1", "MLAFORGE_NUM_THREADS": "1",
        "LC_ALL": "C.UTF-8",
    })

    root = tempfile.mkdtemp(prefix="mlaforge-docs-")
    t0 = time.time()
    ran = passed = 0
    skipped, failures = [], []
    try:
        for page, blocks in parsed:
            folder = os.path.join(root, page[:-3])
            os.makedirs(folder)
            env = dict(base_env)
            env.update(write_fixtures(args.assets, os.path.join(folder, "inputs")))
            env["OUT"] = os.path.join(folder, "out")
            os.makedirs(env["OUT"])
            print(f"== {page}: {len(blocks)} bash blocks (in {folder})", flush=True)
            for block in blocks:
                if "not-tested" in block.markers:
                    skipped.append((block, "not-tested: " + block.markers["not-tested"]))
                    print(f"skip {block.name()}: not-tested: {block.markers['not-tested']}", flush=True)
                    continue
                if "requires" in block.markers:
                    why = missing_requirement(block.markers["requires"], args.python)
                    if why:
                        skipped.append((block, "requires: " + why))
                        print(f"skip {block.name()}: {why}", flush=True)
                        continue
                ran += 1
                ok, seconds, out, why = run_block(block, folder, env, args.block_timeout)
                with open(os.path.join(folder, f"block-{block.number:02d}.log"), "w", encoding="utf-8") as log:
                    log.write(block.code + "\n# ---- output ----\n" + out + "\n")
                if ok:
                    passed += 1
                    print(f"ok   {block.name()} {seconds:5.1f} s  {block.first_line()[:90]}", flush=True)
                else:
                    failures.append((block, why))
                    print(f"FAIL {block.name()} after {seconds:.1f} s: {why}")
                    print("     block:\n" + "\n".join("       | " + l for l in block.code.rstrip().splitlines()))
                    tail = out.splitlines()[-40:]
                    print("     output (last 40 lines):\n" + "\n".join("       > " + l for l in tail), flush=True)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    total = time.time() - t0
    print(f"\ndoc commands: {ran} blocks run, {passed} passed, {len(failures)} failed, {len(skipped)} skipped "
          f"({len(parsed)} pages, {total:.0f} s)")
    reasons = {}
    for block, why in skipped:
        reasons.setdefault(why, []).append(f"{block.page} #{block.number}")
    for why, where in reasons.items():
        print(f"  skipped {len(where)}: {why} [{', '.join(where)}]")
    for block, why in failures:
        print(f"  FAILED: {block.name()}: {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
