#!/usr/bin/env bash
# End-to-end test of spattn-compare (run by ctest as compare_tool):
#   tools/test_compare.sh path/to/spattn-compare
# Checks --help, bad options and bad files (clear message, non-zero exit, output folder untouched,
# nothing half-written), a small run's CSV/JSON/selections, and that the .npy inputs the tool
# saves read back into identical accuracy numbers.
set -euo pipefail
tool=$(realpath "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
small=(--tokens 256 --heads 4 --kv-heads 2 --head-dim 32 --reps 1 --eval-rows 32 --threads 2)

# expect_error <fragment> <args...>: non-zero exit and the fragment in stderr.
expect_error() {
  local fragment=$1
  shift
  if "$tool" "$@" >out.txt 2>err.txt; then fail "no error for: $*"; fi
  grep -qF -- "$fragment" err.txt || { cat err.txt >&2; fail "message lacks '$fragment' for: $*"; }
}

"$tool" --help >help.txt
for opt in --methods --budgets --tokens --heads --kv-heads --head-dim --dtype --threads --phase \
           --out --seed --input --save-selections --per-head; do
  grep -qF -- "$opt" help.txt || fail "--help does not mention $opt"
done
"$tool" --list-methods | grep -q '^dense' || fail "--list-methods lacks dense"

# An existing results folder survives every failing run, and no temporary folder is left.
mkdir results && echo keep >results/marker
expect_error "--phase" --phase sideways
expect_error "expected a number" --budgets 5,abc
expect_error "unknown method 'nope'" --methods dense,nope
expect_error "--dtype" --dtype f64
expect_error "--tokens" --tokens 10
expect_error "multiple of kv_heads" --heads 6 --kv-heads 4
expect_error "head_dim a multiple of 8" --head-dim 20
expect_error "not a folder" --input does-not-exist
mkdir empty
expect_error "no q.npy or layerNN_q.npy" --input empty
# A truncated .npy: the message names the file and the problem.
mkdir bad
h="{'descr': '<f4', 'fortran_order': False, 'shape': (8, 2, 8), }"
while [ $(((10 + ${#h} + 1) % 64)) -ne 0 ]; do h+=" "; done
h+=$'\n'
{
  printf '\x93NUMPY\x01\x00'
  printf "\\x$(printf %02x $((${#h} & 255)))\\x$(printf %02x $((${#h} >> 8)))"
  printf '%s' "$h"
  printf '0123456789abcdef'  # 16 of the 512 data bytes
} >bad/q.npy
cp bad/q.npy bad/k.npy
cp bad/q.npy bad/v.npy
expect_error "bad/q.npy': truncated data" --input bad
# --heads with --input is refused (shapes come from the files).
expect_error "excludes" --input bad --heads 4
[ "$(cat results/marker)" = keep ] || fail "results/ was modified by a failing run"
[ -z "$(ls -A . | grep -E '^\.results\.(tmp|old)')" ] || fail "temporary folders left behind"

# A small run: files, row counts, JSON fields, selections and saved inputs.
"$tool" "${small[@]}" --out results --save-selections --per-head --save-inputs >table.txt 2>log.txt
[ ! -e results/marker ] || fail "results/ was not replaced"
grep -q "a-shape-builtin" table.txt || fail "table lacks the baseline"
grep -q "spattn-compare \[" log.txt || fail "no progress lines on stderr"
lines=$(wc -l <results/results.csv)
# header + 2 phases x (dense + 3 budgets)
[ "$lines" -eq 9 ] || fail "results.csv has $lines lines, expected 9"
head -1 results/results.csv | grep -q "density,attention_gflops,estimation_gflops" ||
  fail "CSV header"
grep -q '^synthetic,prefill,dense,-,' results/results.csv || fail "dense prefill row"
grep -q '"per_head_mass_recall"' results/results.json || fail "JSON lacks per-head values"
grep -q '"needles"' results/results.json || fail "JSON lacks needles"
[ "$(wc -l <results/per_head.csv)" -eq $((1 + 8 * 4)) ] || fail "per_head.csv rows"
for f in rows offsets keys; do
  [ -s "results/selections/synthetic/prefill/a-shape-builtin/10x/$f.npy" ] || fail "selection $f"
done
for f in q k v needles; do [ -s "results/inputs/synthetic/$f.npy" ] || fail "input $f.npy"; done
# dense is exact: mass recall 1, error 0, density 1; kernels agree with their key sets.
awk -F, 'NR > 1 && $3 == "dense" && ($12 != 1 || $18 != 0 || $19 != 1) { exit 1 }' \
  results/results.csv || fail "dense row is not exact"
awk -F, 'NR > 1 && $NF != "" && $NF > 1e-4 { exit 1 }' results/results.csv ||
  fail "a kernel output differs from its key set"

# The saved .npy inputs read back through --input give the same accuracy (same data, f32).
"$tool" --input results/inputs/synthetic --reps 1 --eval-rows 32 --threads 2 --out again \
  >/dev/null 2>&1 || fail "reading saved inputs"
cut -d, -f2-4,12,18,19 results/results.csv >a.txt
cut -d, -f2-4,12,18,19 again/results.csv >b.txt
diff a.txt b.txt >/dev/null || { diff a.txt b.txt >&2; fail "saved inputs give other numbers"; }
# Layered folders: layerNN_{q,k,v}.npy, --layers picks some.
mkdir layers
for l in 00 03; do
  for x in q k v; do cp "results/inputs/synthetic/$x.npy" "layers/layer${l}_$x.npy"; done
done
"$tool" --input layers --layers 3 --phase prefill --reps 1 --eval-rows 16 --out lay >/dev/null 2>&1 ||
  fail "layered input"
grep -q '^layer03,prefill' lay/results.csv || fail "layer03 missing"
! grep -q '^layer00' lay/results.csv || fail "--layers ignored"
expect_error "layer 7 not found" --input layers --layers 7
# The output folder is replaced as a whole, so it may not hold the input.
expect_error "contains the input folder" --input layers --out layers
expect_error "expected a folder name" --input layers --out .
expect_error "expected a folder name" --out ..
mkdir -p outer/in && cp layers/layer03_* outer/in/
expect_error "contains the input folder" --input outer/in --out outer
# Inconsistent shapes between files.
cp results/inputs/synthetic/q.npy layers/layer00_k.npy
expect_error "must have the same shape" --input layers --layers 0
# Needles outside the input are rejected.
cp results/inputs/synthetic/needles.npy layers/layer03_needles.npy
"$tool" --input layers --layers 3 --phase decode --reps 1 --out lay2 >/dev/null 2>&1 ||
  fail "layer with needles"
grep -q '^layer03,decode,dense,-,.*,2,2,' lay2/results.csv || fail "needles of layer03 not read"
expect_error "outside the input" --input layers --layers 3 --tokens 64 --decode-queries 4
echo "compare tool: all checks passed"
