//! Deadlines across services: the time left on an incoming call (its `grpc-timeout`) goes
//! with every call the handler makes to another service, so work downstream stops when the
//! original caller has stopped waiting.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// A `grpc-timeout` value: up to eight digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Runs `f` (a handler) with the deadline of its request, if it has one.
pub async fn scope<F: Future>(timeout: Option<Duration>, f: F) -> F::Output {
    match timeout {
        Some(t) => DEADLINE.scope(Instant::now() + t, f).await,
        None => f.await,
    }
}

/// The time left for the request being handled; `None` outside a request with a deadline.
pub fn remaining() -> Option<Duration> {
    DEADLINE.try_with(|d| d.saturating_duration_since(Instant::now())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_bad_ones_do_not() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7_200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "10", "10x", "123456789S", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_time_left_shrinks_inside_a_request_and_is_none_outside() {
        assert_eq!(remaining(), None);
        scope(Some(Duration::from_secs(2)), async {
            assert_eq!(remaining(), Some(Duration::from_secs(2)));
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(remaining(), Some(Duration::from_millis(1_500)));
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_eq!(remaining(), Some(Duration::ZERO));
        })
        .await;
        scope(None, async { assert_eq!(remaining(), None) }).await;
    }
}
