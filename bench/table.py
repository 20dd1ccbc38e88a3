#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Prints bench/run's comparison table and the targets of issue 7 from its result files.

usage: table.py HEADER RESULTS.jsonl OPENSSL-SPEED.txt MEMORY.txt NPROC
"""
import json
import re
import sys

header, results, speed_file, mem_file, nproc = sys.argv[1:6]
dmarc_ran = len(sys.argv) > 6 and sys.argv[6] == "1"
nproc = int(nproc)
rows = [json.loads(line) for line in open(results) if line.strip()]


def side(daemon):
    return "theirs" if daemon.startswith("open") else "ours"


table = {}
order = []
for r in rows:
    key = (r["scenario"], r["conc"])
    if key not in table:
        table[key] = {}
        order.append(key)
    table[key][side(r["daemon"])] = r


def rate(r):
    return r.get("msgs_per_s", 0.0) if r else 0.0


def lat(r, p):
    return r.get("latency", {}).get(p, 0.0) if r else 0.0


def cpu_ms(r):
    if not r or not r.get("messages"):
        return float("nan")
    return 1000.0 * r["cpu_s"] / r["messages"]


def ratio(a, b):
    return a / b if b else float("nan")


print(open(header).read().rstrip())
print()
cols = ("scenario", "c", "theirs msg/s", "ours msg/s", "ours/theirs",
        "p50 ms th/ours", "p99 ms th/ours", "CPU ms/msg th/ours", "CPU ratio", "peak RSS MB th/ours", "fail th/ours")
print("| " + " | ".join(cols) + " |")
print("|" + "|".join("---" for _ in cols) + "|")
for key in order:
    t, o = table[key].get("theirs"), table[key].get("ours")
    print("| {} | {} | {:.0f} | {:.0f} | {:.2f} | {:.2f} / {:.2f} | {:.2f} / {:.2f} | {:.3f} / {:.3f} | {:.2f} | {:.1f} / {:.1f} | {} / {} |".format(
        key[0], key[1], rate(t), rate(o), ratio(rate(o), rate(t)),
        lat(t, "p50_ms"), lat(o, "p50_ms"), lat(t, "p99_ms"), lat(o, "p99_ms"),
        cpu_ms(t), cpu_ms(o), ratio(cpu_ms(o), cpu_ms(t)),
        (t or {}).get("hwm_kb", 0) / 1024, (o or {}).get("hwm_kb", 0) / 1024,
        (t or {}).get("failed", "-"), (o or {}).get("failed", "-")))
if not dmarc_ran:
    print("| dmarc-spf | - | not run | not run | - | - | - | - | - | - | - |")

# openssl speed: "rsa 2048 bits 0.000631s 0.000018s 1585.0 54838.1" and
# " 253 bits EdDSA (Ed25519)   0.0000s   0.0001s  29000.3  10000.0"
text = open(speed_file).read()
rsa = re.search(r"^rsa 2048 bits\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", text, re.M)
ed = re.search(r"EdDSA \(Ed25519\)\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", text)
print()
if rsa:
    print("openssl speed (one core): RSA-2048 sign {:.0f}/s verify {:.0f}/s".format(float(rsa.group(1)), float(rsa.group(2))), end="")
if ed:
    print("; Ed25519 sign {:.0f}/s verify {:.0f}/s".format(float(ed.group(1)), float(ed.group(2))), end="")
print()

print()
print("targets (issue 7):")


def get(scen, c, s):
    return table.get((scen, c), {}).get(s)


top = max((k[1] for k in order), default=0)
for scen in ("verify-4k", "verify-1m", "dmarc-spf"):
    t, o = get(scen, top, "theirs"), get(scen, top, "ours")
    if t and o:
        print("  {} at c={}: ours/theirs = {:.2f}x (target >= 3x)".format(scen, top, ratio(rate(o), rate(t))))
o = get("sign-rsa", top, "ours")
if o and rsa:
    cores = float(rsa.group(1)) * nproc
    print("  RSA-2048 signing at c={}: {:.0f} msg/s = {:.0%} of {} cores' openssl sign rate {:.0f}/s (target >= 85%)".format(
        top, rate(o), rate(o) / cores, nproc, cores))
o, t = get("sign-ed25519", top, "ours"), get("sign-rsa", top, "theirs")
if o and t:
    print("  Ed25519 signing at c={}: {:.1f}x OpenDKIM's RSA signing (target >= 10x)".format(top, ratio(rate(o), rate(t))))
for scen in ("sign-rsa", "sign-ed25519", "verify-4k", "verify-1m", "dmarc-spf"):
    o = get(scen, 8, "ours")
    if o:
        print("  p99 at c=8, {}: {:.2f} ms (target <= 5 ms)".format(scen, lat(o, "p99_ms")))
for scen in ("sign-rsa", "sign-ed25519", "verify-4k", "verify-1m", "dmarc-spf"):
    t, o = get(scen, top, "theirs"), get(scen, top, "ours")
    if t and o:
        print("  CPU per message, {} c={}: ours/theirs = {:.2f} (target <= 0.33)".format(scen, top, ratio(cpu_ms(o), cpu_ms(t))))
for scen in ("nagle-verify", "nagle-sign"):
    t, o = get(scen, 1, "theirs"), get(scen, 1, "ours")
    if t and o:
        print("  no-NODELAY, no-quick-ack client, {} c=1: p50 OpenDKIM {:.2f} ms, ours {:.2f} ms (target < 2 ms)".format(
            scen, lat(t, "p50_ms"), lat(o, "p50_ms")))
if not dmarc_ran:
    print("  DMARC+SPF: not run")
print()
print("memory:")
for line in open(mem_file):
    f = line.split()
    kv = dict(x.split("=", 1) for x in f[2:] if "=" in x)
    if f[0] == "idle1000":
        print("  1000 idle sessions, {}: RSS {:.1f} MB ({:.1f} MB before; {} sessions held) (target <= 64 MB)".format(
            f[1], int(kv.get("rss_with_1000_idle_kb", 0)) / 1024, int(kv.get("rss_before_kb", 0)) / 1024, kv.get("sessions")))
    elif f[0] == "big50m":
        print("  one 50 MB message ({}), {}: anonymous memory +{:.1f} MB (target <= 8 MB; bench exit {})".format(
            f[2], f[1], int(kv.get("increase_kb", 0)) / 1024, kv.get("bench_exit")))
