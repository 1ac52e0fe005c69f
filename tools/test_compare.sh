#!/usr/bin/env bash
# End-to-end test of spattn-compare (run by ctest as compare_tool):
#   tools/test_compare.sh path/to/spattn-compare
# Checks --help, bad options and bad files (clear message, non-zero exit, output folder untouched,
# nothing half-written), a small run of every method (the prefill policies, the decode policy
# (quest) and the eviction policies (snapkv, ada-snapkv, streaming-llm): kernel output equal to
# the oracle over their selection at every evaluated query, estimation time and FLOPs, budgets
# they cannot meet reported as "not met" without failing the run, needles seen in decoding), its
# CSV/JSON, the selections (the native prefill, decode and eviction formats read back with numpy
# give the same key sets as the CSR lists), and that the .npy inputs the tool saves read back into
# identical accuracy numbers.
set -euo pipefail
tool=$(realpath "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
# Debian's python3 (numpy, matplotlib) for reading the results; any python3 otherwise.
py=$(command -v /usr/bin/python3 || command -v python3) || fail "python3 not found"
small=(--tokens 1024 --heads 4 --kv-heads 2 --head-dim 32 --reps 1 --eval-rows 32 --threads 2)

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
"$tool" --list-methods >methods.txt
for m in dense dense-policy a-shape vertical-slash block-sparse flexprefill strided quest snapkv \
         ada-snapkv streaming-llm; do
  grep -q "^$m " methods.txt || fail "--list-methods lacks $m"
done
for m in quest snapkv ada-snapkv streaming-llm; do
  grep -q "^$m  *decode " methods.txt || fail "--list-methods: $m is not a decode method"
done
for word in block_starts block_offsets column_offsets layout.npy "not met" default \
            decode_layout.npy pages.npy page_offsets page_lengths eviction_layout.npy kept.npy \
            kept_offsets; do
  grep -qF -- "$word" help.txt || fail "--help does not document '$word'"
done

# An existing results folder survives every failing run, and no temporary folder is left.
mkdir results && echo keep >results/marker
expect_error "--phase" --phase sideways
expect_error "expected a number" --budgets 5,abc
expect_error "has no adaptive form" --budgets default@adaptive
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

# A small run: files, row counts, statuses, JSON fields, selections and saved inputs. Budgets: the
# policies' defaults, 4x, and a coverage budget that only flexprefill takes (the others report
# "not met" and the run goes on).
budgets=(--budgets default,4,coverage:0.9)
"$tool" "${small[@]}" "${budgets[@]}" --out results --save-selections --per-head --save-inputs \
  >table.txt 2>log.txt
[ ! -e results/marker ] || fail "results/ was not replaced"
for m in dense-policy a-shape vertical-slash block-sparse flexprefill strided; do
  grep -q "^synthetic *prefill *$m " table.txt || fail "table lacks $m"
done
for m in quest snapkv ada-snapkv streaming-llm; do
  grep -q "^synthetic *decode *$m *4x " table.txt || fail "table lacks decode $m"
  grep -q "^synthetic *decode *$m *cov0.9 *not met: " table.txt ||
    fail "table does not report decode $m's unmet coverage budget"
done
! grep -q "a-shape-builtin" table.txt || fail "the placeholder baseline is still there"
grep -q "a-shape *cov0.9 *not met: " table.txt || fail "table does not report the unmet budget"
grep -q "spattn-compare \[" log.txt || fail "no progress lines on stderr"
lines=$(wc -l <results/results.csv)
# header + prefill (dense, dense-policy once, 5 policies x 3 budgets) + decode (dense, 4 policies
# x 3 budgets)
[ "$lines" -eq 31 ] || fail "results.csv has $lines lines, expected 31"
head -1 results/results.csv | grep -q "density,attention_gflops,estimation_gflops" ||
  fail "CSV header"
grep -q '^synthetic,prefill,dense,-,ok,' results/results.csv || fail "dense prefill row"
grep -q '"per_head_mass_recall"' results/results.json || fail "JSON lacks per-head values"
grep -q '"needles"' results/results.json || fail "JSON lacks needles"
# The CSV, read as CSV (budget notes may hold commas).
"$py" - results/results.csv results/per_head.csv <<'PY' || fail "results.csv content"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def fail(msg):
    sys.exit("FAIL: " + msg)
ok = [r for r in rows if r["status"] == "ok"]
for r in rows:
    key = (r["phase"], r["method"], r["budget"])
    if r["status"] != "ok":
        if r["status"] != "not met" or not r["budget_note"] or r["density"] != "":
            fail(f"{key}: bad unmet row {r}")
        continue
    if r["method"] == "dense" and (float(r["density"]) != 1 or float(r["rel_error"]) != 0
                                   or float(r["mass_recall"]) != 1):
        fail(f"{key}: dense is not exact")
    # every kernel computed exactly the key sets that were scored
    if r["kernel_vs_selection_error"] == "" or float(r["kernel_vs_selection_error"]) > 1e-4:
        fail(f"{key}: kernel output differs from its key set: {r['kernel_vs_selection_error']}")
    policy = r["phase"] == "prefill" and r["method"] != "dense"
    # quest's time includes its selection; an eviction's estimation is paid once per sequence,
    # apart from the timed decode step
    included = policy or r["method"] == "quest"
    evicts = r["method"] in ("snapkv", "ada-snapkv", "streaming-llm")
    if (included or evicts) and (r["estimation_ms"] == "" or float(r["estimation_ms"]) < 0):
        fail(f"{key}: no estimation time")
    if included and float(r["estimation_ms"]) > 2 * float(r["time_ms"]):
        fail(f"{key}: estimation time {r['estimation_ms']} vs {r['time_ms']}")
    if policy and "block density" not in r["budget_note"]:
        fail(f"{key}: budget note {r['budget_note']}")
    if evicts and "evicted once" not in r["budget_note"]:
        fail(f"{key}: budget note {r['budget_note']}")
    if r["phase"] == "decode" and r["method"] != "dense" and float(r["time_ms"]) <= 0:
        fail(f"{key}: no decode time")
    # Decoding reads a little more than the kept fraction of the prompt: quest its current page
    # (up to 16 tokens), the eviction methods the decode steps' own tokens (up to 16).
    prompt = int(r["tokens"]) - (int(r["q_tokens"]) if r["phase"] == "decode" else 0)
    slack = 32 / prompt if r["phase"] == "decode" else 1e-9
    if r["budget"] == "4x" and float(r["density"]) > 0.25 + slack:
        fail(f"{key}: density {r['density']} over the 4x budget")
    if r["budget"] == "4x" and r["phase"] == "decode" and r["method"] != "dense" and \
            float(r["density"]) < 0.2:
        fail(f"{key}: density {r['density']} far under the 4x budget")
    estimates = ("vertical-slash", "block-sparse", "flexprefill", "quest", "snapkv", "ada-snapkv")
    if r["method"] in estimates and r["budget"] != "default" and \
            float(r["estimation_gflops"]) <= 0:
        fail(f"{key}: no estimation FLOPs")
    # needles: the generator's first needle of each retrieval head is the last token's
    if r["phase"] == "decode" and int(r["needles_total"]) < 1:
        fail(f"{key}: decoding sees no needle")
    if r["phase"] == "decode" and r["method"] == "dense" and float(r["needle_recall"]) != 1:
        fail(f"{key}: dense misses a needle")
unmet = {(r["method"], r["budget"]) for r in rows if r["status"] == "not met"}
for m in ("a-shape", "vertical-slash", "block-sparse", "strided", "quest", "snapkv",
          "ada-snapkv", "streaming-llm"):
    if (m, "cov0.9") not in unmet:
        fail(f"{m} should not meet a coverage budget: {unmet}")
if ("flexprefill", "cov0.9") in unmet:
    fail("flexprefill takes coverage budgets")
heads = int(rows[0]["heads"])
per_head = list(csv.DictReader(open(sys.argv[2])))
if len(per_head) != heads * len(ok):
    fail(f"per_head.csv has {len(per_head)} rows for {len(ok)} runs")
PY
grep -q '"status": "not met"' results/results.json || fail "JSON lacks the unmet status"
grep -q '"estimation_seconds"' results/results.json || fail "JSON lacks estimation_seconds"
sel=results/selections/synthetic/prefill
for f in rows offsets keys; do
  [ -s "$sel/vertical-slash/4x/$f.npy" ] || fail "selection $f"
done
for f in layout block_offsets block_starts column_offsets columns; do
  [ -s "$sel/vertical-slash/4x/$f.npy" ] || fail "native selection $f"
done
[ ! -e "$sel/a-shape/cov0.9" ] || fail "a selection was written for an unmet budget"
dsel=results/selections/synthetic/decode
for f in decode_layout page_lengths page_offsets pages rows offsets keys; do
  [ -s "$dsel/quest/4x/$f.npy" ] || fail "quest selection $f"
done
for m in snapkv ada-snapkv streaming-llm; do
  for f in eviction_layout kept_offsets kept; do
    [ -s "$dsel/$m/4x/$f.npy" ] || fail "$m selection $f"
  done
done
[ ! -e "$dsel/snapkv/cov0.9" ] || fail "a decode selection was written for an unmet budget"
# The native format, as documented, gives the same key sets as the CSR key lists.
if "$py" -c "import numpy" 2>/dev/null; then
  "$py" - "$sel" <<'PY' || fail "native selections disagree with the key lists"
import os, sys
import numpy as np
root = sys.argv[1]
checked = 0
for method in sorted(os.listdir(root)):
    for budget in sorted(os.listdir(os.path.join(root, method))):
        d = os.path.join(root, method, budget)
        if not os.path.exists(os.path.join(d, "layout.npy")):
            continue
        heads, q_tokens, k_tokens, q_offset, q_blocks, block_q, block_k = np.load(
            os.path.join(d, "layout.npy"))
        boff, starts = np.load(os.path.join(d, "block_offsets.npy")), np.load(
            os.path.join(d, "block_starts.npy"))
        coff, cols = np.load(os.path.join(d, "column_offsets.npy")), np.load(
            os.path.join(d, "columns.npy"))
        rows, offsets, keys = (np.load(os.path.join(d, f + ".npy")) for f in ("rows", "offsets", "keys"))
        assert boff.shape == (heads * q_blocks + 1,) and coff.shape == boff.shape
        R = len(rows)
        for h in range(heads):
            for i, t in enumerate(rows):
                e, pos = h * q_blocks + t // block_q, q_offset + t
                ks = set()
                for s in starts[boff[e]:boff[e + 1]]:
                    ks.update(range(s, min(s + block_k, pos + 1, k_tokens)))
                ks.update(c for c in cols[coff[e]:coff[e + 1]] if c <= pos)
                want = keys[offsets[h * R + i]:offsets[h * R + i + 1]]
                if sorted(ks) != list(want):
                    sys.exit(f"{method}/{budget}: head {h} row {t} differs")
        checked += 1
if checked < 10:
    sys.exit(f"only {checked} native selections")
PY
  # Decode: pages per selection head and step (quest), kept prompt tokens per KV head (eviction).
  "$py" - "$dsel" <<'PY' || fail "native decode selections disagree with the key lists"
import os, sys
import numpy as np
root = sys.argv[1]
checked = 0
for method in sorted(os.listdir(root)):
    for budget in sorted(os.listdir(os.path.join(root, method))):
        d = os.path.join(root, method, budget)
        load = lambda f: np.load(os.path.join(d, f + ".npy"))
        rows, offsets, keys = load("rows"), load("offsets"), load("keys")
        R = len(rows)
        if os.path.exists(os.path.join(d, "decode_layout.npy")):
            heads, steps, q_offset, page_size, group, per_q = load("decode_layout")
            lengths, poff, pages = load("page_lengths"), load("page_offsets"), load("pages")
            assert poff.shape == (heads * steps + 1,) and lengths.shape == (heads * steps,)
            def want(h, t):
                e = (h if per_q else h // group) * steps + t
                assert lengths[e] == q_offset + t + 1
                return [j for p in pages[poff[e]:poff[e + 1]]
                        for j in range(p * page_size, min((p + 1) * page_size, lengths[e]))]
        elif os.path.exists(os.path.join(d, "eviction_layout.npy")):
            kv_heads, group, L, steps = load("eviction_layout")
            koff, kept = load("kept_offsets"), load("kept")
            assert koff.shape == (kv_heads + 1,)
            def want(h, t):
                g = h // group
                return list(kept[koff[g]:koff[g + 1]]) + list(range(L, L + t + 1))
        else:
            continue  # dense
        assert R == steps, (R, steps)
        for h in range(len(offsets[:-1]) // R):
            for i, t in enumerate(rows):
                if want(h, t) != list(keys[offsets[h * R + i]:offsets[h * R + i + 1]]):
                    sys.exit(f"{method}/{budget}: head {h} step {t} differs")
        checked += 1
if checked < 8:
    sys.exit(f"only {checked} native decode selections")
PY
fi
for f in q k v needles; do [ -s "results/inputs/synthetic/$f.npy" ] || fail "input $f.npy"; done

# The saved .npy inputs read back through --input give the same accuracy (same data, f32).
"$tool" --input results/inputs/synthetic --reps 1 --eval-rows 32 --threads 2 "${budgets[@]}" \
  --out again >/dev/null 2>&1 || fail "reading saved inputs"
cols() {
  "$py" -c 'import csv, sys
for r in csv.DictReader(open(sys.argv[1])):
    print(r["phase"], r["method"], r["budget"], r["status"], r["density"], r["rel_error"],
          r["mass_recall"])' "$1"
}
cols results/results.csv >a.txt
cols again/results.csv >b.txt
diff a.txt b.txt >/dev/null || { diff a.txt b.txt >&2; fail "saved inputs give other numbers"; }
# The default budgets (5x, 10x, 20x) on a short input: budgets below a policy's forced parts are
# reported as not met, and the run still succeeds.
"$tool" --tokens 256 --heads 4 --kv-heads 2 --head-dim 32 --reps 1 --eval-rows 16 --threads 2 \
  --phase prefill --out short >short.txt 2>/dev/null || fail "short run"
grep -q "not met" short.txt || fail "short run reports no unmet budget"
[ "$(grep -c ',not met,' short/results.csv)" -gt 0 ] || fail "short run CSV lacks unmet rows"
# The same in decoding: SnapKV's forced 4 + 128 tokens do not fit 5x of a 240-token prompt.
"$tool" --tokens 256 --heads 4 --kv-heads 2 --head-dim 32 --reps 1 --threads 2 --phase decode \
  --out short >short.txt 2>/dev/null || fail "short decode run"
grep -q "snapkv *5x *not met: " short.txt || fail "short decode run: snapkv 5x is not reported"
grep -q "^synthetic,decode,quest,20x,ok," short/results.csv || fail "short decode run: quest 20x"
# Adaptive allocation: the heads of vertical-slash share the budget (pairs over all heads within
# heads x 4x); A-shape is a fixed pattern: its row reports the budget as not met.
"$tool" "${small[@]}" --phase prefill --methods vertical-slash,a-shape \
  --budgets 4@adaptive --out ada >ada.txt 2>/dev/null || fail "adaptive run"
grep -q "^synthetic,prefill,vertical-slash,4x-ada,ok," ada/results.csv ||
  fail "adaptive vertical-slash row"
grep -q "^synthetic,prefill,a-shape,4x-ada,not met," ada/results.csv || fail "adaptive a-shape row"
python3 - ada/results.csv <<'PY' || fail "adaptive vertical-slash exceeds the shared budget"
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["method"] == "vertical-slash"]
assert rows and all(float(r["density"]) <= 0.25 + 1e-9 for r in rows), rows
PY
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
# (dense rows have an empty budget note, so plain comma splitting holds: needles_found is column
# 24, needles_total 25)
awk -F, '$1 == "layer03" && $2 == "decode" && $3 == "dense" && $25 > 0 && $24 == $25 { found = 1 }
         END { exit !found }' lay2/results.csv || fail "needles of layer03 not read"
expect_error "outside the input" --input layers --layers 3 --tokens 64 --decode-queries 4
echo "compare tool: all checks passed"
