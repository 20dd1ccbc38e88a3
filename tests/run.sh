#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Debian 12 machine: installs the Debian packages the
# end-to-end tests use (real OpenDKIM, dkimpy, Mail::DKIM as independent judges), then runs
# formatting and lint checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(opendkim opendkim-tools miltertest python3-dkim python3-authres python3-dnspython libmail-dkim-perl libnet-dns-perl openssl postfix sendmail-cf m4 libwrap0 libevent-2.1-7 libdb5.3 libopensmtpd0 systemd python3-pip python3-yaml lintian man-db groff-base python3-matplotlib libxml2-utils python3-venv postgresql)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: these Debian packages are needed: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "tests/run.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Package scripts must not start daemons (opendkim) on the test machine.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  # Postfix: no system configuration at all (the tests run private instances from temporary
  # directories with `postfix -c`); together with policy-rc.d nothing listens on port 25.
  printf '%s\n' 'postfix postfix/main_mailer_type select No configuration' \
    'postfix postfix/mailname string test.example' | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Sendmail for the sendmail::* tests of tests/mta_dkim.rs and mta_dmarc.rs: Debian's sendmail-bin
# conflicts with postfix (both are a mail-transport-agent), so it is unpacked, not installed, and
# the tests run it from there (testkit::sendmail; its libraries come with libwrap0 above, its m4
# kit with sendmail-cf).
sendmail_root=/opt/authmilter-tests/sendmail-bin
if [ ! -x "$sendmail_root/usr/libexec/sendmail/sendmail" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: $sendmail_root is missing (run as root to unpack sendmail-bin there)" >&2
    exit 1
  fi
  echo "tests/run.sh: unpacking sendmail-bin into $sendmail_root"
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  apt-get update -q
  (cd "$tmp" && apt-get download sendmail-bin)
  mkdir -p "$sendmail_root"
  dpkg-deb -x "$tmp"/sendmail-bin_*.deb "$sendmail_root"
  rm -rf "$tmp"
fi

# OpenSMTPD for testkit::opensmtpd (unpacked like sendmail-bin, for the same conflict with
# postfix; see the script for the users and directories it also needs).
if [ "$(id -u)" -eq 0 ]; then
  tests/install_opensmtpd.sh
elif [ ! -x /opt/authmilter-tests/opensmtpd/usr/sbin/smtpd ]; then
  echo "tests/run.sh: OpenSMTPD is missing (run as root to set it up: tests/install_opensmtpd.sh)" >&2
  exit 1
fi

# parsedmarc (PyPI, pinned) in a venv: the independent judge of the aggregate reports
# (crates/authmilter/tests/reports.rs, tests/judges/parsedmarc_report.py).
parsedmarc_venv=/opt/authmilter-tests/parsedmarc-venv
if ! "$parsedmarc_venv/bin/python" -c 'import parsedmarc' 2>/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: $parsedmarc_venv is missing (run as root to install parsedmarc there)" >&2
    exit 1
  fi
  echo "tests/run.sh: installing parsedmarc into $parsedmarc_venv"
  mkdir -p "$(dirname "$parsedmarc_venv")"
  /usr/bin/python3 -m venv "$parsedmarc_venv"
  "$parsedmarc_venv/bin/pip" install -q 'parsedmarc==11.1.0'
fi

# The openspf RFC 7208 suite for tests/spf_conformance.rs (from PyPI's pyspf tarball, converted
# with python3-yaml into target/openspf/; not shipped in this repository: BSD-style licence).
tests/fetch_openspf.sh

# Unused dependencies: cargo-machete (pinned, built from crates.io once per machine).
if ! cargo machete --version 2>/dev/null | grep -q '0.9.2'; then
  cargo install cargo-machete --version 0.9.2 --locked
fi
cargo machete

# The Debian package's build (tests/deb_package.sh): cargo-deb, pinned like cargo-machete.
if ! cargo deb --version 2>/dev/null | grep -q '3.8.0'; then
  cargo install cargo-deb --version 3.8.0 --locked
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace

# bench/plot.py draws the committed benchmark rows (BENCHMARKS.md's charts) without error.
plots=$(mktemp -d)
/usr/bin/python3 bench/plot.py bench/results.jsonl "$plots"
for chart in msgs-per-s cpu-per-message; do
  grep -q '<svg' "$plots/$chart.svg" || { echo "tests/run.sh: bench/plot.py drew no $chart.svg" >&2; exit 1; }
done
rm -rf "$plots"

# The Debian package: build (one release build), lintian, install, serve, purge, on this machine.
tests/deb_package.sh
