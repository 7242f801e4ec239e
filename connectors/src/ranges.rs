//! What the database sources share: the table-or-query choice of a source section, and the
//! cutting of a key column's range into partitions.

use ferry_engine::{Error, Result};

/// What a database source reads: a table (its store's parsed name) or a query.
#[derive(Debug, Clone, Copy)]
pub enum ReadTarget<'a, T> {
    /// A table.
    Table(&'a T),
    /// A query, without its trailing `;`.
    Query(&'a str),
}

/// Settles `table` or `query` of a `store` source section: exactly one, and a query that is
/// not empty.
pub fn read_target<'a, T>(
    store: &str,
    table: Option<&'a T>,
    query: Option<&'a String>,
) -> Result<ReadTarget<'a, T>> {
    match (table, query) {
        (Some(_), Some(_)) => Err(Error::config(format!(
            "{store} source: give either `table` or `query`, not both"
        ))),
        (None, None) => Err(Error::config(format!(
            "{store} source: give a `table` or a `query` to read"
        ))),
        (None, Some(q)) if q.trim().trim_end_matches(';').trim().is_empty() => {
            Err(Error::config(format!("{store} source: `query` is empty")))
        }
        (Some(table), None) => Ok(ReadTarget::Table(table)),
        (None, Some(q)) => Ok(ReadTarget::Query(q.trim().trim_end_matches(';'))),
    }
}

/// Cuts `lo..=hi` into `count` ranges; returns the inner boundaries.
pub fn boundaries(lo: i64, hi: i64, count: usize) -> Vec<i64> {
    let span = (hi as i128 - lo as i128 + 1).max(1);
    let count = (count as i128).min(span).max(1);
    (1..count)
        .map(|i| (lo as i128 + span * i / count) as i64)
        .collect()
}

/// WHERE clauses for ranges of the quoted column `c` split at `bounds` (SQL literals); NULLs
/// go with the first range.
pub fn range_filters(c: &str, bounds: &[String]) -> Vec<String> {
    if bounds.is_empty() {
        return vec![];
    }
    let mut filters = vec![format!("({c} < {} OR {c} IS NULL)", bounds[0])];
    for pair in bounds.windows(2) {
        filters.push(format!("({c} >= {} AND {c} < {})", pair[0], pair[1]));
    }
    filters.push(format!("{c} >= {}", bounds[bounds.len() - 1]));
    filters
}

/// [`range_filters`] for boundaries that belong to the range below them (a partition
/// function's `RANGE LEFT`): `c <= b1`, `b1 < c <= b2`, ..., `c > bn`; NULLs with the first.
pub fn range_filters_left(c: &str, bounds: &[String]) -> Vec<String> {
    if bounds.is_empty() {
        return vec![];
    }
    let mut filters = vec![format!("({c} <= {} OR {c} IS NULL)", bounds[0])];
    for pair in bounds.windows(2) {
        filters.push(format!("({c} > {} AND {c} <= {})", pair[0], pair[1]));
    }
    filters.push(format!("{c} > {}", bounds[bounds.len() - 1]));
    filters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_key_once() {
        assert_eq!(boundaries(1, 100, 4), [26, 51, 76]);
        assert_eq!(boundaries(5, 6, 8), [6], "never more ranges than values");
        assert_eq!(boundaries(1, 10, 3), vec![4, 7]);
        assert_eq!(boundaries(5, 5, 4), Vec::<i64>::new());
        assert_eq!(
            boundaries(i64::MIN, i64::MAX, 2),
            vec![0],
            "no overflow at the ends"
        );
        assert_eq!(
            range_filters("[id]", &["4".into(), "7".into()]),
            vec![
                "([id] < 4 OR [id] IS NULL)",
                "([id] >= 4 AND [id] < 7)",
                "[id] >= 7"
            ]
        );
        assert!(range_filters("\"id\"", &[]).is_empty());
        assert_eq!(boundaries(7, 7, 4), Vec::<i64>::new());
        assert_eq!(
            range_filters_left("[d]", &["'a'".into(), "'b'".into()]),
            vec![
                "([d] <= 'a' OR [d] IS NULL)",
                "([d] > 'a' AND [d] <= 'b')",
                "[d] > 'b'"
            ]
        );
        let none: Option<&String> = None;
        assert!(read_target::<()>("x", None, none).is_err());
        let empty = " ; ".to_string();
        assert!(read_target::<()>("x", None, Some(&empty)).is_err());
    }
}
