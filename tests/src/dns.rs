//! An authoritative DNS server for tests, speaking real DNS (UDP and TCP) on loopback.
//!
//! Why a real server instead of mocking the resolver: the milters, OpenDKIM, dkimpy and Mail::DKIM
//! all do their own DNS. The only way to feed all of them the *same* key records, and to exercise
//! the resolver code paths (truncation, multi-string TXT, NXDOMAIN vs. SERVFAIL vs. timeout) that
//! production traffic hits, is a server on a loopback port that every one of them can be pointed at.
//!
//! Design: one authoritative zone for the root "." holds every record. A name that is not in the
//! zone is therefore NXDOMAIN with the root SOA in the authority section (so resolvers can cache
//! the negative answer), instead of REFUSED, which is what a server answering only for
//! `example.com.` would say when a DMARC tree walk asks for the parent domain.
//!
//! The server runs on its own OS thread with its own single-threaded Tokio runtime. Tests often
//! call blocking code (subprocess judges, `std::process::Command`, `Child::wait`) from inside a
//! `#[tokio::test]` whose runtime has one thread; a server task spawned on that runtime would then
//! starve and every lookup would time out. A private thread makes the server independent of how
//! the caller schedules its work.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneType};
use hickory_server::Server;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::MessageAuthenticator;

/// TTL of records when the test does not choose one: long enough that a resolver cache holds
/// them for the whole test, short enough to be realistic.
const DEFAULT_TTL: u32 = 300;
/// SOA minimum (negative-caching TTL, RFC 2308) when the test does not choose one.
const DEFAULT_NEGATIVE_TTL: u32 = 60;
/// The largest character-string a TXT record can carry (RFC 1035 section 3.3: one length octet).
pub const MAX_TXT_STRING: usize = 255;

/// What the server does for a name instead of answering from the zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Answer with RCODE SERVFAIL (a temporary DNS error for the querier).
    ServFail,
    /// Swallow the query and never answer (the querier times out).
    Timeout,
    /// Time out only for record types the zone has none of at that name (a server that answers
    /// what it has and goes silent on anything else, as the openspf suite's `TIMEOUT` models).
    TimeoutOtherTypes,
}

/// A set of records to serve, built with chained calls.
///
/// Names are absolute; a name without a trailing dot is taken relative to the root, so
/// `"sel._domainkey.example.com"` and `"sel._domainkey.example.com."` are the same name.
/// Builder methods panic on a name that is not a valid domain name, because that is a bug in the
/// test, not a condition to handle.
#[derive(Default, Clone, Debug)]
pub struct Zone {
    records: Vec<(Name, RData, Option<u32>)>,
    failures: Vec<(Name, Failure)>,
    ttl: Option<u32>,
    negative_ttl: Option<u32>,
}

/// Parses a test-supplied name as an absolute name (relative names are relative to the root).
fn absolute(name: &str) -> Name {
    try_absolute(name).unwrap_or_else(|e| panic!("invalid DNS name {name:?} in test zone: {e}"))
}

/// As [`absolute`], fallible. A name the hostname syntax rejects (`foo:bar/baz.example`, a
/// label with spaces) is taken as raw labels: DNS carries any octets in a label, and SPF
/// tests need such names served.
fn try_absolute(name: &str) -> Result<Name, String> {
    let fqdn = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    Name::from_str(&fqdn).or_else(|e| {
        let labels: Vec<&[u8]> = fqdn
            .trim_end_matches('.')
            .split('.')
            .map(str::as_bytes)
            .collect();
        let mut n = Name::from_labels(labels).map_err(|_| e.to_string())?;
        n.set_fqdn(true);
        Ok(n)
    })
}

impl Zone {
    /// An empty zone: every name is NXDOMAIN.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(mut self, name: &str, rdata: RData) -> Self {
        self.records.push((absolute(name), rdata, None));
        self
    }

    /// A TXT record. Values longer than 255 bytes are split into several character-strings of at
    /// most 255 bytes (as a DNS operator must publish a 2048-bit DKIM key); a DKIM verifier has to
    /// concatenate them again (RFC 6376 section 3.6.2.2). An empty value is one empty string.
    pub fn txt(self, name: &str, value: &str) -> Self {
        let bytes = value.as_bytes();
        let strings: Vec<&[u8]> = if bytes.is_empty() {
            vec![b"".as_slice()]
        } else {
            bytes.chunks(MAX_TXT_STRING).collect()
        };
        self.push(name, RData::TXT(TXT::from_bytes(strings)))
    }

    /// A TXT record made of exactly these character-strings, for tests of how a verifier joins
    /// them (for example a split in the middle of a tag). Panics if a string exceeds 255 bytes,
    /// which DNS cannot encode.
    pub fn txt_strings(self, name: &str, strings: &[&str]) -> Self {
        for s in strings {
            assert!(
                s.len() <= MAX_TXT_STRING,
                "a TXT character-string is at most 255 bytes, got {}",
                s.len()
            );
        }
        let strings: Vec<&[u8]> = strings.iter().map(|s| s.as_bytes()).collect();
        self.push(name, RData::TXT(TXT::from_bytes(strings)))
    }

    /// An A record.
    pub fn a(self, name: &str, addr: Ipv4Addr) -> Self {
        self.push(name, RData::A(A(addr)))
    }

    /// An AAAA record.
    pub fn aaaa(self, name: &str, addr: Ipv6Addr) -> Self {
        self.push(name, RData::AAAA(AAAA(addr)))
    }

    /// An MX record.
    pub fn mx(self, name: &str, preference: u16, exchange: &str) -> Self {
        self.push(name, RData::MX(MX::new(preference, absolute(exchange))))
    }

    /// A PTR record for `ip` under in-addr.arpa or ip6.arpa (for iprev and SPF `ptr` tests).
    pub fn ptr(mut self, ip: IpAddr, name: &str) -> Self {
        self.records
            .push((Name::from(ip), RData::PTR(PTR(absolute(name))), None));
        self
    }

    /// A PTR record at `name` itself (for zone data written with reverse names, such as the
    /// openspf suite's `4.3.2.1.in-addr.arpa`).
    pub fn ptr_at(self, name: &str, target: &str) -> Self {
        self.push(name, RData::PTR(PTR(absolute(target))))
    }

    /// Whether `name` can be served at all: foreign zone data (the openspf suite) holds names
    /// longer than DNS allows, which no server can answer for and a test must leave out.
    pub fn is_valid_name(name: &str) -> bool {
        try_absolute(name).is_ok()
    }

    /// A CNAME record. Do not put other records at the same name (DNS forbids it).
    pub fn cname(self, name: &str, target: &str) -> Self {
        self.push(name, RData::CNAME(CNAME(absolute(target))))
    }

    /// Every query for `name` (any type) gets RCODE SERVFAIL: a temporary error for the querier.
    pub fn servfail(mut self, name: &str) -> Self {
        self.failures.push((absolute(name), Failure::ServFail));
        self
    }

    /// Every query for `name` (any type) is swallowed without an answer: the querier times out.
    pub fn timeout(mut self, name: &str) -> Self {
        self.failures.push((absolute(name), Failure::Timeout));
        self
    }

    /// Queries for `name` of a type the zone has no record of at `name` are swallowed (the
    /// querier times out); types with records there are answered.
    pub fn timeout_other_types(mut self, name: &str) -> Self {
        self.failures
            .push((absolute(name), Failure::TimeoutOtherTypes));
        self
    }

    /// Default TTL of every record that has no TTL of its own, whenever it was added
    /// (default 300 s).
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// TTL of the record added last (overrides [`Zone::ttl`] for it); for cache-expiry tests.
    pub fn with_record_ttl(mut self, ttl: u32) -> Self {
        if let Some(last) = self.records.last_mut() {
            last.2 = Some(ttl);
        }
        self
    }

    /// The SOA minimum, which resolvers use as the TTL of cached NXDOMAIN/NODATA (default 60 s).
    pub fn negative_ttl(mut self, ttl: u32) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Adds every record and failure of `other` to this zone (TTL settings of `self` win).
    pub fn merge(mut self, other: &Zone) -> Self {
        self.records.extend(other.records.iter().cloned());
        self.failures.extend(other.failures.iter().cloned());
        self
    }

    /// Builds the root zone handler: SOA at "." plus every record.
    fn build_handler(&self) -> io::Result<InMemoryZoneHandler<TokioRuntimeProvider>> {
        const SERIAL: u32 = 1;
        let ttl = self.ttl.unwrap_or(DEFAULT_TTL);
        let negative_ttl = self.negative_ttl.unwrap_or(DEFAULT_NEGATIVE_TTL);
        let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            Name::root(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = SOA::new(
            absolute("ns.test-dns.invalid"),
            absolute("hostmaster.test-dns.invalid"),
            SERIAL,
            3600,
            600,
            86400,
            negative_ttl,
        );
        let mut records = vec![Record::from_rdata(Name::root(), ttl, RData::SOA(soa))];
        records.extend(self.records.iter().map(|(name, rdata, rttl)| {
            Record::from_rdata(name.clone(), rttl.unwrap_or(ttl), rdata.clone())
        }));
        for record in records {
            let what = format!("{} {}", record.name, record.record_type());
            if !handler.upsert_mut(record, SERIAL) {
                return Err(io::Error::other(format!(
                    "test zone: could not insert {what}"
                )));
            }
        }
        Ok(handler)
    }
}

/// Wraps the catalog: counts queries and applies the per-name failures before the zone lookup.
struct Handler {
    catalog: Catalog,
    failures: HashMap<LowerName, Failure>,
    /// Names and types the zone has records of (for [`Failure::TimeoutOtherTypes`]).
    present: HashSet<(LowerName, RecordType)>,
    queries: Arc<AtomicU64>,
    /// Queries per name (lowercase, no trailing dot), all types.
    per_name: Arc<Mutex<HashMap<String, u64>>>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if let Some(q) = request.queries.queries().first() {
            let name = q
                .name()
                .to_string()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            *self
                .per_name
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(name)
                .or_default() += 1;
        }
        let failure = request.queries.queries().first().and_then(|q| {
            match self.failures.get(q.name()).copied() {
                Some(Failure::TimeoutOtherTypes) => {
                    (!self.present.contains(&(q.name().clone(), q.query_type())))
                        .then_some(Failure::Timeout)
                }
                f => f,
            }
        });
        match failure {
            None => {
                self.catalog
                    .handle_request::<R, T>(request, response_handle)
                    .await
            }
            Some(Failure::Timeout | Failure::TimeoutOtherTypes) => {
                tracing::debug!("test DNS: dropping query {:?}", request.queries.queries());
                // Nothing is sent; the returned info only feeds the server's logging.
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
            Some(Failure::ServFail) => {
                let response = MessageResponseBuilder::from_message_request(request)
                    .error_msg(&request.metadata, ResponseCode::ServFail);
                match response_handle.send_response(response).await {
                    Ok(info) => info,
                    Err(e) => {
                        tracing::warn!("test DNS: could not send SERVFAIL: {e}");
                        let mut metadata = Metadata::response_from_request(&request.metadata);
                        metadata.response_code = ResponseCode::ServFail;
                        ResponseInfo::from(Header {
                            metadata,
                            counts: HeaderCounts::default(),
                        })
                    }
                }
            }
        }
    }
}

/// Binds a UDP socket and a TCP listener on the same loopback port. The UDP port is chosen by the
/// kernel; the TCP bind on it can collide with an unrelated TCP user, so retry a few times.
fn bind_pair(ip: IpAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        match TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("could not bind UDP+TCP on one port")))
}

/// A running in-process authoritative DNS server on `127.0.0.1:<random port>` (UDP and TCP).
///
/// Dropping it stops the server too (and waits until the port is closed); [`TestDns::stop`] does
/// the same explicitly and can be awaited.
pub struct TestDns {
    addr: SocketAddr,
    queries: Arc<AtomicU64>,
    per_name: Arc<Mutex<HashMap<String, u64>>>,
    stop_tx: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestDns {
    /// Starts a server for `zone`. The call does not block on the network: the sockets are bound
    /// before it returns, so the server is reachable as soon as this resolves.
    pub async fn start(zone: &Zone) -> io::Result<TestDns> {
        Self::start_blocking(zone)
    }

    /// As [`TestDns::start`], for tests that are not async (for example judge-only tests).
    pub fn start_blocking(zone: &Zone) -> io::Result<TestDns> {
        Self::start_at_blocking(zone, None)
    }

    /// As [`TestDns::start_blocking`], on `addr` (UDP and TCP) when given instead of a random
    /// loopback port: for a resolver that cannot be told a port (libresolv, libspf2), which the
    /// benchmark runs in a network namespace of its own with this server on port 53.
    pub fn start_at_blocking(zone: &Zone, addr: Option<SocketAddr>) -> io::Result<TestDns> {
        let handler = zone.build_handler()?;
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::from(Name::root()), vec![Arc::new(handler)]);
        let failures = zone
            .failures
            .iter()
            .map(|(n, f)| (LowerName::from(n.clone()), *f))
            .collect();
        let present = zone
            .records
            .iter()
            .map(|(n, r, _)| (LowerName::from(n.clone()), r.record_type()))
            .collect();
        let queries = Arc::new(AtomicU64::new(0));
        let per_name = Arc::new(Mutex::new(HashMap::new()));
        let handler = Handler {
            catalog,
            failures,
            present,
            queries: queries.clone(),
            per_name: per_name.clone(),
        };

        let (udp, tcp) = match addr {
            Some(a) => (UdpSocket::bind(a)?, TcpListener::bind(a)?),
            None => bind_pair(IpAddr::V4(Ipv4Addr::LOCALHOST))?,
        };
        let addr = udp.local_addr()?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name(format!("test-dns-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let mut server = Server::new(handler);
                    let sockets = tokio::net::UdpSocket::from_std(udp)
                        .and_then(|u| Ok((u, tokio::net::TcpListener::from_std(tcp)?)));
                    let (udp, tcp) = match sockets {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    server.register_socket(udp);
                    server.register_listener(tcp, Duration::from_secs(10), 65535);
                    let _ = ready_tx.send(Ok(()));
                    // Wait for stop() or for the TestDns to be dropped (sender gone), without
                    // blocking the runtime that serves the queries.
                    let waiter = tokio::task::spawn_blocking(move || {
                        let _ = stop_rx.recv();
                    });
                    let _ = waiter.await;
                    if let Err(e) = server.shutdown_gracefully().await {
                        tracing::debug!("test DNS shutdown: {e}");
                    }
                });
                // Dropping the runtime drops every remaining task, and with them any open TCP
                // connection, so the port is fully closed when this thread ends.
                drop(runtime);
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("test DNS thread died during start"))??;
        tracing::debug!("test DNS listening on {addr} (udp+tcp)");
        Ok(TestDns {
            addr,
            queries,
            per_name,
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The UDP and TCP address of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of DNS queries received so far (all names and types, UDP and TCP), for tests of
    /// caching and of how many lookups a message costs.
    pub fn query_count(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Number of queries received so far for `name` (any type, UDP and TCP; case and a trailing
    /// dot ignored), e.g. to prove a DKIM key was looked up once, not by every milter.
    pub fn queries_for(&self, name: &str) -> u64 {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.per_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .copied()
            .unwrap_or(0)
    }

    /// Stops answering and closes the port; returns once the port is closed.
    pub async fn stop(mut self) {
        let thread = self.signal_stop();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// As [`TestDns::stop`], for non-async tests.
    pub fn stop_blocking(mut self) {
        if let Some(thread) = self.signal_stop() {
            let _ = thread.join();
        }
    }

    fn signal_stop(&mut self) -> Option<JoinHandle<()>> {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        self.thread.take()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        if let Some(thread) = self.signal_stop() {
            // The server thread has its own runtime, so joining here cannot deadlock even when
            // dropped inside a single-threaded Tokio runtime; shutdown takes milliseconds.
            let _ = thread.join();
        }
    }
}

/// A UDP socket and a TCP listener on one loopback port that take queries and never answer, for
/// DNS-timeout tests.
///
/// Datagrams sit unread in the socket buffer; TCP connections complete the handshake in the
/// kernel backlog and are never read. For the querier this is indistinguishable from a server that
/// accepted the query and went silent. Everything is closed on drop.
pub struct BlackholeDns {
    addr: SocketAddr,
    _udp: UdpSocket,
    _tcp: TcpListener,
}

impl BlackholeDns {
    /// Binds the black hole on `127.0.0.1:<random port>`.
    pub async fn start() -> io::Result<Self> {
        Self::start_blocking()
    }

    /// As [`BlackholeDns::start`], for non-async tests.
    pub fn start_blocking() -> io::Result<Self> {
        let (udp, tcp) = bind_pair(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
        Ok(BlackholeDns {
            addr: udp.local_addr()?,
            _udp: udp,
            _tcp: tcp,
        })
    }

    /// The address queries should be sent to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Resolver configuration that talks only to `addr` (UDP, then TCP on truncation), with no search
/// domains and no hosts file, so a test can never leak a query to the system resolver.
pub fn resolver_config(
    addr: SocketAddr,
    timeout: Duration,
    attempts: usize,
) -> (ResolverConfig, ResolverOpts) {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
    let config = ResolverConfig::from_name_servers(vec![ns]);
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    opts.attempts = attempts;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ndots = 0;
    (config, opts)
}

/// A `mail_auth::MessageAuthenticator` whose resolver asks only `addr`, for tests that drive
/// mail-auth directly. Panics if the resolver cannot be built (a broken test setup).
pub fn authenticator(addr: SocketAddr, timeout: Duration, attempts: usize) -> MessageAuthenticator {
    let (config, opts) = resolver_config(addr, timeout, attempts);
    MessageAuthenticator::new(config, opts).expect("build a resolver for the test DNS server")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::TestKey;
    use std::time::Instant;

    fn is_nxdomain(err: &mail_auth::Error) -> bool {
        matches!(
            err,
            mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(ResponseCode::NXDomain))
        )
    }

    #[tokio::test]
    async fn serves_txt_a_mx_and_nxdomain_then_stops() {
        crate::init_tracing();
        let key = TestKey::rsa(2048);
        let record = key.dns_record();
        assert!(
            record.len() > MAX_TXT_STRING,
            "a 2048-bit key record needs several strings"
        );
        let zone = Zone::new()
            .txt("sel._domainkey.example.com", &record)
            .txt("example.com.", "v=spf1 ip4:192.0.2.1 -all")
            .txt_strings("split.example.com", &["v=DKIM1; ", "p=abc"])
            .a("mail.example.com", Ipv4Addr::new(192, 0, 2, 25))
            .aaaa("mail.example.com", "2001:db8::25".parse().unwrap())
            .mx("example.com", 10, "mail.example.com")
            .ptr("192.0.2.25".parse().unwrap(), "mail.example.com")
            .cname("alias.example.com", "mail.example.com");
        let dns = TestDns::start(&zone).await.unwrap();
        let auth = authenticator(dns.addr(), Duration::from_secs(2), 1);

        let txt = auth
            .txt_raw_lookup("sel._domainkey.example.com.")
            .await
            .unwrap();
        assert_eq!(txt, record.as_bytes());
        let txt = auth.txt_raw_lookup("split.example.com.").await.unwrap();
        assert_eq!(txt, b"v=DKIM1; p=abc");

        let a = auth
            .resolver()
            .ipv4_lookup("mail.example.com.")
            .await
            .unwrap();
        let a: Vec<Ipv4Addr> = a
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        assert_eq!(a, vec![Ipv4Addr::new(192, 0, 2, 25)]);

        let mx = auth
            .mx_lookup(
                "example.com.",
                None::<&mail_auth::common::cache::NoCache<_, _>>,
            )
            .await;
        let mx = mx.unwrap();
        assert_eq!(mx.rrset.len(), 1);
        assert_eq!(mx.rrset[0].preference, 10);
        assert_eq!(&*mx.rrset[0].exchanges[0], "mail.example.com.");

        let ptr = auth
            .resolver()
            .reverse_lookup("192.0.2.25".parse::<IpAddr>().unwrap())
            .await
            .unwrap();
        assert_eq!(ptr.answers().len(), 1);

        let err = auth
            .txt_raw_lookup("absent.example.com.")
            .await
            .unwrap_err();
        assert!(is_nxdomain(&err), "expected NXDOMAIN, got {err:?}");
        // The parent of a zone apex must not be REFUSED either (DMARC tree walk).
        let err = auth.txt_raw_lookup("_dmarc.com.").await.unwrap_err();
        assert!(is_nxdomain(&err), "expected NXDOMAIN, got {err:?}");
        assert!(dns.query_count() >= 7);
        assert_eq!(dns.queries_for("absent.example.com"), 1);
        assert_eq!(dns.queries_for("_DMARC.com."), 1);
        assert_eq!(dns.queries_for("never.example.com"), 0);

        let addr = dns.addr();
        dns.stop().await;
        let fresh = authenticator(addr, Duration::from_millis(300), 1);
        let err = fresh
            .txt_raw_lookup("sel._domainkey.example.com.")
            .await
            .unwrap_err();
        assert!(
            !is_nxdomain(&err),
            "a stopped server must not answer: {err:?}"
        );
        eprintln!("stopped -> {err:?}");
        // The TCP side is closed too.
        assert!(std::net::TcpStream::connect(addr).is_err());
    }

    #[tokio::test]
    async fn servfail_and_timeout_names() {
        let zone = Zone::new()
            .txt("ok.example", "hello")
            .servfail("broken.example")
            .timeout("slow.example");
        let dns = TestDns::start(&zone).await.unwrap();
        let auth = authenticator(dns.addr(), Duration::from_millis(500), 1);
        assert_eq!(auth.txt_raw_lookup("ok.example.").await.unwrap(), b"hello");
        let started = Instant::now();
        let err = auth.txt_raw_lookup("broken.example.").await.unwrap_err();
        assert!(!is_nxdomain(&err), "{err:?}");
        eprintln!("SERVFAIL -> {err:?} after {:?}", started.elapsed());
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "SERVFAIL must not look like a timeout"
        );
        let started = Instant::now();
        let err = auth.txt_raw_lookup("slow.example.").await.unwrap_err();
        assert!(!is_nxdomain(&err), "{err:?}");
        eprintln!("timeout -> {err:?} after {:?}", started.elapsed());
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        dns.stop().await;
    }

    #[tokio::test]
    async fn blackhole_times_out() {
        let hole = BlackholeDns::start().await.unwrap();
        let auth = authenticator(hole.addr(), Duration::from_millis(300), 1);
        let started = Instant::now();
        let err = auth.txt_raw_lookup("anything.example.").await.unwrap_err();
        assert!(!is_nxdomain(&err), "{err:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(10),
            "{took:?}"
        );
    }
}
