#!/usr/bin/env python3
"""Prints a Markdown table from Google Benchmark JSON files (results/spattn_bench_*.json).

Each row: benchmark, time per iteration, its rate (flop_per_s or byte_per_s) and the fraction
of this run's ceiling (frac_fma_peak / frac_read_bw), plus any speedup/density counters.
Usage: scripts/perf_table.py results/spattn_bench_dense.json [more.json ...]
"""
import json
import sys

KEYS = ["flop_per_s", "byte_per_s", "frac_fma_peak", "frac_read_bw", "speedup", "density"]


def fmt(key, value):
    if key.endswith("per_s"):
        return f"{value / 1e9:.1f} G/s"
    if key.startswith("frac"):
        return f"{100 * value:.0f}%"
    if key == "speedup":
        return f"{value:.2f}x"
    return f"{value:.3g}"


def main(paths):
    print("| benchmark | time | " + " | ".join(KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for b in data["benchmarks"]:
            if b.get("run_type") == "aggregate":
                continue
            name = b["name"].replace("/real_time", "").split("/min_time")[0]
            time = f'{b["real_time"]:.3g} {b["time_unit"]}'
            cells = [fmt(k, b[k]) if k in b else "" for k in KEYS]
            print(f"| {name} | {time} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
