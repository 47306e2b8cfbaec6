//! How contacts are found by a property's value. PostgreSQL's b-tree takes at most about 2.7 kB
//! an entry while a value holds up to 65,536 characters, so on PostgreSQL values are indexed on
//! two sides of 1,000 bytes: `contact_values_by_short_value` by (account, name, value) holds the
//! short ones, nearly all, and `contact_values_long` by (account, name) the rest (migrations
//! 0019 to 0021). A condition on values names both sides, which lets PostgreSQL use both
//! indexes; SQLite has no such limit and keeps one index over every value.

/// `cond` on the values in `col`, on either side of the split.
pub fn either_side(col: &str, cond: &str) -> String {
    format!("(({} AND {cond}) OR ({} AND {cond}))", short(col), long(col))
}

/// Only the short values: for a property whose values never pass 1,000 bytes (an enumeration's
/// built-in options).
pub fn short(col: &str) -> String {
    format!("octet_length({col}) <= 1000")
}

fn long(col: &str) -> String {
    format!("octet_length({col}) > 1000")
}
