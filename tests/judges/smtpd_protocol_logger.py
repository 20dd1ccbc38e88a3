#!/usr/bin/python3
"""A minimal OpenSMTPD filter (smtpd-filters protocol) that records what smtpd says.

Why: our OpenSMTPD front end must speak the protocol smtpd really speaks, not the one its
manual page (absent from Debian's package) or other filters' sources suggest. This filter
registers for every report event and for the data-line and commit filter phases, leaves
messages unchanged, and appends every line it receives from smtpd to LOGFILE, so a test can
read the transcript.

Usage: smtpd_protocol_logger.py LOGFILE

In-band controls (for tests), taken from the message's own lines as seen at data-line:
  a line "X-Logger-Reject: yes"  -> the commit of that message is answered with
                                    "reject|550 5.7.1 test"
  a line "X-Logger-Exit: yes"    -> the filter exits at once (smtpd's reaction is the test)
  a line "X-Logger-Garbage: yes" -> the filter writes a malformed line to smtpd
"""

import os
import sys

REPORT_EVENTS = [
    "link-connect", "link-disconnect", "link-greeting", "link-identify", "link-tls",
    "link-auth", "tx-reset", "tx-begin", "tx-mail", "tx-rcpt", "tx-envelope", "tx-data",
    "tx-commit", "tx-rollback", "protocol-client", "protocol-server", "filter-report",
    "filter-response", "timeout",
]


def main():
    log = open(sys.argv[1], "a", buffering=1, encoding="utf-8", errors="surrogateescape")
    out = sys.stdout
    reject = set()
    log.write("-- started: uid=%d gid=%d argv=%r\n" % (os.getuid(), os.getgid(), sys.argv))

    def send(line):
        out.write(line + "\n")
        out.flush()
        log.write(">> " + line + "\n")

    for raw in sys.stdin:
        line = raw.rstrip("\n")
        log.write(line + "\n")
        if line == "config|ready":
            for ev in REPORT_EVENTS:
                send("register|report|smtp-in|" + ev)
            send("register|filter|smtp-in|data-line")
            send("register|filter|smtp-in|commit")
            send("register|ready")
            continue
        fields = line.split("|", 7)
        if fields[0] != "filter" or len(fields) < 7:
            continue
        phase, session, token = fields[4], fields[5], fields[6]
        if phase == "data-line":
            text = fields[7] if len(fields) > 7 else ""
            if text == "X-Logger-Reject: yes":
                reject.add(session)
            elif text == "X-Logger-Exit: yes":
                log.write("-- exiting on request\n")
                sys.exit(0)
            elif text == "X-Logger-Garbage: yes":
                send("this is not a protocol line")
            send("filter-dataline|%s|%s|%s" % (session, token, text))
        elif phase == "commit":
            if session in reject:
                reject.discard(session)
                send("filter-result|%s|%s|reject|550 5.7.1 test" % (session, token))
            else:
                send("filter-result|%s|%s|proceed" % (session, token))
        else:
            send("filter-result|%s|%s|proceed" % (session, token))


if __name__ == "__main__":
    main()
