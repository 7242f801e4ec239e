//! A TCP proxy for fault tests: it forwards to an upstream address and, on command, once a
//! connection has passed some bytes in one direction, stalls it (keeps it open and forwards
//! nothing more, as a stuck server or a path that swallows packets would), resets it (RST to
//! the client), closes it half way (FIN to the client in the middle of the stream), or
//! throttles it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What happens to a connection once it passed the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing more is forwarded either way; the connection stays open.
    Stall,
    /// The client's connection is reset (RST), the server's closed.
    Reset,
    /// The client's connection is closed cleanly (FIN) as if the server had ended the
    /// stream, and the server's too.
    HalfClose,
    /// The rest is forwarded at most this many bytes per second.
    Throttle(u64),
}

/// Which bytes count toward the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Bytes from the server to the client (a read).
    FromServer,
    /// Bytes from the client to the server (a load).
    ToServer,
}

struct Plan {
    fault: Fault,
    direction: Direction,
    after: u64,
    /// Only the first connection to pass the mark gets the fault; the others go on.
    once: bool,
}

#[derive(Default)]
struct Faults {
    plan: Mutex<Option<Plan>>,
    /// The one fault of a `once` plan happened.
    fired: AtomicBool,
    /// Connections that got the fault.
    faulted: AtomicU64,
}

impl Faults {
    /// The fault for a connection that has now passed `passed` bytes in `direction`, if it
    /// gets one (counted once per connection by the caller).
    fn due(&self, direction: Direction, passed: u64) -> Option<(Fault, u64)> {
        let plan = self.plan.lock().unwrap();
        let plan = plan.as_ref()?;
        if plan.direction != direction || passed < plan.after {
            return None;
        }
        if plan.once && self.fired.swap(true, Ordering::SeqCst) {
            return None;
        }
        self.faulted.fetch_add(1, Ordering::SeqCst);
        Some((plan.fault, plan.after))
    }
}

/// One proxied connection: both sockets, and whether it was reset.
struct Conn {
    client: TcpStream,
    server: TcpStream,
    reset: AtomicBool,
}

/// A running proxy; it stops accepting when dropped.
pub struct Proxy {
    port: u16,
    faults: Arc<Faults>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// A proxy on a free loopback port to `upstream`; it forwards everything until told.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults::default());
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (faults, stop) = (faults.clone(), stop.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(upstream) else {
                        continue;
                    };
                    let conn = Arc::new(Conn {
                        client,
                        server,
                        reset: AtomicBool::new(false),
                    });
                    pump(conn.clone(), Direction::ToServer, faults.clone());
                    pump(conn, Direction::FromServer, faults.clone());
                }
            });
        }
        Proxy { port, faults, stop }
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections get `fault` once `after` bytes passed on them in `direction`: only the
    /// first one to get there with `once`, every one without.
    pub fn fault_after(&self, fault: Fault, direction: Direction, after: u64, once: bool) {
        self.faults.fired.store(false, Ordering::SeqCst);
        *self.faults.plan.lock().unwrap() = Some(Plan {
            fault,
            direction,
            after,
            once,
        });
    }

    /// No fault from now on for new connections (those already stalled stay so, as a path
    /// that swallowed their packets would leave them).
    pub fn heal(&self) {
        *self.faults.plan.lock().unwrap() = None;
    }

    /// Connections stall once `bytes` came from upstream on them (see [`Proxy::fault_after`]).
    pub fn stall_after(&self, bytes: u64, once: bool) {
        self.fault_after(Fault::Stall, Direction::FromServer, bytes, once);
    }

    /// Connections that got the fault so far.
    pub fn faulted(&self) -> u64 {
        self.faults.faulted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies one direction of `conn`, applying the fault when it is due.
fn pump(conn: Arc<Conn>, direction: Direction, faults: Arc<Faults>) {
    std::thread::spawn(move || {
        let (mut from, mut to) = match direction {
            Direction::ToServer => (&conn.client, &conn.server),
            Direction::FromServer => (&conn.server, &conn.client),
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut passed = 0u64;
        let mut stalled = false;
        let mut throttle: Option<(u64, Instant, u64)> = None;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut chunk = &buf[..n];
            if !stalled
                && throttle.is_none()
                && let Some((fault, after)) = faults.due(direction, passed + n as u64)
            {
                // Forward up to the mark, then act.
                let head = after.saturating_sub(passed) as usize;
                if to.write_all(&chunk[..head.min(n)]).is_err() {
                    break;
                }
                passed += head.min(n) as u64;
                chunk = &chunk[head.min(n)..];
                match fault {
                    Fault::Stall => stalled = true,
                    Fault::Reset => {
                        conn.reset.store(true, Ordering::SeqCst);
                        let _ =
                            socket2::SockRef::from(&conn.client).set_linger(Some(Duration::ZERO));
                        let _ = conn.server.shutdown(Shutdown::Both);
                        let _ = conn.client.shutdown(Shutdown::Read);
                        break;
                    }
                    Fault::HalfClose => {
                        let _ = conn.client.shutdown(Shutdown::Write);
                        let _ = conn.server.shutdown(Shutdown::Both);
                        break;
                    }
                    Fault::Throttle(rate) => throttle = Some((rate.max(1), Instant::now(), 0)),
                }
            }
            if stalled {
                // Read and drop: the other side sees a silent connection.
                passed += chunk.len() as u64;
                continue;
            }
            if let Some((rate, since, sent)) = &mut throttle {
                *sent += chunk.len() as u64;
                let due = Duration::from_secs_f64(*sent as f64 / *rate as f64);
                if let Some(wait) = due.checked_sub(since.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            if to.write_all(chunk).is_err() {
                break;
            }
            passed += chunk.len() as u64;
        }
        if !conn.reset.load(Ordering::SeqCst) {
            let _ = to.shutdown(Shutdown::Both);
        } else {
            let _ = conn.server.shutdown(Shutdown::Both);
        }
        // The last holder of the connection closes both sockets; with the reset's zero
        // linger, closing the client's sends it an RST.
    });
}
