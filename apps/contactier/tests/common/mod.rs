//! What the tests that run `contactier` as a process share.

/// A first port with the three after it free too, for the four services.
pub fn free_base() -> u16 {
    for _ in 0..200 {
        let base = 20_000 + rand::random::<u16>() % 30_000;
        let held: Vec<_> =
            (0..4).filter_map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok()).collect();
        if held.len() == 4 {
            return base;
        }
    }
    panic!("no four free ports in a row");
}
