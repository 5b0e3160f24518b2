#!/usr/bin/env python3
"""Reads TensorBoard event files written by mlaforge (trainer/metrics_tfevents.cpp) with TensorBoard's own
reader and compares them with what the C++ test says it wrote.

    check_tfevents.py EVENTS_FILE EXPECTED_JSON
    check_tfevents.py --dir RUN_DIR EXPECTED_JSON

EXPECTED_JSON: {"wall_time_first": float (optional), "events": [{"step": int, "wall_time": float (optional),
"values": [[tag, value], ...]} or {"step": int, "session_start": true}, ...]} for the single-file form,
checked record by record: the first record is the version event, the rest are scalar events (tags, steps
and float32 values equal) or SessionLog START events, in order.
With --dir: {"scalars": {tag: [[step, value], ...]}}, what TensorBoard's EventAccumulator shows for the
folder after its restart handling (SessionLog START purges later steps of earlier files).

Exit status 0 = all equal, 1 = mismatch (printed), 77 = tensorboard not installed (the test skips).
"""
import json
import os
import struct
import sys

try:
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
except ImportError as e:  # pragma: no cover - depends on the venv
    print(f"SKIP: tensorboard is not installed in this Python ({e}); pip install -r tests/python/requirements.txt")
    sys.exit(77)


def f32(x: float) -> float:
    """The value a float32 field holds after storing x."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def same_f32(got: float, want: float) -> bool:
    w = f32(want)
    if w != w:  # NaN
        return got != got
    return got == w


def check_framing(path: str, errors: list) -> int:
    """Walks the TFRecord framing by hand: lengths and both masked CRCs of every record."""
    count = 0
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at < len(data):
        if at + 12 > len(data):
            errors.append(f"{path}: truncated record header at byte {at}")
            return count
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[at + 8:at + 12])
        if header_crc != masked_crc32c(header):
            errors.append(f"{path}: record {count}: header CRC {header_crc:#x} != {masked_crc32c(header):#x}")
        payload = data[at + 12:at + 12 + length]
        (data_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
        if data_crc != masked_crc32c(payload):
            errors.append(f"{path}: record {count}: data CRC {data_crc:#x} != {masked_crc32c(payload):#x}")
        at += 16 + length
        count += 1
    return count


def check_file(path: str, expected: dict) -> list:
    errors = []
    name = os.path.basename(path)
    if not name.startswith("events.out.tfevents."):
        errors.append(f"file name {name} does not start with events.out.tfevents.")
    records = check_framing(path, errors)
    events = list(LegacyEventFileLoader(path).Load())
    if len(events) != records:
        errors.append(f"TensorBoard read {len(events)} events, the framing walk found {records}")
    if not events:
        return errors + ["no events"]
    first = events[0]
    if first.file_version != "brain.Event:2":
        errors.append(f"first event file_version {first.file_version!r}, want 'brain.Event:2'")
    if "wall_time_first" in expected and first.wall_time != expected["wall_time_first"]:
        errors.append(f"first event wall_time {first.wall_time!r} != {expected['wall_time_first']!r}")
    want_events = expected["events"]
    got_events = events[1:]
    if len(got_events) != len(want_events):
        errors.append(f"{len(got_events)} scalar events, want {len(want_events)}")
    for i, (got, want) in enumerate(zip(got_events, want_events)):
        where = f"event {i + 1}"
        if got.step != want["step"]:
            errors.append(f"{where}: step {got.step} != {want['step']}")
        if "wall_time" in want and got.wall_time != want["wall_time"]:
            errors.append(f"{where}: wall_time {got.wall_time!r} != {want['wall_time']!r}")
        if want.get("session_start"):
            if not got.HasField("session_log") or got.session_log.status != event_pb2.SessionLog.START:
                errors.append(f"{where}: not a SessionLog START event")
            continue
        if not got.HasField("summary"):
            errors.append(f"{where}: no summary")
            continue
        values = list(got.summary.value)
        if len(values) != len(want["values"]):
            errors.append(f"{where}: {len(values)} values, want {len(want['values'])}")
        for v, (tag, value) in zip(values, want["values"]):
            if v.tag != tag:
                errors.append(f"{where}: tag {v.tag!r} != {tag!r}")
            if v.WhichOneof("value") != "simple_value":
                errors.append(f"{where} {tag}: not a simple_value ({v.WhichOneof('value')})")
            elif not same_f32(v.simple_value, value):
                errors.append(f"{where} {tag}: value {v.simple_value!r} != float32({value!r}) = {f32(value)!r}")
    return errors


def check_dir(run_dir: str, expected: dict) -> list:
    errors = []
    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = sorted(acc.Tags()["scalars"])
    want_tags = sorted(expected["scalars"])
    if tags != want_tags:
        errors.append(f"scalar tags {tags} != {want_tags}")
    for tag in want_tags:
        if tag not in tags:
            continue
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        want = expected["scalars"][tag]
        if [s for s, _ in got] != [s for s, _ in want]:
            errors.append(f"{tag}: steps {[s for s, _ in got]} != {[s for s, _ in want]}")
            continue
        for (step, g), (_, w) in zip(got, want):
            if not same_f32(g, w):
                errors.append(f"{tag} step {step}: {g!r} != float32({w!r})")
    return errors


def main(argv: list) -> int:
    if len(argv) == 3 and argv[0] == "--dir":
        with open(argv[2]) as f:
            errors = check_dir(argv[1], json.load(f))
    elif len(argv) == 2:
        with open(argv[1]) as f:
            errors = check_file(argv[0], json.load(f))
    else:
        print(__doc__)
        return 2
    for e in errors[:50]:
        print("MISMATCH:", e)
    if errors:
        return 1
    print("OK: event file(s) match")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
