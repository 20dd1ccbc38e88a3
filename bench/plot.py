#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Draws bench/run's comparison charts from its result rows (one JSON object per line).

usage: plot.py RESULTS.jsonl OUTDIR

Writes OUTDIR/msgs-per-s.svg (throughput) and OUTDIR/cpu-per-message.svg (daemon CPU time per
message): one panel per concurrency, one pair of bars per scenario, theirs (OpenDKIM/OpenDMARC)
beside ours. A row carries msgs_per_s, and either cpu_s with messages (what bench/run records) or
cpu_ms_per_msg (rows transcribed from a BENCHMARKS.md table).
"""
import json
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

# Stable output: the same rows give the same SVG bytes (no dates, fixed element ids).
matplotlib.rcParams["svg.hashsalt"] = "authmilter-bench"
matplotlib.rcParams["svg.fonttype"] = "none"

results, outdir = sys.argv[1:3]
rows = [json.loads(line) for line in open(results) if line.strip()]


def side(daemon):
    return "theirs" if daemon.startswith("open") else "ours"


def cpu_ms(r):
    if "cpu_ms_per_msg" in r:
        return r["cpu_ms_per_msg"]
    return 1000.0 * r["cpu_s"] / r["messages"] if r.get("messages") else float("nan")


concs = sorted({r["conc"] for r in rows})
scenarios = []
for r in rows:
    if r["scenario"] not in scenarios:
        scenarios.append(r["scenario"])
values = {(r["scenario"], r["conc"], side(r["daemon"])): r for r in rows}


def chart(metric, ylabel, title, filename):
    fig, axes = plt.subplots(1, len(concs), figsize=(4.2 * len(concs), 4.2), squeeze=False)
    for ax, c in zip(axes[0], concs):
        names = [s for s in scenarios if (s, c, "ours") in values or (s, c, "theirs") in values]
        xs = range(len(names))
        for offset, who, label, color in ((-0.2, "theirs", "OpenDKIM / OpenDMARC", "#9e9e9e"),
                                          (0.2, "ours", "authmilter", "#1f77b4")):
            ys = [metric(values[(s, c, who)]) if (s, c, who) in values else 0 for s in names]
            ax.bar([x + offset for x in xs], ys, width=0.4, label=label, color=color)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"concurrency {c}", fontsize=10)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(f"{outdir}/{filename}", metadata={"Date": None})
    plt.close(fig)


chart(lambda r: r.get("msgs_per_s", 0.0), "messages per second", "Throughput (higher is better)",
      "msgs-per-s.svg")
chart(cpu_ms, "daemon CPU ms per message", "CPU per message (lower is better)",
      "cpu-per-message.svg")
