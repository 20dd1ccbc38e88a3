#!/usr/bin/perl
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Judge: verify every signature of the message on stdin with Mail::DKIM (libmail-dkim-perl).
#
# Key lookups go only to the DNS server given with --dns (a test server on loopback). The
# resolver is built with explicit nameservers and no search list, so /etc/resolv.conf's servers
# are never queried.
#
# Line endings: like Mail::DKIM's own dkimverify.pl, every line is fed with CRLF (Mail::DKIM
# requires CRLF input); a message with bare LF is therefore judged as its CRLF form.
#
# Output (tab separated), one line per signature in header order:
#   RESULT <index> <dkim|domainkeys> <result> <d=> <s=> <detail>
# then
#   OVERALL <result> <detail>
# result is Mail::DKIM's word: pass, fail, invalid, temperror, none.
# Note: Debian 12's Mail::DKIM 1.20230212 has no Ed25519 support: ed25519-sha256 is "invalid".
use strict;
use warnings;

use Getopt::Long;
use Net::DNS;
use Mail::DKIM::DNS;
use Mail::DKIM::Verifier;

my $dns;
my $timeout = 5;
GetOptions( 'dns=s' => \$dns, 'timeout=i' => \$timeout )
  or die "usage: $0 --dns HOST:PORT [--timeout SECONDS] < message\n";
defined $dns or die "--dns HOST:PORT is required\n";
my ( $host, $port ) = $dns =~ /^\[?([^\]]+?)\]?:(\d+)$/
  or die "bad --dns value: $dns\n";

my $resolver = Net::DNS::Resolver->new(
    nameservers => [$host],
    port        => $port,
    recurse     => 1,
    searchlist  => [],
    defnames    => 0,
    dnsrch      => 0,
    retry       => 1,
    retrans     => 1,
    udp_timeout => $timeout,
    tcp_timeout => $timeout,
);
# Net::DNS::Resolver->new reads resolv.conf first; make sure nothing from it survives.
$resolver->nameservers($host);
$resolver->port($port);
Mail::DKIM::DNS::resolver($resolver);
# Mail::DKIM wraps each query in an alarm() of this many seconds.
$Mail::DKIM::DNS::TIMEOUT = $timeout + 1;

my $verifier = Mail::DKIM::Verifier->new();
binmode STDIN;
while ( my $line = <STDIN> ) {
    chomp $line;
    $line =~ s/\015$//;
    $verifier->PRINT("$line\015\012");
}
$verifier->CLOSE;

my @sigs = $verifier->signatures;
print "SIGNATURES\t", scalar(@sigs), "\n";
my $i = 0;
for my $sig (@sigs) {
    my $type   = $sig->isa('Mail::DKIM::DkSignature') ? 'domainkeys' : 'dkim';
    my $detail = $sig->result_detail // '';
    $detail =~ s/[\t\r\n]+/ /g;
    printf "RESULT\t%d\t%s\t%s\t%s\t%s\t%s\n", $i++, $type, $sig->result // 'none',
      $sig->domain // '', $sig->selector // '', $detail;
}
my $overall = $verifier->result_detail // '';
$overall =~ s/[\t\r\n]+/ /g;
print "OVERALL\t", ( $verifier->result // 'none' ), "\t$overall\n";
