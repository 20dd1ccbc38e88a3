#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Independent signer: sign the message on stdin with dkimpy, write the signed message to stdout.

Run with Debian's /usr/bin/python3 (python3-dkim). The key file holds a PKCS#1 PEM RSA key
("BEGIN RSA PRIVATE KEY", the only RSA form dkimpy parses) or, for ed25519-sha256, the base64 of
the raw 32-byte Ed25519 seed (RFC 8463). The DKIM-Signature header is prepended to the message.
"""

import argparse
import sys

import dkim


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--key', required=True)
    ap.add_argument('--domain', required=True)
    ap.add_argument('--selector', required=True)
    ap.add_argument('--algorithm', default='rsa-sha256')
    ap.add_argument('--canon', default='relaxed/relaxed')
    ap.add_argument('--headers', default=None, help='colon-separated header names to sign')
    args = ap.parse_args()

    with open(args.key, 'rb') as f:
        key = f.read().strip()
    header_canon, _, body_canon = args.canon.partition('/')
    canon = (header_canon.encode(), (body_canon or 'simple').encode())
    include = None
    if args.headers:
        include = [h.strip().encode() for h in args.headers.split(':') if h.strip()]
    message = sys.stdin.buffer.read()
    sig = dkim.sign(message, args.selector.encode(), args.domain.encode(), key,
                    canonicalize=canon, signature_algorithm=args.algorithm.encode(),
                    include_headers=include)
    if not sig:
        sys.exit('dkimpy produced no signature')
    sys.stdout.buffer.write(sig + message)


if __name__ == '__main__':
    main()
