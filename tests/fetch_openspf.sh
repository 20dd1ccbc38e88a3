#!/usr/bin/env bash
# Fetches the openspf RFC 7208 test suite (shipped inside pyspf's source tarball, BSD-style
# licence, so it is downloaded, never copied into this repository) and converts it to JSON for
# tests/spf_conformance.rs. Usage: tests/fetch_openspf.sh [DIR] (default target/openspf).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/openspf}
json=$dir/rfc7208-tests.json
if [ -s "$json" ]; then
  exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# pyspf 2.0.14 carries the suite's 2014.04 release (the last one) as test/rfc7208-tests.yml.
# Debian's python3 (python3-pip and python3-yaml come from tests/run.sh), not whatever python3 is
# first on PATH.
/usr/bin/python3 -m pip download --quiet --no-deps --no-binary :all: pyspf==2.0.14 -d "$tmp"
tar -xzf "$tmp"/pyspf-2.0.14.tar.gz -C "$tmp" pyspf-2.0.14/test/rfc7208-tests.yml pyspf-2.0.14/test/rfc7208-tests.LICENSE
cp "$tmp"/pyspf-2.0.14/test/rfc7208-tests.LICENSE "$dir"/
# One JSON array of the YAML documents (scenarios), as the suite writes them.
/usr/bin/python3 - "$tmp"/pyspf-2.0.14/test/rfc7208-tests.yml "$json.tmp" <<'PY'
import json, sys, yaml
with open(sys.argv[1], 'rb') as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
with open(sys.argv[2], 'w') as f:
    json.dump(docs, f, ensure_ascii=True, indent=1)
PY
mv "$json.tmp" "$json"
echo "tests/fetch_openspf.sh: $json"
