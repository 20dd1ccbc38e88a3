#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Judge: dkimpy's ARC (RFC 8617) verifier and sealer, on the message on stdin.

Run with Debian's /usr/bin/python3 (python3-dkim, python3-authres, python3-dnspython,
python3-nacl). Key lookups go only to the DNS server given with --dns (a test server on
loopback); the system resolver configuration is never read.

    dkimpy_arc.py verify --dns HOST:PORT
        prints one line: CV<TAB><pass|fail|none><TAB><dkimpy's reason>
        (dkimpy answers None for a chain whose newest seal says cv=fail: printed as fail)
    dkimpy_arc.py seal --key FILE --domain D --selector S --srv-id ID [--algorithm A]
        [--headers from:subject:...]
        writes the message with the new ARC set prepended. dkimpy takes cv= from the arc=
        result of the Authentication-Results fields with authserv-id ID (none when absent).

Keys: a PKCS#1 PEM RSA key, or for ed25519-sha256 the base64 of the raw 32-byte seed.

Ed25519: dkimpy (1.1.4 in Debian 12, 1.1.8 on PyPI) lists only rsa-sha256 in its ARC
algorithm table, and its arc_sign() fixes rsa-sha256 and reads only PEM keys. Its ARC code
otherwise runs through the same signing and verification functions as its DKIM code, which
does ed25519-sha256 (RFC 8463). This judge lists ed25519-sha256 in that table, seals through
the ARC class with the algorithm given, and hands it the PyNaCl key its DKIM signer builds
from a seed. Everything else (canonicalization, field selection, chain rules) is dkimpy's.
"""

import argparse
import sys

import hashlib

import dkim
import dkim.crypto
import dns.exception
import dns.rdatatype
import dns.resolver


dkim.crypto.ARC_HASH_ALGORITHMS.setdefault(b'ed25519-sha256', hashlib.sha256)


def split_hostport(value):
    host, _, port = value.rpartition(':')
    return host.strip('[]'), int(port)


def dnsfunc_for(addr, timeout):
    host, port = split_hostport(addr)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port
    resolver.timeout = timeout
    resolver.lifetime = timeout
    resolver.search = []

    def dnsfunc(name, timeout=5):
        qname = name.decode('ascii') if isinstance(name, bytes) else name
        try:
            answer = resolver.resolve(qname, dns.rdatatype.TXT, search=False,
                                      raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return None
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as e:
            raise dkim.DnsTimeoutError(str(e))
        for rrset in answer.response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b''.join(next(iter(rrset)).strings)
        return None

    return dnsfunc


def verify(args):
    message = sys.stdin.buffer.read()
    try:
        cv, _results, reason = dkim.arc_verify(message, dnsfunc=dnsfunc_for(args.dns, 5.0),
                                                minkey=1024)
    except Exception as e:  # a crash on hostile input is still a verdict: not pass
        cv, reason = b'fail', 'crash {0}: {1}'.format(type(e).__name__, e)
    word = cv.decode('ascii') if isinstance(cv, bytes) else ('fail' if cv is None else str(cv))
    print('CV\t{0}\t{1}'.format(word, str(reason).replace('\t', ' ').replace('\n', ' ')))


def seal(args):
    with open(args.key, 'rb') as f:
        key = f.read().strip()
    if args.algorithm == 'ed25519-sha256':
        import nacl.encoding
        import nacl.signing
        nacl_key = nacl.signing.SigningKey(key, encoder=nacl.encoding.Base64Encoder)
        dkim.parse_pem_private_key = lambda _data: nacl_key
    include = None
    if args.headers:
        include = [h.strip().encode() for h in args.headers.split(':') if h.strip()]
    message = sys.stdin.buffer.read()
    arc = dkim.ARC(message, signature_algorithm=args.algorithm.encode())
    fields = arc.sign(args.selector.encode(), args.domain.encode(), key, args.srv_id.encode(),
                      include_headers=include or arc.default_sign_headers())
    if not fields:
        sys.exit('dkimpy produced no ARC set')
    sys.stdout.buffer.write(b''.join(fields) + message)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    v = sub.add_parser('verify')
    v.add_argument('--dns', required=True)
    s = sub.add_parser('seal')
    s.add_argument('--key', required=True)
    s.add_argument('--domain', required=True)
    s.add_argument('--selector', required=True)
    s.add_argument('--srv-id', required=True)
    s.add_argument('--algorithm', default='rsa-sha256')
    s.add_argument('--headers', default=None)
    args = ap.parse_args()
    if args.cmd == 'verify':
        verify(args)
    else:
        seal(args)


if __name__ == '__main__':
    main()
