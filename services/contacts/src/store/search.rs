//! Search: a compiled filter, one sort key and keyset paging (the cursor holds the last row's
//! sort value and id), so pages stay fast and complete however deep they go.

use super::{CONTACT_COLUMNS, ContactRow, Store, bind_filter};
use crate::error::{Error, Result};
use crate::filter::{Bind, Sql as Filter};
use base64::Engine;
use contactier_runtime::paging::{self, PAGE_BYTES};
use contactier_runtime::sql::Sql;
use sqlx::AssertSqlSafe;

/// How long a search's page or count may read: a filter can ask for work without bound
/// (CONTAINS of 4,096 characters over values of 65,536 takes seconds a value), which would
/// hold a connection and a core, on SQLite the whole database, past any client's wait.
pub const SEARCH_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// A search stopped at [`SEARCH_TIME`] is the filter's cost, said as such; any other error as it is.
fn too_long(e: sqlx::Error) -> Error {
    if contactier_runtime::sql::over_time(&e) {
        return Error::FailedPrecondition(
            "filter: the search took longer than a search may; narrow the filter (fewer or shorter \
             CONTAINS values) or search fewer contacts"
                .into(),
        );
    }
    e.into()
}

/// What results are ordered by; the contact id breaks ties.
#[derive(Clone, Debug, PartialEq)]
pub enum SortKey {
    CreatedAt,
    UpdatedAt,
    Email,
    Id,
    /// A property; numeric ones sort by value.
    Property {
        name: String,
        numeric: bool,
    },
}

/// Where the previous page ended.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// The last row's sort value: text, or a number for times and numeric properties.
    pub text: Option<String>,
    pub num: Option<f64>,
    pub id: String,
    /// The total counted for the first page, carried along so later pages need not count.
    #[serde(default)]
    pub total: Option<i64>,
    /// The search it continues (a digest of its filter and sort), so a token given to another
    /// search is refused rather than read with the wrong total and position.
    #[serde(default)]
    pub search: Option<String>,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("JSON of plain values");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// A cursor this service could have made: its text is what a property holds (no NUL, at
    /// most a value's length), its number finite, its total not negative.
    pub fn decode(token: &str) -> Option<Cursor> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
        let c: Cursor = serde_json::from_slice(&bytes).ok()?;
        let plain = |t: &str| !t.contains('\0') && t.chars().count() <= crate::properties::MAX_TEXT;
        let ok = c.text.as_deref().is_none_or(plain)
            && plain(&c.id)
            && c.num.is_none_or(f64::is_finite)
            && c.total.is_none_or(|t| t >= 0);
        ok.then_some(c)
    }
}

/// Missing numeric values sort first ascending, last descending.
const NUM_MISSING: f64 = -1.0e300;

impl SortKey {
    /// The SQL of the sort value; `p` is the placeholder of the property name.
    fn expr(&self, p: &str) -> String {
        match self {
            SortKey::CreatedAt => "c.created_at".into(),
            SortKey::UpdatedAt => "c.updated_at".into(),
            SortKey::Email => "c.email_key".into(),
            SortKey::Id => "c.id".into(),
            SortKey::Property { numeric, .. } => {
                let (col, missing) =
                    if *numeric { ("v.num", format!("{NUM_MISSING:e}")) } else { ("v.value", "''".into()) };
                format!(
                    "COALESCE((SELECT {col} FROM contact_values v WHERE v.account_id = c.account_id \
                     AND v.contact_id = c.id AND v.name = {p}), {missing})"
                )
            }
        }
    }

    fn numeric(&self) -> bool {
        matches!(self, SortKey::CreatedAt | SortKey::UpdatedAt | SortKey::Property { numeric: true, .. })
    }
}

#[derive(sqlx::FromRow)]
struct Hit {
    #[sqlx(flatten)]
    row: ContactRow,
    sort_text: Option<String>,
    sort_num: Option<f64>,
}

impl Store {
    /// One page of the contacts matching `filter`, and the cursor of the next page if any.
    pub async fn search(
        &self,
        account: &str,
        filter: &Filter,
        sort: &SortKey,
        descending: bool,
        after: Option<&Cursor>,
        limit: i64,
    ) -> Result<(Vec<ContactRow>, Option<Cursor>)> {
        // $1 account, then the filter's values, then ours.
        let mut binds: Vec<Bind> = filter.binds.clone();
        let mut param = |b: Bind| {
            binds.push(b);
            format!("${}", binds.len() + 1)
        };
        let name_param = match sort {
            SortKey::Property { name, .. } => param(Bind::Text(name.clone())),
            _ => String::new(),
        };
        let key = sort.expr(&name_param);
        let (cmp, dir) = if descending { ("<", "DESC") } else { (">", "ASC") };
        let mut page = String::new();
        if let Some(c) = after {
            let value = if sort.numeric() {
                let n = c.num.ok_or_else(|| Error::invalid("page_token", "not from this search"))?;
                // Times sort as integers.
                if matches!(sort, SortKey::CreatedAt | SortKey::UpdatedAt) {
                    param(Bind::Int(n as i64))
                } else {
                    param(Bind::Num(n))
                }
            } else {
                param(Bind::Text(
                    c.text.clone().ok_or_else(|| Error::invalid("page_token", "not from this search"))?,
                ))
            };
            let id = param(Bind::Text(c.id.clone()));
            // As one row comparison, which the index on (account, key, id) starts a page at;
            // spelt out as OR it scanned every row before the page.
            page = format!(" AND ({key}, c.id) {cmp} ({value}, {id})");
        }
        let (text_col, num_col) = if sort.numeric() {
            ("NULL".to_owned(), format!("CAST({key} AS DOUBLE PRECISION)"))
        } else {
            (key.clone(), "NULL".to_owned())
        };
        // Rows past the page's bytes are not read out: each row carries the bytes of values
        // before it (the one that crosses the budget comes too, to tell that more follow).
        let order = format!("ORDER BY {key} {dir}, c.id {dir}");
        let sql = format!(
            "SELECT * FROM (SELECT {CONTACT_COLUMNS}, CAST({text_col} AS TEXT) AS sort_text, {num_col} AS sort_num, \
             ROW_NUMBER() OVER ({order}) AS page_row, \
             SUM(octet_length(c.properties)) OVER ({order}) - octet_length(c.properties) AS bytes_before \
             FROM contacts c WHERE c.account_id = $1 AND ({}){page} {order} LIMIT {}) p \
             WHERE p.bytes_before <= {PAGE_BYTES} ORDER BY p.page_row",
            filter.text,
            limit + 1
        );
        let q = bind_filter(Sql::new(AssertSqlSafe(sql)).bind(account), &binds);
        let mut hits: Vec<Hit> = self.db.fetch_all_within(q, self.search_time).await.map_err(too_long)?;
        let fit = paging::fitting(hits.iter().map(|h| h.row.properties.len()), PAGE_BYTES);
        let keep = fit.min(limit as usize);
        let next = if hits.len() > keep {
            hits.truncate(keep);
            hits.last().map(|h| Cursor {
                text: h.sort_text.clone(),
                num: h.sort_num,
                id: h.row.id.clone(),
                total: None,
                search: None,
            })
        } else {
            None
        };
        Ok((hits.into_iter().map(|h| h.row).collect(), next))
    }

    /// How many contacts match `filter`.
    pub async fn count_matching(&self, account: &str, filter: &Filter) -> Result<i64> {
        let sql = format!("SELECT COUNT(*) FROM contacts c WHERE c.account_id = $1 AND ({})", filter.text);
        let q = bind_filter(Sql::new(AssertSqlSafe(sql)).bind(account), &filter.binds);
        self.db.scalar_within(q, self.search_time).await.map_err(too_long)
    }

    /// Whether the contact `id` matches `filter`.
    pub async fn matches(&self, account: &str, filter: &Filter, id: &str) -> Result<bool> {
        let p = filter.binds.len() + 2;
        let sql = format!(
            "SELECT c.id FROM contacts c WHERE c.account_id = $1 AND ({}) AND c.id = ${p}",
            filter.text
        );
        let q = bind_filter(Sql::new(AssertSqlSafe(sql)).bind(account), &filter.binds).bind(id);
        let found: Option<String> = self.db.scalar_optional(q).await?;
        Ok(found.is_some())
    }

    /// Ids of the contacts matching `filter`, in id order after `after`.
    pub async fn matching_ids(
        &self,
        account: &str,
        filter: &Filter,
        after: &str,
        limit: i64,
    ) -> Result<Vec<String>> {
        let p = filter.binds.len() + 2;
        let sql = format!(
            "SELECT c.id FROM contacts c WHERE c.account_id = $1 AND ({}) AND c.id > ${p} \
             ORDER BY c.id LIMIT {limit}",
            filter.text
        );
        let q = bind_filter(Sql::new(AssertSqlSafe(sql)).bind(account), &filter.binds).bind(after);
        let ids: Vec<(String,)> = self.db.fetch_all(q).await?;
        Ok(ids.into_iter().map(|r| r.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewContact;
    use contactier_runtime::db::Backend;
    use contactier_runtime::testing::TestDb;

    const ACCOUNT: &str = "acct-search";

    /// A filter that asks for more work than a search may do is stopped, its page and its count
    /// alike, with a refusal naming the filter; the next search is answered as before.
    async fn a_search_past_its_time_is_stopped_and_said_so(backend: Backend) {
        let t = TestDb::new(backend, "contacts").await;
        t.db.migrate_service(crate::SERVICE.migrations).await.unwrap();
        let store = Store::new(t.db.clone()).with_search_time(std::time::Duration::from_millis(200));
        let one = NewContact::by_user("slow@example.com", &[]);
        store.create_contacts(ACCOUNT, vec![one], chrono::Utc::now(), None).await.unwrap();
        // Counts to a hundred million for the contact: far past the budget on either backend.
        let slow = Filter {
            text: "(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000000) \
                   SELECT COUNT(*) FROM n) > 0"
                .into(),
            binds: Vec::new(),
        };
        let err = store.count_matching(ACCOUNT, &slow).await.unwrap_err();
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.starts_with("filter: ")),
            "{backend:?}: {err:?}"
        );
        let err = store.search(ACCOUNT, &slow, &SortKey::CreatedAt, false, None, 10).await.unwrap_err();
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.starts_with("filter: ")),
            "{backend:?}: {err:?}"
        );
        let every = Filter { text: "1 = 1".into(), binds: Vec::new() };
        assert_eq!(store.count_matching(ACCOUNT, &every).await.unwrap(), 1, "{backend:?}");
        let (rows, _) = store.search(ACCOUNT, &every, &SortKey::CreatedAt, false, None, 10).await.unwrap();
        assert_eq!(rows.len(), 1, "{backend:?}: answered as before");
    }

    contactier_runtime::backend_tests!(a_search_past_its_time_is_stopped_and_said_so);
}
