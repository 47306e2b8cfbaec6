//! Every input of the fuzz corpus (`fuzz/corpus/`), through the same entry points the fuzz
//! targets use: none may panic, and the seeds answer as a user would expect.

use contactier_contacts::fuzzing::{FileOutcome, import_file, search_filter};
use contactier_proto::contacts::v1::{self as pb, FilterOperator as Op};
use prost::Message;
use std::path::{Path, PathBuf};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(corpus(target))
        .expect("the corpus is in the repository")
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn every_import_file_of_the_corpus_is_read_without_a_panic() {
    let all = inputs("import_file");
    assert!(all.len() >= 6, "the seeds are there");
    for (name, data) in &all {
        let _ = import_file(data);
        let _ = name;
    }
    let outcome = |n: &str| import_file(&all.iter().find(|(name, _)| name == n).unwrap().1);
    assert_eq!(outcome("good-two-rows.csv"), FileOutcome { good: 2, refused: 0, unreadable: false });
    assert_eq!(outcome("bad-cells-crlf.csv"), FileOutcome { good: 0, refused: 2, unreadable: false });
    // The second row's address is not UTF-8: refused, the first (with a BOM before the header) kept.
    assert_eq!(
        outcome("bom-unicode-invalid-utf8.csv"),
        FileOutcome { good: 1, refused: 1, unreadable: false }
    );
    assert_eq!(outcome("ragged-rows.csv").refused, 3);
    assert!(outcome("missing-email-column.csv").unreadable);
    assert!(outcome("empty.csv").unreadable);
}

/// One condition: property, operator, value, high value, values.
type Condition<'a> = (&'a str, Op, &'a str, &'a str, &'a [&'a str]);

fn filter(groups: Vec<Vec<Condition<'_>>>) -> pb::ContactFilter {
    pb::ContactFilter {
        groups: groups
            .into_iter()
            .map(|g| pb::FilterGroup {
                filters: g
                    .into_iter()
                    .map(|(property, op, value, high, values)| pb::Filter {
                        property: property.into(),
                        operator: op as i32,
                        value: value.into(),
                        high_value: high.into(),
                        values: values.iter().map(|v| (*v).to_owned()).collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The filter seeds: one of each kind a user writes, and the mistakes.
fn filter_seeds() -> Vec<(&'static str, pb::ContactFilter, Result<(), &'static str>)> {
    vec![
        (
            "email-contains-and-stage",
            filter(vec![vec![
                ("email", Op::Contains, "%_@x", "", &[]),
                ("lifecycle_stage", Op::Eq, "lead", "", &[]),
            ]]),
            Ok(()),
        ),
        (
            "or-of-number-between-and-date",
            filter(vec![
                vec![("seats", Op::Between, "1", "10", &[])],
                vec![("renewal", Op::Gte, "2026-01-01", "", &[])],
            ]),
            Ok(()),
        ),
        ("enum-in", filter(vec![vec![("plan", Op::In, "", "", &["free", "paid"])]]), Ok(())),
        ("checkbox-has-property", filter(vec![vec![("vip", Op::HasProperty, "", "", &[])]]), Ok(())),
        (
            "unknown-property",
            filter(vec![vec![("shoe_size", Op::Eq, "42", "", &[])]]),
            Err("filter.groups[0].filters[0].property"),
        ),
        (
            "number-not-a-number",
            filter(vec![vec![("seats", Op::Gt, "many", "", &[])]]),
            Err("filter.groups[0].filters[0].value"),
        ),
        (
            "contains-on-a-number",
            filter(vec![vec![("seats", Op::Contains, "1", "", &[])]]),
            Err("filter.groups[0].filters[0].operator"),
        ),
        (
            "too-many-groups",
            filter((0..11).map(|_| vec![("email", Op::Contains, "a", "", &[] as &[&str])]).collect()),
            Err("filter.groups"),
        ),
    ]
}

#[test]
fn every_search_filter_of_the_corpus_compiles_or_is_refused_naming_a_field() {
    for (name, f, expected) in filter_seeds() {
        let got = search_filter(&f.encode_to_vec());
        match (&got, expected) {
            (Ok(binds), Ok(())) => {
                assert!(*binds > 0 || name.contains("has-property"), "{name}: values bound");
            }
            (Err(field), Err(want)) => assert_eq!(field, want, "{name}"),
            _ => panic!("{name}: {got:?}, expected {expected:?}"),
        }
    }
    let all = inputs("search_filter");
    assert!(all.len() >= filter_seeds().len(), "the seeds are there");
    for (name, data) in all {
        if let Err(field) = search_filter(&data) {
            assert!(field.starts_with("filter") || field.starts_with("decode"), "{name}: {field}");
        }
    }
}

/// Writes the filter seeds into the corpus: `cargo test -p contactier-contacts --test
/// fuzz_corpus -- --ignored`.
#[test]
#[ignore]
fn write_filter_seeds() {
    for (name, f, _) in filter_seeds() {
        std::fs::write(corpus("search_filter").join(format!("{name}.pb")), f.encode_to_vec()).unwrap();
    }
}
