#!/usr/bin/env bash
# Builds tests/fuzz/safetensors_header_fuzz.cpp with clang's libFuzzer (+ ASan/UBSan) and runs it.
#   usage: run_fuzz.sh <seconds> <workdir>
# Exits non-zero when the build fails or the fuzzer finds a crash, leak, sanitizer report or abort;
# reproducers land in <workdir>/artifacts/. The corpus in <workdir>/corpus grows across runs.
set -euo pipefail

seconds=${1:?usage: run_fuzz.sh <seconds> <workdir>}
work=${2:?usage: run_fuzz.sh <seconds> <workdir>}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cxx=${CLANGXX:-clang++}

mkdir -p "$work/corpus" "$work/seeds" "$work/artifacts"
binary="$work/safetensors_header_fuzz"
sources=("$here/safetensors_header_fuzz.cpp" "$root/model/safetensors.cpp" "$root/core/dtype.cpp"
         "$root/core/mmap_file.cpp" "$root/core/strings.cpp")
headers=("$root/model/safetensors.h" "$root/core/dtype.h" "$root/core/mmap_file.h" "$root/core/error.h"
         "$root/core/strings.h")

# Rebuild only when a source is newer than the binary (the build takes about a minute).
stale=0
[[ -x "$binary" ]] || stale=1
for f in "${sources[@]}" "${headers[@]}" "$0"; do
  [[ "$f" -nt "$binary" ]] && stale=1
done
if (( stale )); then
  echo "building $binary with $cxx"
  "$cxx" -std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=all -I"$root" "${sources[@]}" -o "$binary.tmp"
  mv "$binary.tmp" "$binary"
fi

# Little-endian u64, as printf escapes.
le64() {
  local n=$1 i
  for i in 0 1 2 3 4 5 6 7; do printf "\\x$(printf %02x $(( (n >> (8 * i)) & 255 )))"; done
}
# Seed in raw mode (leading 0x00): a complete file with the given header and data size.
raw_seed() {
  local name=$1 header=$2 data=$3
  { printf '\x00'; le64 ${#header}; printf '%s' "$header"; head -c "$data" /dev/zero; } > "$work/seeds/$name"
}
# Seed in header-text mode (leading 0x01): data size as two LE bytes, then the header text.
text_seed() {
  local name=$1 header=$2 data=$3
  { printf '\x01'; printf "\\x$(printf %02x $((data & 255)))\\x$(printf %02x $((data >> 8)))";
    printf '%s' "$header"; } > "$work/seeds/$name"
}

one='{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}'
two='{"a":{"dtype":"BF16","shape":[3,1],"data_offsets":[0,6]},"b":{"dtype":"I64","shape":[1],"data_offsets":[6,14]},"e":{"dtype":"U8","shape":[0],"data_offsets":[14,14]},"s":{"dtype":"BOOL","shape":[],"data_offsets":[14,15]}}'
raw_seed one.bin "$one" 16
raw_seed two.bin "$two" 15
raw_seed empty.bin '{}      ' 0
text_seed one.txt "$one" 16
text_seed two.txt "$two" 15
text_seed bad_dtype.txt '{"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}' 4

echo "fuzzing for ${seconds}s"
"$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 \
  -dict="$here/safetensors.dict" -artifact_prefix="$work/artifacts/" "$work/corpus" "$work/seeds"
