//! Money as integer minor units of one currency. Never a float.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An ISO 4217 code: three upper-case ASCII letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        match code.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => Ok(Currency([*a, *b, *c])),
            _ => Err(MoneyError::BadCurrency(code.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII by construction")
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Currency::parse(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency {0:?} is not an ISO 4217 code")]
    BadCurrency(String),
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount out of range")]
    Overflow,
    #[error("a ratio needs a positive denominator")]
    BadRatio,
}

/// An amount in minor units (cents) of a currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    pub fn zero(currency: Currency) -> Self {
        Self { minor: 0, currency }
    }

    fn same(&self, other: &Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same(&other)?;
        Ok(Money::new(self.minor.checked_add(other.minor).ok_or(MoneyError::Overflow)?, self.currency))
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same(&other)?;
        Ok(Money::new(self.minor.checked_sub(other.minor).ok_or(MoneyError::Overflow)?, self.currency))
    }

    pub fn checked_mul(self, factor: i64) -> Result<Money, MoneyError> {
        Ok(Money::new(self.minor.checked_mul(factor).ok_or(MoneyError::Overflow)?, self.currency))
    }

    /// `self × numerator / denominator`, rounded half away from zero once, in exact integer
    /// arithmetic (no intermediate rounding, no floats).
    pub fn mul_ratio_half_up(self, numerator: i64, denominator: i64) -> Result<Money, MoneyError> {
        if denominator <= 0 {
            return Err(MoneyError::BadRatio);
        }
        let product = i128::from(self.minor) * i128::from(numerator);
        let d = i128::from(denominator);
        let (q, r) = (product / d, product % d);
        // |r| * 2 >= d means the fraction is at least one half: round away from zero.
        let rounded = if r.abs() * 2 >= d { q + product.signum() } else { q };
        Ok(Money::new(i64::try_from(rounded).map_err(|_| MoneyError::Overflow)?, self.currency))
    }
}

impl fmt::Display for Money {
    /// `12.34 EUR` for currencies with two minor digits (all the price book uses).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        write!(f, "{sign}{}.{:02} {}", abs / 100, abs % 100, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(minor: i64) -> Money {
        Money::new(minor, Currency::parse("EUR").unwrap())
    }

    #[test]
    fn currency_codes_are_three_upper_case_letters() {
        assert_eq!(Currency::parse("USD").unwrap().as_str(), "USD");
        for bad in ["usd", "US", "USDX", "", "U$D"] {
            assert!(Currency::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ratios_round_half_up_once() {
        // (amount, numerator, denominator, expected)
        let table = [
            (100, 1, 3, 33),          // 33.33 -> 33
            (200, 1, 3, 67),          // 66.67 -> 67
            (100, 1, 2, 50),          // exact
            (1, 1, 2, 1),             // 0.5 -> 1 (half up)
            (3, 1, 2, 2),             // 1.5 -> 2
            (5, 1, 4, 1),             // 1.25 -> 1
            (-1, 1, 2, -1),           // -0.5 -> -1 (half away from zero)
            (-5, 1, 4, -1),           // -1.25 -> -1
            (50_000, 17, 30, 28_333), // 28333.33
            (50_000, 16, 31, 25_806), // 25806.45
            (12_000_000, 366, 366, 12_000_000),
            (0, 5, 7, 0),
        ];
        for (amount, n, d, want) in table {
            assert_eq!(eur(amount).mul_ratio_half_up(n, d).unwrap().minor, want, "{amount}×{n}/{d}");
        }
    }

    #[test]
    fn large_amounts_do_not_overflow_in_the_middle() {
        let big = eur(i64::MAX / 2);
        assert_eq!(big.mul_ratio_half_up(365, 365).unwrap(), big);
        assert_eq!(eur(i64::MAX).mul_ratio_half_up(2, 1), Err(MoneyError::Overflow));
        assert_eq!(eur(1).mul_ratio_half_up(1, 0), Err(MoneyError::BadRatio));
    }

    #[test]
    fn currencies_never_mix() {
        let usd = Money::new(100, Currency::parse("USD").unwrap());
        assert!(matches!(eur(100).checked_add(usd), Err(MoneyError::CurrencyMismatch(..))));
        assert_eq!(eur(150).checked_sub(eur(50)).unwrap(), eur(100));
        assert_eq!(eur(-1234).to_string(), "-12.34 EUR");
        assert_eq!(eur(5).to_string(), "0.05 EUR");
    }
}
