#!/usr/bin/env bash
# OpenSMTPD for testkit::opensmtpd (run by tests/run.sh, as root, on Debian 12; idempotent).
#
# Debian's opensmtpd conflicts with postfix (both are a mail-transport-agent), so, as with
# sendmail-bin, it is unpacked, not installed: opensmtpd and opensmtpd-filter-dkimsign (a
# third-party signing filter the harness self-test runs) go into /opt/authmilter-tests/opensmtpd.
# Their libraries (libevent-2.1-7, libdb5.3, libopensmtpd0) come from run.sh's package list.
# What the package's maintainer scripts would have set up, and smtpd needs outside a test
# instance, is made here:
#   - the privilege-separation users opensmtpd and opensmtpq (smtpd refuses to start without);
#   - /var/lib/opensmtpd/empty, the chroot of smtpd's unprivileged processes;
#   - /usr/libexec/opensmtpd, a link to the unpacked helpers: smtpd runs every mda through the
#     compiled-in /usr/libexec/opensmtpd/mail.mda.
# Everything else (spool, control socket, host name, resolver) is private to each test instance.
set -euo pipefail

root=/opt/authmilter-tests/opensmtpd
if [ ! -x "$root/usr/sbin/smtpd" ] || [ ! -x "$root/usr/libexec/opensmtpd/filter-dkimsign" ]; then
  echo "tests/install_opensmtpd.sh: unpacking opensmtpd and opensmtpd-filter-dkimsign into $root"
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  apt-get update -q
  (cd "$tmp" && apt-get download opensmtpd opensmtpd-filter-dkimsign)
  mkdir -p "$root"
  for deb in "$tmp"/opensmtpd_*.deb "$tmp"/opensmtpd-filter-dkimsign_*.deb; do
    dpkg-deb -x "$deb" "$root"
  done
  rm -rf "$tmp"
fi

mkdir -p /var/lib/opensmtpd/empty
chmod 755 /var/lib/opensmtpd/empty
for user in opensmtpd opensmtpq; do
  if ! id "$user" >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /var/lib/opensmtpd/empty \
      --shell /usr/sbin/nologin "$user"
  fi
done

libexec=/usr/libexec/opensmtpd
if [ -L "$libexec" ] || [ ! -e "$libexec" ]; then
  ln -sfn "$root/usr/libexec/opensmtpd" "$libexec"
elif [ ! -x "$libexec/mail.mda" ]; then
  echo "tests/install_opensmtpd.sh: $libexec exists but has no mail.mda" >&2
  exit 1
fi
