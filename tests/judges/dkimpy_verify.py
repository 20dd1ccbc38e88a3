#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Judge: verify every DKIM-Signature of the message on stdin with dkimpy.

Run with Debian's /usr/bin/python3 (python3-dkim, python3-dnspython). Key lookups go only to the
DNS server given with --dns (a test server on loopback); the system resolver configuration is
never read, so no query can leave the machine.

Output, one line per DKIM-Signature in header order (tab separated):
    RESULT <index> <result> <d=> <s=> <detail>
result is one of:
    pass       the signature verified
    fail       the body hash or the header signature does not match
    invalid    the signature or the key record cannot be used (syntax, unsupported, key missing
               or too small, expired ...): RFC 8601 neutral/permerror
    temperror  the key lookup timed out or got SERVFAIL
dkimpy's verify() folds most of these into False; the DNS callback and the logger tell them apart.
"""

import argparse
import logging
import sys

import dkim
import dns.exception
import dns.rdatatype
import dns.resolver


class Collect(logging.Handler):
    """Keeps the error-level messages dkimpy logs when it rejects a key."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def text(value):
    """dkimpy keeps d=/s= as bytes after parsing, but its defaults are str or None."""
    if value is None:
        return ''
    if isinstance(value, bytes):
        return value.decode('ascii', 'replace')
    return str(value)


def split_hostport(value):
    host, _, port = value.rpartition(':')
    return host.strip('[]'), int(port)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--dns', required=True, help='HOST:PORT of the test DNS server')
    ap.add_argument('--timeout', type=float, default=5.0, help='DNS timeout in seconds')
    ap.add_argument('--minkey', type=int, default=1024,
                    help='smallest RSA key accepted (dkimpy default 1024, RFC 8301)')
    args = ap.parse_args()

    host, port = split_hostport(args.dns)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port
    resolver.timeout = args.timeout
    resolver.lifetime = args.timeout
    resolver.search = []

    dns_state = {}

    def dnsfunc(name, timeout=5):
        qname = name.decode('ascii') if isinstance(name, bytes) else name
        try:
            answer = resolver.resolve(qname, dns.rdatatype.TXT, search=False,
                                      raise_on_no_answer=False, lifetime=args.timeout)
        except dns.resolver.NXDOMAIN:
            dns_state['last'] = 'NXDOMAIN'
            return None
        except dns.resolver.NoNameservers as e:
            dns_state['last'] = 'SERVFAIL'
            raise dkim.DnsTimeoutError('SERVFAIL: {0}'.format(e))
        except dns.exception.Timeout as e:
            dns_state['last'] = 'TIMEOUT'
            raise dkim.DnsTimeoutError('timeout: {0}'.format(e))
        dns_state['last'] = 'ANSWER'
        for rrset in answer.response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                # dkimpy's own lookup does the same: first record, strings joined.
                return b''.join(next(iter(rrset)).strings)
        dns_state['last'] = 'NODATA'
        return None

    message = sys.stdin.buffer.read()
    collect = Collect()
    logger = logging.getLogger('dkimpy-judge')
    logger.addHandler(collect)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False

    count = len([1 for name, _ in dkim.DKIM(message).headers
                 if name.lower() == b'dkim-signature'])
    print('SIGNATURES\t{0}'.format(count))
    for idx in range(count):
        collect.messages = []
        dns_state.clear()
        d = dkim.DKIM(message, logger=logger, minkey=args.minkey, timeout=args.timeout)
        detail = ''
        try:
            if d.verify(idx=idx, dnsfunc=dnsfunc):
                result = 'pass'
            elif dns_state.get('last') in ('SERVFAIL', 'TIMEOUT'):
                result = 'temperror'
                detail = dns_state['last']
            elif collect.messages:
                result = 'invalid'
            else:
                result = 'fail'
        except dkim.ValidationError as e:
            detail = str(e)
            result = 'fail' if 'body hash mismatch' in detail else 'invalid'
        except dkim.DKIMException as e:
            detail = '{0}: {1}'.format(type(e).__name__, e)
            result = 'invalid'
        except Exception as e:  # a crash on hostile input is still a verdict: not pass
            detail = 'crash {0}: {1}'.format(type(e).__name__, e)
            result = 'invalid'
        if collect.messages:
            detail = (detail + ' ' + '; '.join(collect.messages)).strip()
        print('RESULT\t{0}\t{1}\t{2}\t{3}\t{4}'.format(
            idx, result, text(getattr(d, 'domain', None)), text(getattr(d, 'selector', None)),
            detail.replace('\t', ' ').replace('\n', ' ')))


if __name__ == '__main__':
    main()
