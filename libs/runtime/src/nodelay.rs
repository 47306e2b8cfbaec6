//! The database connections' sockets send each write at once (`TCP_NODELAY`), as libpq's do.
//!
//! sqlx 0.9.0 stopped setting it (launchbadge/sqlx#4335). A COPY writes its rows and then its
//! end as two writes; with Nagle's algorithm the end waits until the server acknowledges the
//! rows, which a server delays by up to 40 ms when it has nothing to answer yet: every small
//! COPY took 40-45 ms. The pool sets it on each new connection ([`connected_to`]), finding the
//! connection's socket among the process's by the server's port.

/// Sets `TCP_NODELAY` on this process's TCP sockets whose peer listens on `port`. Best
/// effort: a socket it cannot read or set is left as it is.
pub fn connected_to(port: u16) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if peer_port(fd) == Some(port) {
            set(fd);
        }
    }
}

/// The port of the peer of socket `fd`, if it is an IP socket that is connected.
fn peer_port(fd: i32) -> Option<u16> {
    port(fd, libc::getpeername)
}

/// The socket's own port.
#[cfg(test)]
fn local_port(fd: i32) -> Option<u16> {
    port(fd, libc::getsockname)
}

type NameFn = unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn port(fd: i32, name: NameFn) -> Option<u16> {
    // SAFETY: an all-zero sockaddr_storage is a valid value of the plain C struct.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the buffer is writable for `len` bytes; a descriptor that is not a socket (or was
    // closed meanwhile) fails the call and nothing is read.
    let rc = unsafe { name(fd, (&raw mut addr).cast(), &raw mut len) };
    if rc != 0 {
        return None;
    }
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(&raw const addr).cast::<libc::sockaddr_in>() };
            Some(u16::from_be(a.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(&raw const addr).cast::<libc::sockaddr_in6>() };
            Some(u16::from_be(a.sin6_port))
        }
        _ => None,
    }
}

fn set(fd: i32) {
    let one: libc::c_int = 1;
    // SAFETY: the option value is a c_int that lives through the call; on anything but a TCP
    // socket the call fails and changes nothing.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
fn is_set(fd: i32) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the buffer is a c_int of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&raw mut value).cast(), &raw mut len)
    };
    rc == 0 && value != 0
}

#[cfg(test)]
mod tests {
    use crate::db::Backend;
    use crate::sql::{Sql, Tx};

    /// Every pooled connection's socket to PostgreSQL sends at once: found by the port the
    /// server sees it from.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pools_connections_send_each_write_at_once() {
        let t = crate::testing::TestDb::new(Backend::Postgres, "nodelay").await;
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = t.db.conn().await.unwrap();
            let port: i32 = conn.scalar(Sql::new("SELECT inet_client_port()")).await.unwrap();
            held.push((conn, u16::try_from(port).unwrap()));
        }
        for (_, port) in &held {
            let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .filter(|fd| super::local_port(*fd) == Some(*port))
                .collect();
            assert_eq!(fds.len(), 1, "the socket from port {port}");
            assert!(super::is_set(fds[0]), "TCP_NODELAY on the connection from port {port}");
        }
    }
}
