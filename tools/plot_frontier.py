#!/usr/bin/env python3
"""Plot spattn-compare's frontier: speedup over dense (x) against accuracy (y).

    python3 tools/plot_frontier.py results/results.json results/frontier.png

One row of panels per phase (prefill, decode; a phase where only dense ran is not drawn); left: attention-mass recall (higher is better),
right: output relative error against dense (lower is better, log scale). One line per method
across its budgets, each point labelled with its budget; dense is the reference point at 1x.
With several inputs (e.g. layers of a model), points are averaged over inputs (speedup: geometric
mean). Runs whose budget a method could not meet (status "not met") have no point; they are listed
under the plot. Needs matplotlib (Debian: python3-matplotlib).
"""
import collections
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402


def budget_order(label):
    """Sort budgets from least to most compression ('5x' < '10x' < '20x')."""
    digits = "".join(c for c in label if c.isdigit() or c == ".")
    try:
        value = float(digits)
    except ValueError:
        return (1, label)
    return (0, value if label.endswith("x") else -value)


def load(path):
    with open(path) as f:
        data = json.load(f)
    groups = collections.defaultdict(list)
    for r in data["results"]:
        if r.get("status", "ok") != "ok":
            continue  # a budget the method cannot meet: no point (listed under the plot)
        groups[(r["phase"], r["method"], r["budget"])].append(r)
    points = {}
    for key, rs in groups.items():
        speedups = [max(r["speedup"], 1e-9) for r in rs]
        points[key] = {
            "speedup": math.exp(sum(math.log(s) for s in speedups) / len(speedups)),
            "recall": sum(r["mass_recall"] for r in rs) / len(rs),
            "error": sum(r["rel_error"] for r in rs) / len(rs),
            "density": sum(r["density"] for r in rs) / len(rs),
        }
    return data, points


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    data, points = load(argv[1])
    # A phase with dense alone (no sparse method ran there) has no frontier to draw.
    phases = [p for p in ("prefill", "decode")
              if any(k[0] == p and k[1] != "dense" for k in points)]
    if not phases:
        phases = [p for p in ("prefill", "decode") if any(k[0] == p for k in points)]
    if not phases:
        print("plot_frontier: no results to plot in " + argv[1], file=sys.stderr)
        return 1
    skipped = [p for p in ("prefill", "decode")
               if p not in phases and any(r["phase"] == p for r in data["results"])]
    unmet = collections.defaultdict(list)  # (phase, method) -> budgets not met
    for r in data["results"]:
        if r.get("status", "ok") != "ok" and r["phase"] in phases:
            unmet[(r["phase"], r["method"])].append(r["budget"])
    cfg = data.get("config", {})
    fig, axes = plt.subplots(len(phases), 2, figsize=(12, 4.6 * len(phases)), squeeze=False)
    markers = "osD^v<>ph*"
    for row, phase in enumerate(phases):
        # Colours and markers per phase (each phase has at most ~10 methods; across phases the
        # method sets differ), dense first so that it always looks the same.
        methods = sorted({k[1] for k in points if k[0] == phase}, key=lambda m: (m != "dense", m))
        colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
        # Exact runs (error 0, e.g. a policy default that keeps everything on a short input) are
        # drawn on a floor line below the smallest non-zero error of the phase.
        nonzero = [v["error"] for k, v in points.items()
                   if k[0] == phase and k[1] != "dense" and v["error"] > 0]
        floor = min(nonzero) / 4 if nonzero else 1e-9
        for col, (metric, label) in enumerate(
            [("recall", "attention-mass recall (higher is better)"),
             ("error", "output relative error vs dense (lower is better)")]
        ):
            ax = axes[row][col]
            for i, m in enumerate(methods):
                # Along the line from the densest run to the sparsest, whatever the budget kind
                # (compression, tokens, coverage, the policy default).
                budgets = sorted({k[2] for k in points if k[0] == phase and k[1] == m},
                                 key=lambda b: (-points[(phase, m, b)]["density"], budget_order(b)))
                if not budgets:
                    continue
                if metric == "error" and m == "dense":
                    continue  # error 0 by definition: noted on the panel instead
                xs = [points[(phase, m, b)]["speedup"] for b in budgets]
                ys = [points[(phase, m, b)][metric] for b in budgets]
                if metric == "error":
                    ys = [max(y, floor) for y in ys]  # exact: 0 on a log axis, on the floor
                ax.plot(xs, ys, marker=markers[i % len(markers)], color=colors[m],
                        label=m, linewidth=2, markersize=7)
                for x, y, b in zip(xs, ys, budgets):
                    if b != "-":
                        ax.annotate(b, (x, y), textcoords="offset points", xytext=(5, 5),
                                    fontsize=8, color=colors[m])
            ax.set_xscale("log")
            xs_all = [v["speedup"] for k, v in points.items() if k[0] == phase] + [1.0]
            lo, hi = min(xs_all) / 1.3, max(xs_all) * 1.3
            ax.set_xlim(lo, hi)
            ticks = [t for t in (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
                     if lo <= t <= hi]
            ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
            if metric == "error":
                ax.set_yscale("log")
                errs = [max(v["error"], floor) for k, v in points.items()
                        if k[0] == phase and k[1] != "dense"]
                if errs:  # at least one decade, so small differences do not look large
                    ax.set_ylim(min(min(errs) / 1.5, max(errs) / 10), max(errs) * 1.5)
                if len(nonzero) < len(errs):
                    ax.axhline(floor, color="grey", linewidth=0.8, linestyle="--")
                    ax.annotate("exact (error 0)", (1, floor), xycoords=("axes fraction", "data"),
                                textcoords="offset points", xytext=(-4, 3), ha="right",
                                fontsize=8, color="grey")
                ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=30))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
                ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))
                ax.text(0.02, 0.97, "dense: error 0 at 1x (the reference)", fontsize=8, va="top",
                        transform=ax.transAxes, color="grey")
            else:  # zoomed to the recalls seen, in steps of 0.1
                recalls = [v["recall"] for k, v in points.items() if k[0] == phase]
                ax.set_ylim(max(0.0, math.floor((min(recalls) - 0.02) * 10) / 10), 1.02)
            ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
            ax.set_xlabel("measured speedup over dense (same run, log scale)")
            ax.set_ylabel(label)
            ax.set_title(f"{phase}: speedup vs {metric}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    r0 = data["results"][0] if data["results"] else {}
    fig.suptitle(
        "spattn-compare frontier: {} ({} tokens, {}/{} heads, d={}, {}, {} threads)".format(
            cfg.get("input", "?"), r0.get("tokens", "?"), r0.get("heads", "?"),
            r0.get("kv_heads", "?"), r0.get("head_dim", "?"), cfg.get("dtype", "?"),
            cfg.get("threads", "?")),
        fontsize=11)
    notes = []
    if unmet:
        notes.append("budget not met (no point): " + "; ".join(
            f"{ph} {m} {', '.join(sorted(set(bs), key=budget_order))}"
            for (ph, m), bs in sorted(unmet.items())))
    if skipped:
        notes.append(f"{', '.join(skipped)}: dense only (no sparse method ran), not drawn")
    # Eviction methods (tools/compare_methods.hpp, eviction_method) say so in their budget note.
    evictions = sorted({r["method"] for r in data["results"] if r["phase"] == "decode"
                        and "evicted once" in r.get("budget_note", "")})
    if "decode" in phases and evictions:
        notes.append(f"decode: {', '.join(evictions)} evict the prompt's cache once per sequence "
                     "(its cost is their estimation, not in the step time plotted); other decode "
                     "methods' times include their per-step selection")
    if notes:
        fig.text(0.01, 0.005, "\n".join(notes), fontsize=8, color="dimgrey", va="bottom")
    fig.tight_layout(rect=(0, 0.025 * len(notes), 1, 1))
    fig.savefig(argv[2], dpi=110)
    print("plot_frontier: wrote " + argv[2], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
