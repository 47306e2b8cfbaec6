//! Search filters: OR of AND groups, checked against the account's properties and compiled to
//! one SQL condition over `contacts c` (values live in `contact_values`, one row per property).
//! The same SQL runs on SQLite and PostgreSQL, but for CONTAINS: SQLite's LOWER folds ASCII
//! letters only, so there the text is matched by a case-insensitive REGEXP.

use crate::properties::{Catalog, PropertyType, normalize};
use crate::value_index;
use chrono::{DateTime, NaiveDate, Utc};
use contactier_proto::contacts::v1::{self as pb, FilterOperator as Op};
use contactier_runtime::db::Backend;

pub const MAX_GROUPS: usize = 10;
pub const MAX_FILTERS_PER_GROUP: usize = 20;
pub const MAX_IN_VALUES: usize = 1_000;

/// A value bound to a placeholder.
#[derive(Clone, Debug, PartialEq)]
pub enum Bind {
    Text(String),
    Num(f64),
    Int(i64),
}

/// A condition with `$n` placeholders and their values in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sql {
    pub text: String,
    pub binds: Vec<Bind>,
}

impl Sql {
    /// Adds a placeholder for `b`, numbered after `offset` earlier ones.
    fn param(&mut self, offset: usize, b: Bind) -> String {
        self.binds.push(b);
        format!("${}", offset + self.binds.len())
    }
}

/// A refused filter: the field path and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    pub field: String,
    pub reason: String,
}

/// How a filter's property is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target<'a> {
    Email,
    Id,
    Time(&'static str),
    Property(&'a str, PropertyType),
}

/// Compiles `filter` to a condition on `c`; placeholders start after `offset`. No groups match
/// every contact.
pub fn compile(
    filter: Option<&pb::ContactFilter>,
    catalog: &Catalog,
    backend: Backend,
    offset: usize,
) -> Result<Sql, FilterError> {
    let groups = filter.map(|f| f.groups.as_slice()).unwrap_or_default();
    let mut sql = Sql::default();
    if groups.is_empty() {
        sql.text = "1 = 1".into();
        return Ok(sql);
    }
    if groups.len() > MAX_GROUPS {
        return Err(FilterError { field: "filter.groups".into(), reason: format!("at most {MAX_GROUPS}") });
    }
    let mut ors = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        if group.filters.is_empty() {
            return Err(FilterError {
                field: format!("filter.groups[{g}].filters"),
                reason: "required".into(),
            });
        }
        if group.filters.len() > MAX_FILTERS_PER_GROUP {
            return Err(FilterError {
                field: format!("filter.groups[{g}].filters"),
                reason: format!("at most {MAX_FILTERS_PER_GROUP}"),
            });
        }
        let mut ands = Vec::new();
        for (i, f) in group.filters.iter().enumerate() {
            let path = format!("filter.groups[{g}].filters[{i}]");
            ands.push(one(f, catalog, backend, &mut sql, offset, &path)?);
        }
        ors.push(format!("({})", ands.join(" AND ")));
    }
    sql.text = ors.join(" OR ");
    Ok(sql)
}

fn target<'a>(name: &'a str, catalog: &'a Catalog) -> Option<Target<'a>> {
    Some(match name {
        "email" => Target::Email,
        "id" => Target::Id,
        "created_at" => Target::Time("created_at"),
        "updated_at" => Target::Time("updated_at"),
        p => Target::Property(p, catalog.get(p)?.ptype),
    })
}

/// A filter value in the form stored for the target.
fn operand(t: Target<'_>, catalog: &Catalog, raw: &str) -> Result<Bind, String> {
    match t {
        Target::Email => Ok(Bind::Text(raw.trim().to_lowercase())),
        Target::Id => Ok(Bind::Text(raw.trim().to_owned())),
        Target::Time(_) => time_micros(raw).map(Bind::Int),
        Target::Property(name, ptype) => {
            let def = catalog.get(name).expect("target found in the catalog");
            match ptype {
                // Text comparisons use the text as it is stored: single lines trimmed, several
                // lines as written (a value may begin with a tab or end with a line break).
                PropertyType::SingleLineText => Ok(Bind::Text(raw.trim().to_owned())),
                PropertyType::MultiLineText => Ok(Bind::Text(raw.to_owned())),
                PropertyType::Number => {
                    Ok(Bind::Num(normalize(def, raw)?.num.expect("numbers have a value")))
                }
                _ => Ok(Bind::Text(normalize(def, raw)?.text)),
            }
        }
    }
}

/// RFC 3339 or a date (its start in UTC), as epoch microseconds.
fn time_micros(raw: &str) -> Result<i64, String> {
    let t = raw.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc).timestamp_micros());
    }
    NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp_micros())
        .map_err(|_| format!("{} is not a time (RFC 3339 or YYYY-MM-DD)", crate::properties::quoted(t)))
}

fn one(
    f: &pb::Filter,
    catalog: &Catalog,
    backend: Backend,
    sql: &mut Sql,
    offset: usize,
    path: &str,
) -> Result<String, FilterError> {
    let err = |field: &str, reason: String| FilterError { field: format!("{path}.{field}"), reason };
    let t = target(&f.property, catalog)
        .ok_or_else(|| err("property", format!("no such property {:?}", f.property)))?;
    let op = Op::try_from(f.operator).unwrap_or(Op::Unspecified);
    // Where the compared value lives, and a condition that the contact has the property.
    let (column, has) = match t {
        Target::Email => ("c.email_key".to_owned(), None),
        Target::Id => ("c.id".to_owned(), None),
        Target::Time(col) => (format!("c.{col}"), None),
        Target::Property(name, ptype) => {
            let p = sql.param(offset, Bind::Text(name.to_owned()));
            let col = if ptype == PropertyType::Number { "v.num" } else { "v.value" };
            (col.to_owned(), Some(p))
        }
    };
    // A condition on the value: direct for fields, inside EXISTS for properties.
    let on_value = |cond: String| match &has {
        None => cond,
        Some(p) => {
            let cond = if column == "v.value" { value_index::either_side(&column, &cond) } else { cond };
            format!(
                "EXISTS (SELECT 1 FROM contact_values v WHERE v.account_id = c.account_id AND v.contact_id = c.id AND v.name = {p} AND {cond})"
            )
        }
    };
    let value = |sql: &mut Sql, raw: &str, field: &str| -> Result<String, FilterError> {
        let b = operand(t, catalog, raw).map_err(|r| err(field, r))?;
        Ok(sql.param(offset, b))
    };
    let values = |sql: &mut Sql| -> Result<String, FilterError> {
        if f.values.is_empty() || f.values.len() > MAX_IN_VALUES {
            return Err(err("values", format!("1 to {MAX_IN_VALUES} values")));
        }
        let ps = f
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| value(sql, v, &format!("values[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ps.join(", "))
    };
    let ordered = matches!(op, Op::Lt | Op::Lte | Op::Gt | Op::Gte | Op::Between);
    if ordered && matches!(t, Target::Property(_, PropertyType::Enumeration | PropertyType::Checkbox)) {
        return Err(err("operator", "enumerations and checkboxes compare by equality only".into()));
    }
    let textual = matches!(
        t,
        Target::Email
            | Target::Id
            | Target::Property(_, PropertyType::SingleLineText | PropertyType::MultiLineText)
    );
    Ok(match op {
        Op::Eq => on_value(format!("{column} = {}", value(sql, &f.value, "value")?)),
        Op::Neq => format!("NOT {}", on_value(format!("{column} = {}", value(sql, &f.value, "value")?))),
        Op::Lt => on_value(format!("{column} < {}", value(sql, &f.value, "value")?)),
        Op::Lte => on_value(format!("{column} <= {}", value(sql, &f.value, "value")?)),
        Op::Gt => on_value(format!("{column} > {}", value(sql, &f.value, "value")?)),
        Op::Gte => on_value(format!("{column} >= {}", value(sql, &f.value, "value")?)),
        Op::Between => {
            // A range that holds nothing is a mistake, not a search.
            let bounds = (operand(t, catalog, &f.value), operand(t, catalog, &f.high_value));
            let inverted = match bounds {
                (Ok(Bind::Text(a)), Ok(Bind::Text(b))) => a > b,
                (Ok(Bind::Num(a)), Ok(Bind::Num(b))) => a > b,
                (Ok(Bind::Int(a)), Ok(Bind::Int(b))) => a > b,
                _ => false,
            };
            if inverted {
                return Err(err("high_value", "must not be below value".into()));
            }
            let lo = value(sql, &f.value, "value")?;
            let hi = value(sql, &f.high_value, "high_value")?;
            on_value(format!("{column} >= {lo} AND {column} <= {hi}"))
        }
        Op::Contains | Op::NotContains => {
            if !textual {
                return Err(err("operator", "CONTAINS applies to text, email and id".into()));
            }
            let needle = f.value.trim().to_lowercase();
            if needle.is_empty() {
                return Err(err("value", "required".into()));
            }
            let cond = match backend {
                Backend::Postgres => {
                    let escaped = needle.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                    let p = sql.param(offset, Bind::Text(format!("%{escaped}%")));
                    on_value(format!("LOWER({column}) LIKE {p} ESCAPE '\\'"))
                }
                Backend::Sqlite => {
                    let p = sql.param(offset, Bind::Text(format!("(?i){}", regex::escape(&needle))));
                    on_value(format!("{column} REGEXP {p}"))
                }
            };
            if op == Op::Contains { cond } else { format!("NOT {cond}") }
        }
        Op::In => on_value(format!("{column} IN ({})", values(sql)?)),
        Op::NotIn => format!("NOT {}", on_value(format!("{column} IN ({})", values(sql)?))),
        Op::HasProperty | Op::NotHasProperty => {
            let Some(_) = &has else {
                return Err(err("operator", "email, id and times are always present".into()));
            };
            let cond = on_value("1 = 1".into());
            if op == Op::HasProperty { cond } else { format!("NOT {cond}") }
        }
        Op::Unspecified => return Err(err("operator", "required".into())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::properties::Definition;

    fn catalog() -> Catalog {
        Catalog::new(vec![Definition {
            name: "score".into(),
            label: "Score".into(),
            ptype: PropertyType::Number,
            options: vec![],
            standard: false,
            description: String::new(),
        }])
    }

    fn f(property: &str, op: Op, value: &str) -> pb::Filter {
        pb::Filter {
            property: property.into(),
            operator: op as i32,
            value: value.into(),
            ..Default::default()
        }
    }

    fn groups(gs: Vec<Vec<pb::Filter>>) -> pb::ContactFilter {
        pb::ContactFilter { groups: gs.into_iter().map(|filters| pb::FilterGroup { filters }).collect() }
    }

    #[test]
    fn groups_or_filters_and() {
        let filter = groups(vec![
            vec![f("score", Op::Gt, "10"), f("email", Op::Contains, "Example")],
            vec![f("lifecycle_stage", Op::Eq, "customer")],
        ]);
        let sql = compile(Some(&filter), &catalog(), Backend::Postgres, 1).unwrap();
        let (first, second) = sql.text.split_once(") OR (EXISTS").expect("two groups");
        assert!(first.contains(" AND LOWER(c.email_key) LIKE $4"), "{}", sql.text);
        assert!(second.contains("v.value = $6"), "{}", sql.text);
        assert!(sql.text.contains("v.num > $3"), "{}", sql.text);
        assert_eq!(sql.binds[0], Bind::Text("score".into()));
        assert_eq!(sql.binds[1], Bind::Num(10.0));
        assert_eq!(sql.binds[2], Bind::Text("%example%".into()), "case-insensitive, wildcards");
        assert_eq!(compile(None, &catalog(), Backend::Postgres, 0).unwrap().text, "1 = 1");
    }

    #[test]
    fn bad_filters_name_the_field() {
        let cases = [
            (f("shoe_size", Op::Eq, "4"), "filter.groups[0].filters[0].property"),
            (f("score", Op::Eq, "ten"), "filter.groups[0].filters[0].value"),
            (f("score", Op::Unspecified, "1"), "filter.groups[0].filters[0].operator"),
            (f("lifecycle_stage", Op::Lt, "lead"), "filter.groups[0].filters[0].operator"),
            (f("score", Op::Contains, "1"), "filter.groups[0].filters[0].operator"),
            (f("email", Op::HasProperty, ""), "filter.groups[0].filters[0].operator"),
            (f("created_at", Op::Gt, "yesterday"), "filter.groups[0].filters[0].value"),
            (f("score", Op::In, ""), "filter.groups[0].filters[0].values"),
            (
                pb::Filter { high_value: "5".into(), ..f("score", Op::Between, "10") },
                "filter.groups[0].filters[0].high_value",
            ),
            (
                pb::Filter { high_value: "2026-01-01".into(), ..f("created_at", Op::Between, "2026-02-01") },
                "filter.groups[0].filters[0].high_value",
            ),
        ];
        for (filter, field) in cases {
            let e = compile(Some(&groups(vec![vec![filter.clone()]])), &catalog(), Backend::Postgres, 0)
                .unwrap_err();
            assert_eq!(e.field, field, "{filter:?}: {}", e.reason);
        }
        let too_many = groups(vec![vec![f("score", Op::Eq, "1")]; MAX_GROUPS + 1]);
        assert_eq!(
            compile(Some(&too_many), &catalog(), Backend::Postgres, 0).unwrap_err().field,
            "filter.groups"
        );
    }

    #[test]
    fn like_wildcards_in_the_value_match_literally() {
        let sql = compile(
            Some(&groups(vec![vec![f("company", Op::Contains, "100%_a\\b")]])),
            &catalog(),
            Backend::Postgres,
            0,
        )
        .unwrap();
        assert_eq!(sql.binds[1], Bind::Text("%100\\%\\_a\\\\b%".into()));
    }
}
