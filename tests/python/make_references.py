#!/usr/bin/env python3
"""Writes every reference file the C++ tests compare against (run as the CTest fixture `python_references`).

Each module tests/python/refs_*.py defines `main(out_dir: str, assets_dir: str) -> None` and writes its
own files under out_dir. Python is used only here, for test references: never at run time.
"""
import argparse
import importlib
import os
import pathlib
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--assets", required=True)
    parser.add_argument("--only", default="", help="comma-separated module names (refs_xxx) to run")
    parser.add_argument("--skip", default="", help="comma-separated module names (refs_xxx) not to run")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    here = pathlib.Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    modules = sorted(p.stem for p in here.glob("refs_*.py"))
    if args.only:
        wanted = set(args.only.split(","))
        modules = [m for m in modules if m in wanted]
    if args.skip:
        unwanted = set(args.skip.split(","))
        modules = [m for m in modules if m not in unwanted]
    for name in modules:
        start = time.time()
        importlib.import_module(name).main(args.out, args.assets)
        print(f"{name}: {time.time() - start:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
