//! GDPR consent per contact.

use super::Store;
use crate::error::{Error, Result};
use contactier_runtime::with_pool;

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ConsentRow {
    pub legal_basis: String,
    pub opted_in_at: i64,
    /// JSON array of subscription type names.
    pub subscription_types: String,
    pub unsubscribed_from_all: bool,
}

impl Store {
    pub async fn set_consent(&self, account: &str, contact: &str, c: &ConsentRow) -> Result<()> {
        let known: Option<String> = with_pool!(&self.db, pool => sqlx::query_scalar(
            "SELECT id FROM contacts WHERE account_id = $1 AND id = $2",
        ).bind(account).bind(contact).fetch_optional(pool).await?);
        if known.is_none() {
            return Err(Error::no_contact(contact));
        }
        with_pool!(&self.db, pool => sqlx::query(
            "INSERT INTO consents (account_id, contact_id, legal_basis, opted_in_at, subscription_types, unsubscribed_from_all) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account_id, contact_id) DO UPDATE SET legal_basis = excluded.legal_basis, \
             opted_in_at = excluded.opted_in_at, subscription_types = excluded.subscription_types, \
             unsubscribed_from_all = excluded.unsubscribed_from_all",
        ).bind(account).bind(contact).bind(&c.legal_basis).bind(c.opted_in_at).bind(&c.subscription_types)
        .bind(c.unsubscribed_from_all).execute(pool).await?.rows_affected());
        Ok(())
    }

    pub async fn consent(&self, account: &str, contact: &str) -> Result<Option<ConsentRow>> {
        Ok(with_pool!(&self.db, pool => sqlx::query_as(
            "SELECT legal_basis, opted_in_at, subscription_types, unsubscribed_from_all FROM consents \
             WHERE account_id = $1 AND contact_id = $2",
        ).bind(account).bind(contact).fetch_optional(pool).await?))
    }
}
