#!/usr/bin/perl
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Independent signer: sign the message on stdin with Mail::DKIM::Signer and write the signed
# message (DKIM-Signature prepended) to stdout. RSA only: Debian 12's Mail::DKIM 1.20230212 has
# no Ed25519. The key file is a PKCS#1 PEM ("BEGIN RSA PRIVATE KEY"); Mail::DKIM strips the
# armour and re-wraps the base64 as PKCS#1, so PKCS#8 would not load.
# As with dkimverify.pl, lines are fed with CRLF endings (Mail::DKIM requires CRLF).
use strict;
use warnings;

use Getopt::Long;
use Mail::DKIM::Signer;

my ( $key, $domain, $selector, $headers );
my $algorithm = 'rsa-sha256';
my $canon     = 'relaxed/relaxed';
GetOptions(
    'key=s'       => \$key,
    'domain=s'    => \$domain,
    'selector=s'  => \$selector,
    'algorithm=s' => \$algorithm,
    'canon=s'     => \$canon,
    'headers=s'   => \$headers,
) or die "usage: $0 --key FILE --domain D --selector S [--canon c] [--headers a:b] < msg\n";
defined $key && defined $domain && defined $selector
  or die "--key, --domain and --selector are required\n";

my %args = (
    Algorithm => $algorithm,
    Method    => $canon,
    Domain    => $domain,
    Selector  => $selector,
    KeyFile   => $key,
);
# Extra header names to sign, on top of Mail::DKIM's default list.
$args{Headers} = $headers if defined $headers;
my $signer = Mail::DKIM::Signer->new(%args);

binmode STDIN;
binmode STDOUT;
my $message = '';
while ( my $line = <STDIN> ) {
    chomp $line;
    $line =~ s/\015$//;
    $signer->PRINT("$line\015\012");
    $message .= "$line\015\012";
}
$signer->CLOSE;
my $sig = $signer->signature or die "Mail::DKIM produced no signature\n";
print $sig->as_string, "\015\012", $message;
