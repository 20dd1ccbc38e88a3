#!/usr/bin/env python3
"""Independent judge for aggregate reports: parses each FILE (.xml, .xml.gz or a report mail)
with parsedmarc, offline, and prints one JSON object per file with what the tests compare:
metadata, published policy and every record (source, count, evaluated policy, identifiers,
auth results). Exit status 1 when parsedmarc rejects a file."""
import json
import sys

import parsedmarc


def main(paths):
    out = []
    for path in paths:
        try:
            parsed = parsedmarc.parse_report_file(
                path, offline=True, always_use_local_files=True, nameservers=["127.0.0.1"],
                dns_timeout=0.1)
        except Exception as e:  # parsedmarc raises its own InvalidDMARCReport and friends
            print(f"{path}: parsedmarc: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        report = parsed["report"]
        meta = report["report_metadata"]
        pol = report["policy_published"]
        recs = []
        for r in report["records"]:
            recs.append({
                "ip": r["source"]["ip_address"],
                "count": r["count"],
                "disposition": r["policy_evaluated"]["disposition"],
                "dkim": r["policy_evaluated"]["dkim"],
                "spf": r["policy_evaluated"]["spf"],
                "reasons": [x.get("type") for x in r["policy_evaluated"].get("policy_override_reasons", [])],
                "header_from": r["identifiers"]["header_from"],
                "envelope_from": r["identifiers"].get("envelope_from"),
                "dkim_results": [[d["domain"], d.get("selector"), d["result"]] for d in r["auth_results"]["dkim"]],
                "spf_results": [[s["domain"], s.get("scope"), s["result"]] for s in r["auth_results"]["spf"]],
            })
        out.append({
            "type": parsed["report_type"],
            "org_name": meta["org_name"],
            "org_email": meta["org_email"],
            "report_id": meta["report_id"],
            "begin": meta["begin_date"],
            "end": meta["end_date"],
            "errors": meta.get("errors", []),
            "domain": pol["domain"],
            "p": pol["p"],
            "sp": pol["sp"],
            "pct": pol.get("pct"),
            "adkim": pol["adkim"],
            "aspf": pol["aspf"],
            "records": recs,
        })
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
