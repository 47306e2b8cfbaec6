//! Small domain types shared by the services.

pub mod edition;
pub mod money;

pub use edition::Edition;
pub use money::{Currency, Money, MoneyError};
