//! Per-account rate limits: each account gets a steady rate of calls a second with a burst on
//! top, on each replica; past it, RESOURCE_EXHAUSTED with the time to wait. Calls between
//! services are not limited: they carry work an account already paid its calls for.

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::num::NonZeroU32;
use std::sync::Arc;
use tonic::Status;

/// Calls a second and burst, per account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

#[derive(Clone)]
pub struct AccountLimiter {
    limit: RateLimit,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

/// Accounts remembered before the idle ones are forgotten.
const KEEP: usize = 100_000;

impl AccountLimiter {
    pub fn new(limit: RateLimit) -> Self {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Self { limit, limiter: Arc::new(DefaultKeyedRateLimiter::keyed(quota)) }
    }

    /// Counts one call of `account`; refuses it when the account is over its rate.
    pub fn check(&self, account: &str) -> Result<(), Status> {
        if self.limiter.len() > KEEP {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&account.to_owned()).map_err(|not_until| {
            metrics::counter!("contactier_rate_limited_total").increment(1);
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Status::resource_exhausted(format!(
                "rate limit of {} calls a second for this account reached; retry in {} ms",
                self.limit.per_second,
                wait.as_millis().max(1)
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_past_its_burst_waits_and_others_do_not() {
        let n = |v| NonZeroU32::new(v).unwrap();
        let l = AccountLimiter::new(RateLimit { per_second: n(1), burst: n(5) });
        for _ in 0..5 {
            l.check("a").unwrap();
        }
        let refused = l.check("a").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("retry in"), "{}", refused.message());
        l.check("b").unwrap();
    }
}
