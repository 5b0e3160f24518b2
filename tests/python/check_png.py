#!/usr/bin/env python3
"""Decodes the loss-curve PNG written by mlaforge (trainer/metrics_png.cpp, metrics_plot.cpp) with a small
pure-Python PNG reader (zlib + struct: an independent decoder, no Pillow) and checks what a person would
see: the size, the colour type, and that the curves are there with the shape of a decreasing loss.

    check_png.py PNG EXPECTED_JSON

EXPECTED_JSON: {"width": 800, "height": 500, "area": [x0, y0, x1, y1],
                "decreasing": [[r, g, b], ...],   colours of lines that must fall from left to right
                "present": [[r, g, b], ...],      colours that must appear (eval dots, axes)
                "min_span": 0.8}                  fraction of the area's width a falling line must cover
Exit status 0 = as expected, 1 = not (printed).
"""
import json
import struct
import sys
import zlib


def paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes):
    """Returns (width, height, colour_type, bit_depth, rows) with rows as bytearrays of RGB(A) bytes."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG signature")
    at, chunks = 8, []
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind = data[at + 4:at + 8]
        body = data[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length:at + 12 + length])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"bad CRC in chunk {kind!r}")
        chunks.append((kind, body))
        at += 12 + length
        if kind == b"IEND":
            break
    if chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        raise ValueError("chunks must start with IHDR and end with IEND")
    width, height, depth, colour, compression, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if (depth, compression, filt, interlace) != (8, 0, 0, 0) or colour not in (2, 6):
        raise ValueError(f"unsupported PNG: depth {depth} colour {colour} interlace {interlace}")
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * channels
    if len(raw) != height * (stride + 1):
        raise ValueError(f"inflated {len(raw)} bytes, want {height * (stride + 1)}")
    rows, prev = [], bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride if ftype != 0 else 0):
            left = line[i - channels] if i >= channels else 0
            up = prev[i]
            up_left = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + left) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + up) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif ftype == 4:
                line[i] = (line[i] + paeth(left, up, up_left)) & 0xFF
            elif ftype != 0:
                raise ValueError(f"row {y}: unknown filter {ftype}")
        rows.append(line)
        prev = line
    return width, height, colour, depth, rows


def main(argv: list) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    with open(argv[0], "rb") as f:
        width, height, colour, depth, rows = decode_png(f.read())
    with open(argv[1]) as f:
        want = json.load(f)
    errors = []
    if (width, height) != (want["width"], want["height"]):
        errors.append(f"size {width}x{height}, want {want['width']}x{want['height']}")
    if colour != 2 or depth != 8:
        errors.append(f"colour type {colour} depth {depth}, want RGB (2) depth 8")
    channels = 3 if colour == 2 else 4

    def pixels_of(rgb, area=None):
        """{x: [y, ...]} of the pixels exactly this colour (inside area when given)."""
        x0, y0, x1, y1 = area if area else (0, 0, width - 1, height - 1)
        found = {}
        target = bytes(rgb)
        for y in range(y0, y1 + 1):
            row = rows[y]
            for x in range(x0, x1 + 1):
                if row[x * channels:x * channels + 3] == target:
                    found.setdefault(x, []).append(y)
        return found

    for rgb in want.get("present", []):
        count = sum(len(v) for v in pixels_of(rgb).values())
        if count == 0:
            errors.append(f"no pixel of colour {rgb}")
    area = want["area"]
    area_w = area[2] - area[0]
    area_h = area[3] - area[1]
    for rgb in want.get("decreasing", []):
        columns = pixels_of(rgb, area)
        if not columns:
            errors.append(f"no pixel of curve colour {rgb} in the plot area")
            continue
        xs = sorted(columns)
        span = (xs[-1] - xs[0]) / area_w
        if span < want.get("min_span", 0.8):
            errors.append(f"curve {rgb} spans {span:.2f} of the width, want >= {want.get('min_span', 0.8)}")
        # A falling loss is a line going down the picture (y grows) from left to right: each column's mean
        # y may not rise by more than the line's thickness compared with the lowest seen so far.
        means = [sum(columns[x]) / len(columns[x]) for x in xs]
        lowest, worst = means[0], 0.0
        for m in means:
            worst = max(worst, lowest - m)
            lowest = max(lowest, m)
        if worst > 3.0:
            errors.append(f"curve {rgb} rises by {worst:.1f} px somewhere: not monotone")
        drop = means[-1] - means[0]
        if drop < 0.5 * area_h:
            errors.append(f"curve {rgb} falls {drop:.0f} px of {area_h}: want at least half the plot height")
        print(f"curve {rgb}: {len(xs)} columns, span {span:.2f}, falls {drop:.0f} px, worst rise {worst:.1f} px")
    for e in errors:
        print("MISMATCH:", e)
    if errors:
        return 1
    print("OK: PNG as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
