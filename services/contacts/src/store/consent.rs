//! GDPR consent per contact.

use super::Store;
use crate::error::{Error, Result};
use contactier_runtime::sql::{Sql, Tx};

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ConsentRow {
    pub legal_basis: String,
    pub opted_in_at: i64,
    /// JSON array of subscription type names.
    pub subscription_types: String,
    pub unsubscribed_from_all: bool,
}

const SET_CONSENT: &str = "INSERT INTO consents (account_id, contact_id, legal_basis, opted_in_at, \
     subscription_types, unsubscribed_from_all) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (account_id, contact_id) DO UPDATE SET legal_basis = excluded.legal_basis, \
     opted_in_at = excluded.opted_in_at, subscription_types = excluded.subscription_types, \
     unsubscribed_from_all = excluded.unsubscribed_from_all";

const CONSENT: &str = "SELECT legal_basis, opted_in_at, subscription_types, unsubscribed_from_all \
     FROM consents WHERE account_id = $1 AND contact_id = $2";

impl ConsentRow {
    fn rule(self) -> crate::duplicates::Consent {
        crate::duplicates::Consent {
            legal_basis: self.legal_basis,
            opted_in_at: self.opted_in_at,
            subscription_types: serde_json::from_str(&self.subscription_types).unwrap_or_default(),
            unsubscribed_from_all: self.unsubscribed_from_all,
        }
    }
}

/// In a merge's transaction: the primary takes the consent both contacts' joined to one.
pub(super) async fn merge(tx: &mut impl Tx, account: &str, primary: &str, secondary: &str) -> Result<()> {
    let p: Option<ConsentRow> = tx.fetch_optional(Sql::new(CONSENT).bind(account).bind(primary)).await?;
    let s: Option<ConsentRow> = tx.fetch_optional(Sql::new(CONSENT).bind(account).bind(secondary)).await?;
    if s.is_none() {
        return Ok(());
    }
    let Some(m) = crate::duplicates::merge_consent(p.map(ConsentRow::rule), s.map(ConsentRow::rule)) else {
        return Ok(());
    };
    let types = serde_json::to_string(&m.subscription_types).expect("JSON of strings");
    let set = Sql::new(SET_CONSENT)
        .bind(account)
        .bind(primary)
        .bind(&m.legal_basis)
        .bind(m.opted_in_at)
        .bind(&types)
        .bind(m.unsubscribed_from_all);
    tx.execute(set).await?;
    Ok(())
}

impl Store {
    pub async fn set_consent(&self, account: &str, contact: &str, c: &ConsentRow, now: i64) -> Result<()> {
        if super::contact(&mut self.db.conn().await?, account, contact).await?.is_none() {
            return Err(Error::no_contact(contact));
        }
        let set = Sql::new(SET_CONSENT)
            .bind(account)
            .bind(contact)
            .bind(&c.legal_basis)
            .bind(c.opted_in_at)
            .bind(&c.subscription_types)
            .bind(c.unsubscribed_from_all);
        let mut tx = self.begin_values_write(account).await?;
        tx.execute(set).await?;
        // An unsubscribe may be what a scoring rule counts.
        if super::scoring::scores_anything(&mut tx, account).await? {
            super::scoring::rescore(&mut tx, &self.db, account, &[contact.to_owned()], now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn consent(&self, account: &str, contact: &str) -> Result<Option<ConsentRow>> {
        Ok(self.db.fetch_optional(Sql::new(CONSENT).bind(account).bind(contact)).await?)
    }
}
