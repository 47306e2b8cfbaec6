//! Small domain types shared by the services.

pub mod money;

pub use money::{Currency, Money, MoneyError};
