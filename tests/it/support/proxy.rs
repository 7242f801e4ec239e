//! A TCP proxy for fault tests: it forwards to an upstream address and, on command, stalls a
//! connection once it has passed some bytes (keeps it open and forwards nothing more), as a
//! stuck server or a network path that swallows packets would.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default)]
struct Faults {
    /// A connection stalls once this many bytes came from upstream on it.
    stall_after: AtomicU64,
    /// Only one connection stalls (the first to pass the mark); the others go on.
    once: AtomicBool,
    /// The one stall happened.
    fired: AtomicBool,
    /// Connections that stalled.
    stalled: AtomicU64,
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
        faults.stall_after.store(u64::MAX, Ordering::SeqCst);
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
                    pump(
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        None,
                    );
                    pump(server, client, Some(faults.clone()));
                }
            });
        }
        Proxy { port, faults, stop }
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections stall once `bytes` came from upstream on them: only the first one to
    /// get there with `once`, every one without.
    pub fn stall_after(&self, bytes: u64, once: bool) {
        self.faults.once.store(once, Ordering::SeqCst);
        self.faults.fired.store(false, Ordering::SeqCst);
        self.faults.stall_after.store(bytes, Ordering::SeqCst);
    }

    /// Connections that stalled so far.
    pub fn stalled(&self) -> u64 {
        self.faults.stalled.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to`; with `faults`, stops forwarding (reads and drops everything, so the
/// other side sees a silent connection) once the connection passed the mark.
fn pump(mut from: TcpStream, mut to: TcpStream, faults: Option<Arc<Faults>>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut passed = 0u64;
        let mut stalled = false;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !stalled && let Some(f) = &faults {
                let limit = f.stall_after.load(Ordering::SeqCst);
                if passed + n as u64 >= limit
                    && (!f.once.load(Ordering::SeqCst) || !f.fired.swap(true, Ordering::SeqCst))
                {
                    let head = limit.saturating_sub(passed) as usize;
                    if to.write_all(&buf[..head]).is_err() {
                        break;
                    }
                    stalled = true;
                    f.stalled.fetch_add(1, Ordering::SeqCst);
                }
            }
            if !stalled && to.write_all(&buf[..n]).is_err() {
                break;
            }
            passed += n as u64;
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
