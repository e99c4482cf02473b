//! The physical floor: what two processes joined by a Unix socketpair do with no framing, no
//! serde and no pool. Every pool figure is printed beside the floor measured in the same run.
//!
//! The peer is this program started again with `floor-peer`: it echoes every byte it reads on
//! its standard input (one end of the socketpair) back to it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The argument that makes this program the echo peer.
pub(crate) const PEER_ARG: &str = "floor-peer";

/// The argument that makes this program write one byte to standard output and exit.
pub(crate) const READY_ARG: &str = "floor-ready";

/// Echoes standard input (a socket) back to itself until end of file.
pub(crate) fn peer_main() {
    use std::os::fd::AsFd;
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("standard input");
    let mut stream = UnixStream::from(fd);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// A running echo peer and our end of its socket.
pub(crate) struct Peer {
    child: Child,
    stream: UnixStream,
}

impl Peer {
    pub(crate) fn start() -> std::io::Result<Self> {
        let (ours, theirs) = UnixStream::pair()?;
        let child = Command::new(std::env::current_exe()?)
            .arg(PEER_ARG)
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Self {
            child,
            stream: ours,
        })
    }

    /// The peer's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `n` round trips of 16 bytes; each one's duration.
    pub(crate) fn round_trips(&mut self, n: usize) -> Vec<Duration> {
        let out = [7u8; 16];
        let mut back = [0u8; 16];
        (0..n)
            .map(|_| {
                let t = Instant::now();
                self.stream.write_all(&out).expect("write");
                self.stream.read_exact(&mut back).expect("read");
                t.elapsed()
            })
            .collect()
    }

    /// Sends `count` frames of `size` bytes, `batch` to a write, from another thread while
    /// reading the echo here; returns the time until the last byte came back.
    pub(crate) fn pipelined(&mut self, size: usize, count: usize, batch: usize) -> Duration {
        let mut writer = self.stream.try_clone().expect("clone the socket");
        let started = Instant::now();
        let sender = std::thread::spawn(move || {
            // With a batch of 1, one write per frame: the cost of moving a message, with
            // nothing batched.
            let frames = vec![7u8; size * batch];
            let mut left = count;
            while left > 0 {
                let n = left.min(batch);
                writer.write_all(&frames[..size * n]).expect("write");
                left -= n;
            }
        });
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size * count;
        while left > 0 {
            let n = self.stream.read(&mut buf).expect("read");
            assert!(n > 0, "the peer hung up");
            left -= n.min(left);
        }
        let took = started.elapsed();
        sender.join().expect("the sender");
        took
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

/// Starts `n` processes of this program that each write a byte and exit; the time until every
/// byte arrived: the cost of starting processes, with nothing else.
pub(crate) fn spawn_ready(n: usize) -> std::io::Result<Duration> {
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut children = (0..n)
        .map(|_| {
            Command::new(&exe)
                .arg(READY_ARG)
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    for child in &mut children {
        let mut byte = [0u8; 1];
        child
            .stdout
            .as_mut()
            .expect("piped")
            .read_exact(&mut byte)?;
    }
    let took = started.elapsed();
    for mut child in children {
        child.wait()?;
    }
    Ok(took)
}
