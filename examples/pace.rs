//! pace: an open-loop HTTP/1.1 load generator for latency at one fixed rate (wrk2-style), used by
//! `loadtest/compare` and `loadtest/run --rate`.
//!
//! Request `k` is due at `start + k / rate`, whatever happened to the ones before it. It goes out
//! on the first idle keep-alive connection once due; when every connection is busy it waits, and
//! its latency still counts from its due time (no coordinated omission). One thread polls its
//! non-blocking sockets in a spin loop instead of sleeping on a timer, so a request leaves within a
//! few microseconds of its due time. oha (`--latency-correction`), used before, put about 200 µs
//! of its own on the median of nginx answering a fixed 302 at 30,000/s on this VM (pace: about
//! 30 µs), and its p99 for nginx ranged 0.8–1.5 ms from run to run. The spin loop keeps the
//! generator's core busy, so run it on a core of its own (`taskset`), as `compare` does.
//!
//! It also reports how late requests actually left (`send_lag`): when that stays small, the
//! latencies are the server's, not the generator's.
//!
//! ```sh
//! cargo build --release --example pace
//! taskset -c 1 target/release/examples/pace --url http://127.0.0.1:8080 --codes codes.txt --rate 30000 --duration 10
//! ```
//! Prints one line, `RESULT` and `key=value` pairs as `loadtest/tap.lua` does: requests, rps,
//! status classes, errors, p50 / p90 / p99 / p99.9 / max latency and the p99 send lag, in
//! microseconds.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(about = "Open-loop HTTP/1.1 GETs at a fixed rate; latency from each request's due time")]
struct Args {
    /// Base URL: http, on a loopback address (load tests never leave the machine).
    #[arg(long)]
    url: String,
    /// File of codes, one per line; each request taps one, drawn with a fixed seed.
    #[arg(long)]
    codes: String,
    /// Requests per second.
    #[arg(long)]
    rate: f64,
    /// Seconds of load (1..=300).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// How codes are drawn: `uniform`, or `zipf` (s = 1, the first codes in the file hottest),
    /// as `loadtest/tap.lua` draws them.
    #[arg(long, default_value = "uniform")]
    dist: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// User-Agent sent with every request (the default is the one `loadtest/tap.lua` sends).
    #[arg(
        long,
        default_value = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
    )]
    user_agent: String,
    /// X-Linkgate-Synthetic token, marking the traffic as a load test.
    #[arg(long)]
    synthetic: Option<String>,
}

/// How long the last requests may take to answer before they are counted as errors.
const GRACE: Duration = Duration::from_secs(5);

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Due time of the request in flight on this connection.
    due: Option<Instant>,
}

/// A complete response at the start of `buf`: its status, its length, and whether the server
/// closes the connection after it (nginx does every 1,000 requests).
fn complete_response(buf: &[u8]) -> Option<(u16, usize, bool)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status = head.get(9..12)?.parse().ok()?;
    let (mut body, mut close) = (0, false);
    for line in head.split("\r\n").skip(1) {
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("content-length") => body = value.trim().parse().ok()?,
            Some((name, value)) if name.eq_ignore_ascii_case("connection") => {
                close = value.trim().eq_ignore_ascii_case("close")
            }
            _ => {}
        }
    }
    (buf.len() >= head_end + body).then_some((status, head_end + body, close))
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
            due: None,
        })
    }

    /// A fresh connection in place of this one, with nothing in flight.
    fn reopen(&mut self, addr: SocketAddr) -> std::io::Result<()> {
        *self = Self::open(addr)?;
        Ok(())
    }
}

/// Code indices from a fixed seed (xorshift64*), uniform or Zipf.
struct Draw {
    state: u64,
    zipf: bool,
}

impl Draw {
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        let u = self.unit();
        if self.zipf {
            // Zipf (s = 1) by inverse CDF: P(rank <= k) = ln k / ln n.
            ((u * (n as f64).ln()).exp() as usize).clamp(1, n) - 1
        } else {
            ((u * n as f64) as usize).min(n - 1)
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1_000.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("{}", run(&Args::parse())?);
    Ok(())
}

/// What a run measured; printed as the `RESULT` line.
struct Report {
    rps: f64,
    /// Answers by status class (index = status / 100).
    classes: [u64; 6],
    errors: u64,
    /// Latency of every answered request from its due time, in nanoseconds, sorted.
    latencies: Vec<u64>,
    /// How late each request was sent, in nanoseconds, sorted.
    lags: Vec<u64>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.latencies;
        write!(
            f,
            "RESULT requests={} rps={:.0} status_2xx={} status_3xx={} status_4xx={} status_5xx={} errors={} \
             p50_us={:.0} p90_us={:.0} p99_us={:.0} p999_us={:.0} max_us={:.0} send_lag_p99_us={:.0}",
            l.len(),
            self.rps,
            self.classes[2],
            self.classes[3],
            self.classes[4],
            self.classes[5],
            self.errors,
            percentile(l, 0.50),
            percentile(l, 0.90),
            percentile(l, 0.99),
            percentile(l, 0.999),
            percentile(l, 1.0),
            percentile(&self.lags, 0.99),
        )
    }
}

fn run(args: &Args) -> Result<Report, Box<dyn std::error::Error>> {
    if !(1..=300).contains(&args.duration) || !args.rate.is_finite() || args.rate < 1.0 || args.connections == 0 {
        return Err("--duration must be 1..=300, --rate at least 1, --connections at least 1".into());
    }
    if args.dist != "uniform" && args.dist != "zipf" {
        return Err("--dist must be uniform or zipf".into());
    }
    let hostport = args
        .url
        .strip_prefix("http://")
        .ok_or("--url must start with http://")?
        .trim_end_matches('/');
    let addr = hostport.to_socket_addrs()?.next().ok_or("--url names no address")?;
    if !addr.ip().is_loopback() {
        return Err(format!("loopback addresses only: {addr}").into());
    }
    let codes: Vec<String> = std::fs::read_to_string(&args.codes)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if codes.is_empty() {
        return Err(format!("no codes in {}", args.codes).into());
    }
    let mut conns = (0..args.connections)
        .map(|_| Conn::open(addr))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut headers = format!("HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: {}\r\n", args.user_agent);
    if let Some(token) = &args.synthetic {
        headers.push_str(&format!("X-Linkgate-Synthetic: {token}\r\n"));
    }
    headers.push_str("\r\n");

    let total = (args.rate * args.duration as f64) as u64;
    let interval = 1e9 / args.rate;
    let mut latencies: Vec<u64> = Vec::with_capacity(total as usize);
    let mut lags: Vec<u64> = Vec::with_capacity(total as usize);
    let (mut idle, mut busy): (Vec<usize>, Vec<usize>) = ((0..conns.len()).rev().collect(), Vec::new());
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut classes = [0u64; 6];
    let mut draw = Draw {
        state: args.seed.max(1),
        zipf: args.dist == "zipf",
    };
    let mut request = Vec::with_capacity(256);
    let mut chunk = [0u8; 16 * 1024];
    let start = Instant::now() + Duration::from_millis(10);
    let end = start + Duration::from_secs(args.duration) + GRACE;

    while sent < total || !busy.is_empty() {
        let now = Instant::now();
        if now > end {
            errors += busy.len() as u64 + (total - sent);
            break;
        }
        while sent < total {
            let due = start + Duration::from_nanos((sent as f64 * interval) as u64);
            if due > now {
                break;
            }
            let Some(i) = idle.pop() else { break };
            request.clear();
            request.extend_from_slice(b"GET /");
            request.extend_from_slice(codes[draw.below(codes.len())].as_bytes());
            request.push(b' ');
            request.extend_from_slice(headers.as_bytes());
            let c = &mut conns[i];
            if c.stream.write_all(&request).is_err() {
                // Reconnect and try this request again on the next turn.
                errors += 1;
                c.reopen(addr)?;
                idle.push(i);
                continue;
            }
            lags.push(now.saturating_duration_since(due).as_nanos() as u64);
            c.due = Some(due);
            busy.push(i);
            sent += 1;
        }
        let mut j = 0;
        while j < busy.len() {
            let i = busy[j];
            let c = &mut conns[i];
            let done = match c.stream.read(&mut chunk) {
                Ok(0) => Err(()),
                Ok(n) => {
                    c.buf.extend_from_slice(&chunk[..n]);
                    Ok(complete_response(&c.buf))
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
                Err(_) => Err(()),
            };
            match done {
                Ok(None) => j += 1,
                Ok(Some((status, len, close))) => {
                    let due = c.due.take().expect("a busy connection has a request in flight");
                    latencies.push(Instant::now().saturating_duration_since(due).as_nanos() as u64);
                    classes[usize::from(status / 100).min(5)] += 1;
                    c.buf.drain(..len);
                    if close {
                        c.reopen(addr)?;
                    }
                    busy.swap_remove(j);
                    idle.push(i);
                }
                Err(()) => {
                    errors += 1;
                    c.reopen(addr)?;
                    busy.swap_remove(j);
                    idle.push(i);
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    latencies.sort_unstable();
    lags.sort_unstable();
    Ok(Report {
        rps: latencies.len() as f64 / elapsed,
        classes,
        errors,
        latencies,
        lags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    #[test]
    fn a_response_is_complete_once_its_body_is_there() {
        assert_eq!(complete_response(b"HTTP/1.1 302 Found\r\nlocation: x\r\n"), None);
        let head = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(complete_response(head), None);
        let whole = [&head[..], b"hello"].concat();
        assert_eq!(complete_response(&whole), Some((404, whole.len(), false)));
        // A pipelined remainder stays for the next response.
        let two = [&whole[..], b"HTTP/1.1 302"].concat();
        assert_eq!(complete_response(&two), Some((404, whole.len(), false)));
        let closing = b"HTTP/1.1 302 Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(complete_response(closing), Some((302, closing.len(), true)));
    }

    #[test]
    fn only_loopback_addresses_are_loaded() {
        for url in ["http://10.1.2.3:8080", "http://192.0.2.1:80"] {
            let args = Args::parse_from(["pace", "--url", url, "--codes", "/nonexistent", "--rate", "10"]);
            let e = run(&args).err().expect("refused").to_string();
            assert!(e.contains("loopback addresses only"), "{e}");
        }
    }

    #[test]
    fn draws_stay_in_range_and_zipf_favours_the_first_codes() {
        for zipf in [false, true] {
            let mut d = Draw { state: 42, zipf };
            let draws: Vec<usize> = (0..100_000).map(|_| d.below(1000)).collect();
            assert!(draws.iter().all(|&i| i < 1000));
            let first_ten = draws.iter().filter(|&&i| i < 10).count();
            // Uniform: about 1%. Zipf (s = 1): P(rank <= 10) = ln 10 / ln 1000 = 1/3.
            let expected = if zipf { 33_333 } else { 1_000 };
            assert!(first_ten.abs_diff(expected) < expected / 10, "zipf={zipf}: {first_ten}");
        }
    }

    /// A server that answers every request on every connection with a fixed 302, closing each
    /// connection after `per_conn` answers (as nginx does after 1,000).
    fn fixed_302(per_conn: usize) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let stream = stream.unwrap();
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                    let mut out = stream;
                    let mut line = String::new();
                    for n in 1..=per_conn {
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let close = if n == per_conn { "connection: close\r\n" } else { "" };
                        let answer = format!("HTTP/1.1 302 Found\r\nlocation: /x\r\n{close}content-length: 0\r\n\r\n");
                        if out.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn every_request_due_in_the_run_is_sent_and_answered() {
        let addr = fixed_302(50);
        let codes = std::env::temp_dir().join(format!("pace-test-codes-{}", std::process::id()));
        std::fs::write(&codes, "abc1234\nxyz9876\n").unwrap();
        let args = Args::parse_from([
            "pace",
            "--url",
            &format!("http://{addr}"),
            "--codes",
            codes.to_str().unwrap(),
            "--rate",
            "2000",
            "--duration",
            "1",
            "--connections",
            "4",
        ]);
        let report = run(&args).unwrap();
        std::fs::remove_file(&codes).unwrap();
        // 2,000 due in one second, every one answered 302 although each connection was closed by
        // the server after 50 answers.
        assert_eq!(report.latencies.len(), 2000);
        assert_eq!(report.classes[3], 2000);
        assert_eq!(report.errors, 0);
        assert!(report.rps > 1800.0 && report.rps < 2200.0, "{}", report.rps);
        assert!(report.to_string().starts_with("RESULT requests=2000 "));
    }
}
