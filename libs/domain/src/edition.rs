//! The Marketing Hub editions an account buys. Billing prices them; marketing-status keeps the
//! account's edition to decide what it may use.

use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Edition {
    Starter,
    Professional,
    Enterprise,
}

impl Edition {
    /// The name stored and configured (`starter`, `professional`, `enterprise`).
    pub fn as_str(self) -> &'static str {
        match self {
            Edition::Starter => "starter",
            Edition::Professional => "professional",
            Edition::Enterprise => "enterprise",
        }
    }

    pub fn parse(s: &str) -> Option<Edition> {
        Some(match s {
            "starter" => Edition::Starter,
            "professional" => Edition::Professional,
            "enterprise" => Edition::Enterprise,
            _ => return None,
        })
    }

    /// Workflows are part of Professional and Enterprise.
    pub fn has_workflows(self) -> bool {
        matches!(self, Edition::Professional | Edition::Enterprise)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_the_higher_editions_have_workflows() {
        for e in [Edition::Starter, Edition::Professional, Edition::Enterprise] {
            assert_eq!(Edition::parse(e.as_str()), Some(e));
        }
        assert_eq!(Edition::parse("Professional"), None);
        assert!(!Edition::Starter.has_workflows());
        assert!(Edition::Professional.has_workflows() && Edition::Enterprise.has_workflows());
    }
}
