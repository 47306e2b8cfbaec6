//! A usage-over-time chart for the terminal: one bar per day, scaled to the tier, with the
//! tier's line marked.

/// One day of usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Day {
    pub date: String,
    pub count: i64,
    pub tier: i64,
}

const FULL: char = '█';
const PARTIAL: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];

/// A bar of `value` out of `max` in `width` cells, with eighth-cell precision.
pub fn bar(value: i64, max: i64, width: usize) -> String {
    if max <= 0 || value <= 0 {
        return String::new();
    }
    let eighths = (value.min(max) as u128 * width as u128 * 8 / max as u128) as usize;
    let mut s: String = std::iter::repeat_n(FULL, eighths / 8).collect();
    if !eighths.is_multiple_of(8) {
        s.push(PARTIAL[eighths % 8]);
    }
    s
}

/// Renders the days as lines: date, bar (the scale is the largest tier or count shown), count
/// and the share of that day's tier.
pub fn render(days: &[Day], width: usize) -> Vec<String> {
    let max = days.iter().map(|d| d.tier.max(d.count)).max().unwrap_or(0);
    days.iter()
        .map(|d| {
            if d.tier == 0 {
                return format!("{}  {}  no subscription", d.date, " ".repeat(width));
            }
            // Tenths of a percent, so a small share does not read as 0 %.
            let tenths = d.count.saturating_mul(1_000) / d.tier;
            let pct = format!("{}.{}", tenths / 10, tenths % 10);
            let b = bar(d.count, max, width);
            // The tier's position on the day's row, so a line of them shows the limit.
            let tier_at =
                if max > 0 { (d.tier.min(max) as u128 * width as u128 / max as u128) as usize } else { 0 };
            let mut cells: Vec<char> = b.chars().collect();
            cells.resize(width.max(cells.len()), ' ');
            if tier_at < cells.len() && cells[tier_at] == ' ' {
                cells[tier_at] = '│';
            }
            let row: String = cells.into_iter().collect();
            format!("{}  {row}  {:>9} ({pct:>5} % of {})", d.date, group(d.count), group(d.tier))
        })
        .collect()
}

/// One row per day from `from` to `to`: the known days as they are, the others (before the
/// subscription) without a tier.
pub fn every_day(from: chrono::NaiveDate, to: chrono::NaiveDate, known: Vec<Day>) -> Vec<Day> {
    from.iter_days()
        .take_while(|d| *d <= to)
        .map(|d| {
            let date = d.format("%Y-%m-%d").to_string();
            known.iter().find(|k| k.date == date).cloned().unwrap_or(Day { date, count: 0, tier: 0 })
        })
        .collect()
}

/// 12345 -> "12,345".
pub fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// One step of the lifecycle funnel: of those who entered `from`, how many reached `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub from: String,
    pub to: String,
    pub entered: i64,
    pub converted: i64,
    /// Basis points (10,000 = all).
    pub rate: i64,
}

/// The funnel as lines: each step with a bar of its rate.
pub fn funnel(steps: &[Step], width: usize) -> Vec<String> {
    let name = steps.iter().map(|s| s.from.len().max(s.to.len())).max().unwrap_or(0);
    steps
        .iter()
        .map(|s| {
            format!(
                "{:<name$} -> {:<name$} {:>7} in, {:>7} on {:>3}.{} % {}",
                s.from,
                s.to,
                group(s.entered),
                group(s.converted),
                s.rate / 100,
                (s.rate % 100) / 10,
                bar(s.rate, 10_000, width),
            )
        })
        .collect()
}

/// Contacts per stage at the end of each day as a table: a column per stage (in `order`, then
/// any other, then no stage), a row per day.
pub fn stage_table(days: &[(String, Vec<(String, i64)>)], order: &[&str]) -> Vec<String> {
    let mut stages: Vec<String> = order.iter().map(std::string::ToString::to_string).collect();
    for (_, counts) in days {
        for (stage, _) in counts {
            if !stages.contains(stage) {
                stages.push(stage.clone());
            }
        }
    }
    let shown: Vec<&String> = stages
        .iter()
        .filter(|s| days.iter().any(|(_, c)| c.iter().any(|(st, n)| st == *s && *n > 0)))
        .collect();
    let header = |s: &str| if s.is_empty() { "(none)".to_owned() } else { s.to_owned() };
    let widths: Vec<usize> = shown.iter().map(|s| header(s).len().max(7)).collect();
    let mut out = vec![
        std::iter::once(format!("{:<10}", "date"))
            .chain(shown.iter().zip(&widths).map(|(s, w)| format!("{:>w$}", header(s))))
            .collect::<Vec<_>>()
            .join("  "),
    ];
    for (date, counts) in days {
        let cell = |s: &str| counts.iter().find(|(st, _)| st == s).map_or(0, |(_, n)| *n);
        out.push(
            std::iter::once(format!("{date:<10}"))
                .chain(shown.iter().zip(&widths).map(|(s, w)| format!("{:>w$}", group(cell(s)))))
                .collect::<Vec<_>>()
                .join("  "),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_funnel_shows_each_step_with_its_rate() {
        let steps = [
            Step { from: "lead".into(), to: "mql".into(), entered: 2_000, converted: 500, rate: 2_500 },
            Step { from: "mql".into(), to: "sql".into(), entered: 500, converted: 0, rate: 0 },
        ];
        let lines = funnel(&steps, 20);
        assert_eq!(lines[0], "lead -> mql    2,000 in,     500 on  25.0 % █████");
        assert_eq!(lines[1], "mql  -> sql      500 in,       0 on   0.0 % ");
    }

    #[test]
    fn the_stage_table_has_a_column_per_stage_seen() {
        let days = vec![
            ("2026-05-01".to_owned(), vec![("lead".to_owned(), 2)]),
            ("2026-05-02".to_owned(), vec![("".to_owned(), 1), ("customer".to_owned(), 1_200)]),
        ];
        let t = stage_table(&days, &["lead", "marketing_qualified_lead", "customer"]);
        assert_eq!(t[0], "date           lead  customer   (none)");
        assert_eq!(t[1], "2026-05-01        2         0        0");
        assert_eq!(t[2], "2026-05-02        0     1,200        1");
    }

    #[test]
    fn bars_scale_with_eighth_cell_precision() {
        assert_eq!(bar(0, 100, 10), "");
        assert_eq!(bar(100, 100, 10), "██████████");
        assert_eq!(bar(50, 100, 10), "█████");
        assert_eq!(bar(55, 100, 10), "█████▌");
        assert_eq!(bar(500, 100, 4), "████", "capped at the scale");
    }

    #[test]
    fn rows_show_the_count_and_the_tier_line() {
        let days = [
            Day { date: "2026-04-29".into(), count: 1_500, tier: 2_000 },
            Day { date: "2026-04-30".into(), count: 2_100, tier: 7_000 },
        ];
        let rows = render(&days, 14);
        // Scale 7,000 over 14 cells: 500 a cell; the 2,000 tier sits in cell 4.
        let pad = " ".repeat(9);
        assert_eq!(rows[0], format!("2026-04-29  ███ │{pad}      1,500 ( 75.0 % of 2,000)"));
        assert_eq!(rows[1], format!("2026-04-30  ████▏{pad}      2,100 ( 30.0 % of 7,000)"));
        let few = render(&[Day { date: "2026-05-01".into(), count: 3, tier: 2_000 }], 4);
        assert!(few[0].ends_with("(  0.1 % of 2,000)"), "{}", few[0]);
    }

    #[test]
    fn every_day_of_the_range_has_a_row() {
        let day = |d: u32| chrono::NaiveDate::from_ymd_opt(2026, 4, d).unwrap();
        let known = vec![Day { date: "2026-04-29".into(), count: 1_500, tier: 2_000 }];
        let rows = every_day(day(27), day(30), known);
        let dates: Vec<&str> = rows.iter().map(|r| r.date.as_str()).collect();
        assert_eq!(dates, ["2026-04-27", "2026-04-28", "2026-04-29", "2026-04-30"]);
        assert_eq!((rows[2].count, rows[2].tier, rows[3].tier), (1_500, 2_000, 0));
        assert!(render(&rows, 10)[0].ends_with("no subscription"));
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(
            (group(0), group(999), group(1_000), group(2_002_000), group(-12_345)),
            ("0".into(), "999".into(), "1,000".into(), "2,002,000".into(), "-12,345".into())
        );
    }
}
