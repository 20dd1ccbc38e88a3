#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where a daemon's CPU goes, per benchmark row: reads `perf report` text (flat, by DSO and
symbol) for each profile given and prints one Markdown row per profile with the share of samples
in public-key crypto, hashing, the kernel, the allocator and the rest (our code and the Rust
libraries: tokio, indymilter, mail-auth's parsing and canonicalisation).

usage: where_time.py NAME=REPORT.txt ...
"""
import re
import sys

LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$")
HASH = re.compile(r"sha(1|256|512)|md5|blake|digest_update|DigestUpdate", re.I)
CRYPTO = re.compile(
    r"rsaz|rsa_|_rsa|bn_|BN_|mont|ed25519|x25519|curve25519|fiat_|ge_|sc_muladd|sc_reduce|"
    r"ecp_|ec_|p256|mod_exp|mulx|sqrx|ifma|RSA_|EVP_PKEY|pkey_",
)
ALLOC = re.compile(r"^(malloc|free|cfree|realloc|calloc|_int_|malloc_|__libc_malloc|__libc_free|"
                   r"__rust_alloc|__rust_dealloc|__rust_realloc|__rdl_|tcache)")


def classify(dso, kind, sym):
    if kind == "k" or dso.startswith("[kernel"):
        return "kernel"
    if HASH.search(sym):
        return "hashing"
    # The C daemons' crypto libraries, whatever the symbol (also their per-call provider
    # lookups: the cost of using the library).
    if CRYPTO.search(sym) or re.search(r"libcrypto|libnettle|libgnutls|libhogweed|libgmp", dso):
        return "crypto"
    if ALLOC.search(sym.split("::")[-1]) or ALLOC.search(sym):
        return "allocator"
    return "ours + libraries"


COLUMNS = ["crypto", "hashing", "kernel", "allocator", "ours + libraries"]


def shares(path):
    total = {c: 0.0 for c in COLUMNS}
    for line in open(path, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        total[classify(dso, kind, sym)] += pct
    s = sum(total.values()) or 1.0
    return {c: 100.0 * v / s for c, v in total.items()}


def main():
    print("| row | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for arg in sys.argv[1:]:
        name, path = arg.split("=", 1)
        sh = shares(path)
        print("| " + name + " | " + " | ".join("%.0f %%" % sh[c] for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
