//! The price book: tiers and prices per edition and currency, and the subsidiaries with their
//! time zones. Configuration, not code: a TOML file, checked whole when loaded.

use crate::calendar::Term;
use crate::tiers::{TierError, TierShape};
use chrono::NaiveTime;
use chrono_tz::Tz;
use contactier_domain::{Currency, Money};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The price book shipped with Contactier.
pub const DEFAULT: &str = include_str!("../config/price-book.toml");

pub use contactier_domain::Edition;

/// Prices of one edition in one currency, per term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub base_monthly: i64,
    pub base_annual: i64,
    pub step_monthly: i64,
    pub step_annual: i64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EditionFile {
    included: i64,
    step: i64,
    max_tier: i64,
    prices: BTreeMap<String, Prices>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubsidiaryFile {
    code: String,
    time_zone: String,
    processing_time: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    subsidiaries: Vec<SubsidiaryFile>,
    editions: BTreeMap<Edition, EditionFile>,
}

#[derive(Clone, Debug)]
pub struct EditionTiers {
    pub shape: TierShape,
    pub prices: BTreeMap<Currency, Prices>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subsidiary {
    pub code: String,
    pub time_zone: Tz,
    pub processing_time: NaiveTime,
}

#[derive(Clone, Debug)]
pub struct PriceBook {
    pub editions: BTreeMap<Edition, EditionTiers>,
    pub subsidiaries: Vec<Subsidiary>,
}

#[derive(Debug, thiserror::Error)]
pub enum PriceBookError {
    #[error("price book: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("price book: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("the {0} edition is not in the price book")]
    UnknownEdition(&'static str),
    #[error("the {0} edition has no prices in {1}")]
    NoPrices(&'static str, Currency),
    #[error(transparent)]
    Tier(#[from] TierError),
}

impl PriceBook {
    pub fn parse(text: &str) -> Result<PriceBook, PriceBookError> {
        let file: File = toml::from_str(text)?;
        let invalid = |m: String| PriceBookError::Invalid(m);
        let mut editions = BTreeMap::new();
        for (edition, e) in file.editions {
            let shape = TierShape::new(e.included, e.step, e.max_tier)
                .map_err(|err| invalid(format!("{}: {err}", edition.as_str())))?;
            let mut prices = BTreeMap::new();
            for (code, p) in e.prices {
                let currency =
                    Currency::parse(&code).map_err(|err| invalid(format!("{}: {err}", edition.as_str())))?;
                if [p.base_monthly, p.base_annual, p.step_monthly, p.step_annual].iter().any(|v| *v < 0) {
                    return Err(invalid(format!("{} {code}: prices must not be negative", edition.as_str())));
                }
                // The largest tier's price must be representable, so no price computation overflows.
                shape
                    .price(
                        shape.max_tier,
                        Money::new(p.base_annual, currency),
                        Money::new(p.step_annual, currency),
                    )
                    .map_err(|err| invalid(format!("{} {code}: {err}", edition.as_str())))?;
                prices.insert(currency, p);
            }
            editions.insert(edition, EditionTiers { shape, prices });
        }
        let mut subsidiaries = Vec::new();
        for s in file.subsidiaries {
            let time_zone: Tz = s
                .time_zone
                .parse()
                .map_err(|_| invalid(format!("subsidiary {}: unknown time zone {}", s.code, s.time_zone)))?;
            let processing_time = NaiveTime::parse_from_str(&s.processing_time, "%H:%M")
                .map_err(|_| invalid(format!("subsidiary {}: processing_time must be HH:MM", s.code)))?;
            if subsidiaries.iter().any(|x: &Subsidiary| x.code == s.code) {
                return Err(invalid(format!("subsidiary {} appears twice", s.code)));
            }
            subsidiaries.push(Subsidiary { code: s.code, time_zone, processing_time });
        }
        if subsidiaries.is_empty() {
            return Err(invalid("at least one subsidiary is required".into()));
        }
        Ok(PriceBook { editions, subsidiaries })
    }

    pub fn subsidiary(&self, code: &str) -> Option<&Subsidiary> {
        self.subsidiaries.iter().find(|s| s.code == code)
    }

    pub fn edition(&self, edition: Edition) -> Result<&EditionTiers, PriceError> {
        self.editions.get(&edition).ok_or(PriceError::UnknownEdition(edition.as_str()))
    }

    /// The price per term of `tier`.
    pub fn price(
        &self,
        edition: Edition,
        currency: Currency,
        term: Term,
        tier: i64,
    ) -> Result<Money, PriceError> {
        let e = self.edition(edition)?;
        let p = e.prices.get(&currency).ok_or(PriceError::NoPrices(edition.as_str(), currency))?;
        let (base, step) = match term {
            Term::Monthly => (p.base_monthly, p.step_monthly),
            Term::Annual => (p.base_annual, p.step_annual),
        };
        Ok(e.shape.price(tier, Money::new(base, currency), Money::new(step, currency))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_price_book_has_the_designed_shape() {
        let book = PriceBook::parse(DEFAULT).unwrap();
        let shape = |e| book.edition(e).unwrap().shape.clone();
        assert_eq!((shape(Edition::Starter).included, shape(Edition::Starter).step), (1_000, 1_000));
        assert_eq!(
            (shape(Edition::Professional).included, shape(Edition::Professional).step),
            (2_000, 5_000)
        );
        assert_eq!((shape(Edition::Enterprise).included, shape(Edition::Enterprise).step), (10_000, 10_000));
        let ny = book.subsidiary("NA").unwrap();
        assert_eq!(ny.time_zone, chrono_tz::America::New_York);
        assert_eq!(ny.processing_time, NaiveTime::MIN);
    }

    #[test]
    fn prices_follow_the_tier_steps() {
        let book = PriceBook::parse(DEFAULT).unwrap();
        let eur = Currency::parse("EUR").unwrap();
        let p = |tier| book.price(Edition::Professional, eur, Term::Monthly, tier).unwrap().minor;
        assert_eq!(p(2_000), 80_000);
        assert_eq!(p(7_000), 102_500);
        assert_eq!(p(12_000), 125_000);
        let gbp = Currency::parse("GBP").unwrap();
        assert_eq!(
            book.price(Edition::Professional, gbp, Term::Monthly, 2_000),
            Err(PriceError::NoPrices("professional", gbp))
        );
        assert!(matches!(
            book.price(Edition::Professional, eur, Term::Annual, 3_000),
            Err(PriceError::Tier(TierError::NotATier(3_000)))
        ));
    }

    #[test]
    fn a_bad_price_book_is_refused_with_the_reason() {
        let cases = [
            ("subsidiaries = []\n[editions]\n", "at least one subsidiary"),
            (
                "[[subsidiaries]]\ncode='X'\ntime_zone='Mars/Olympus'\nprocessing_time='00:00'\n[editions]\n",
                "unknown time zone",
            ),
            ("[[subsidiaries]]\ncode='X'\ntime_zone='UTC'\nprocessing_time='25:00'\n[editions]\n", "HH:MM"),
            (
                "[[subsidiaries]]\ncode='X'\ntime_zone='UTC'\nprocessing_time='00:00'\n[editions.starter]\nincluded=1000\nstep=1000\nmax_tier=1500\nprices={}\n",
                "whole steps",
            ),
            (
                "[[subsidiaries]]\ncode='X'\ntime_zone='UTC'\nprocessing_time='00:00'\n[editions.starter]\nincluded=1000\nstep=1000\nmax_tier=1000\n[editions.starter.prices.eur]\nbase_monthly=1\nbase_annual=1\nstep_monthly=1\nstep_annual=1\n",
                "ISO 4217",
            ),
            (
                "[[subsidiaries]]\ncode='X'\ntime_zone='UTC'\nprocessing_time='00:00'\n[editions.gold]\n",
                "unknown variant",
            ),
        ];
        for (text, want) in cases {
            let err = PriceBook::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }
}
