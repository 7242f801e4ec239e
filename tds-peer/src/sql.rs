//! The few statements the peer understands: what ferry, tiberius and the cross-checking
//! clients send. Anything else is answered with error 102, as a server answers bad syntax.

use crate::types::SqlType;

/// A statement, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// BEGIN TRAN[SACTION]
    Begin,
    /// COMMIT [TRAN[SACTION]]
    Commit,
    /// ROLLBACK [TRAN[SACTION]]
    Rollback,
    /// SET ..., USE ... : accepted, no effect
    Ignored,
    /// SELECT [TOP n] cols FROM table [WHERE ...]
    Select(Select),
    /// SELECT MIN(c), MAX(c) FROM table
    MinMax {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// SELECT snapshot_isolation_state FROM sys.databases WHERE name = DB_NAME()
    SnapshotState,
    /// EXEC sp_describe_first_result_set N'<select>'
    Describe(Select),
    /// The primary key columns of a table (a catalog query on sys.indexes)
    PrimaryKey(String),
    /// A table's partitioning column, side and boundaries (a catalog query on
    /// sys.partition_range_values)
    PartitionBoundaries(String),
    /// SELECT SERVERPROPERTY('ProductVersion'), DB_NAME(), SUSER_SNAME()
    ServerInfo,
    /// CREATE TABLE t (cols)
    Create {
        /// The table.
        table: String,
        /// Its columns: name, type, nullable.
        columns: Vec<(String, SqlType, bool)>,
    },
    /// DROP TABLE [IF EXISTS] t
    Drop {
        /// The table.
        table: String,
        /// IF EXISTS
        if_exists: bool,
    },
    /// TRUNCATE TABLE t, DELETE FROM t
    Truncate(String),
    /// INSERT INTO t (cols) SELECT cols FROM s
    InsertSelect {
        /// The table written.
        table: String,
        /// Its columns, in the order of the SELECT's.
        columns: Vec<String>,
        /// What is read.
        select: Select,
    },
    /// INSERT BULK t (cols) [WITH (...)]
    InsertBulk {
        /// The table.
        table: String,
        /// The columns as the client described them.
        columns: Vec<(String, SqlType)>,
    },
}

/// A SELECT of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    /// TOP n
    pub top: Option<usize>,
    /// The columns (`None`: `*`).
    pub columns: Option<Vec<String>>,
    /// `CAST(column AS type)` of the items that have one, by position.
    pub casts: Vec<Option<SqlType>>,
    /// The table.
    pub table: String,
    /// WHERE conditions, all of which hold (AND).
    pub conditions: Vec<Condition>,
    /// ORDER BY columns.
    pub order_by: Vec<String>,
}

/// A condition of a WHERE clause.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `c IS NULL`
    IsNull(String),
    /// `c IS NOT NULL`
    NotNull(String),
    /// `c <op> literal`
    Compare(String, Op, String),
    /// `a OR b ...`
    Or(Vec<Condition>),
    /// `a AND b ...`
    And(Vec<Condition>),
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// >=
    Ge,
    /// >
    Gt,
    /// <
    Lt,
    /// <=
    Le,
    /// =
    Eq,
}

/// Lower-cased, brackets removed, `dbo.` added when no schema is named.
pub fn table_key(name: &str) -> String {
    let parts: Vec<String> = split_name(name);
    match parts.as_slice() {
        [table] => format!("dbo.{table}"),
        [.., schema, table] => format!("{schema}.{table}"),
        [] => String::new(),
    }
}

fn split_name(name: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut bracket = false;
    for c in name.trim().chars() {
        match c {
            '[' if !bracket => bracket = true,
            ']' if bracket => bracket = false,
            '.' if !bracket => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts.into_iter().map(|p| p.to_lowercase()).collect()
}

/// The first (possibly bracketed, possibly multi-part) name of `text`.
fn first_name(text: &str) -> &str {
    let mut bracket = false;
    for (i, c) in text.char_indices() {
        match c {
            '[' => bracket = true,
            ']' => bracket = false,
            c if c.is_whitespace() && !bracket => return &text[..i],
            _ => {}
        }
    }
    text
}

/// A column name as written (brackets removed), lower-cased for lookups.
pub fn column_key(name: &str) -> String {
    split_name(name).pop().unwrap_or_default()
}

/// Splits `text` at top-level commas (outside parentheses, brackets and quotes).
fn split_commas(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut bracket, mut quote) = (0i32, false, false);
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '\'' if !bracket => quote = !quote,
            '[' if !quote => bracket = true,
            ']' if !quote => bracket = false,
            '(' if !quote && !bracket => depth += 1,
            ')' if !quote && !bracket => depth -= 1,
            ',' if depth == 0 && !quote && !bracket => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out.into_iter().map(|s| s.trim().to_string()).collect()
}

/// Finds keyword `word` (case-insensitive, as a whole word, outside quotes and brackets).
fn find_word(text: &str, word: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let (mut quote, mut bracket) = (false, false);
    for i in 0..bytes.len() {
        match bytes[i] {
            b'\'' if !bracket => quote = !quote,
            b'[' if !quote => bracket = true,
            b']' if !quote => bracket = false,
            _ => {}
        }
        if quote || bracket {
            continue;
        }
        if lower[i..].starts_with(word)
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric() && bytes[i - 1] != b'_')
            && bytes
                .get(i + word.len())
                .is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'_')
        {
            return Some(i);
        }
    }
    None
}

/// The column definition `[name] type [NULL|NOT NULL] [COLLATE x]`.
fn column_def(def: &str) -> Option<(String, SqlType, bool)> {
    let def = def.trim();
    let (name, rest) = if let Some(stripped) = def.strip_prefix('[') {
        let end = stripped.find(']')?;
        (stripped[..end].to_string(), stripped[end + 1..].trim())
    } else {
        let end = def.find(char::is_whitespace)?;
        (def[..end].to_string(), def[end..].trim())
    };
    let lower = rest.to_ascii_lowercase();
    let type_end = [
        "not null", "null", "collate", "primary", "identity", "default",
    ]
    .iter()
    .filter_map(|w| find_word(rest, w))
    .min()
    .unwrap_or(rest.len());
    let ty = SqlType::parse(&rest[..type_end])?;
    let nullable = find_word(&lower, "not null").is_none();
    Some((name, ty, nullable))
}

fn parenthesised(text: &str) -> Option<(&str, &str)> {
    let open = text.find('(')?;
    let mut depth = 0;
    for (i, c) in text.char_indices().skip(open) {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&text[..open], &text[open + 1..i]));
                }
            }
            _ => {}
        }
    }
    None
}

/// Parses one statement; `Err` says near what it stopped.
pub fn parse(text: &str) -> Result<Statement, String> {
    let text = text.trim().trim_end_matches(';').trim();
    let lower = text.to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let near = || words.first().copied().unwrap_or("").to_string();
    match words.as_slice() {
        ["begin", "tran" | "transaction", ..] => return Ok(Statement::Begin),
        ["commit"] | ["commit", "tran" | "transaction", ..] => return Ok(Statement::Commit),
        ["rollback"] | ["rollback", "tran" | "transaction", ..] => return Ok(Statement::Rollback),
        ["set", ..] | ["use", ..] => return Ok(Statement::Ignored),
        ["create", "table", ..] => {
            let (head, body) = parenthesised(text).ok_or_else(near)?;
            let table = table_key(head.trim()[12..].trim());
            let columns = split_commas(body)
                .iter()
                .map(|d| column_def(d).ok_or_else(|| d.clone()))
                .collect::<Result<_, _>>()?;
            return Ok(Statement::Create { table, columns });
        }
        ["drop", "table", "if", "exists", ..] => {
            let at = find_word(text, "exists").ok_or_else(near)?;
            return Ok(Statement::Drop {
                table: table_key(&text[at + 6..]),
                if_exists: true,
            });
        }
        ["drop", "table", ..] => {
            return Ok(Statement::Drop {
                table: table_key(&text[10..]),
                if_exists: false,
            });
        }
        ["truncate", "table", ..] => return Ok(Statement::Truncate(table_key(&text[14..]))),
        ["delete", "from", ..] => return Ok(Statement::Truncate(table_key(&text[11..]))),
        ["insert", "into", ..] => {
            let at = find_word(text, "select").ok_or_else(near)?;
            let (head, body) = parenthesised(&text[..at]).ok_or_else(near)?;
            let table = table_key(head.trim()[11..].trim());
            let columns = split_commas(body).iter().map(|c| column_key(c)).collect();
            return match parse(&text[at..])? {
                Statement::Select(select) => Ok(Statement::InsertSelect {
                    table,
                    columns,
                    select,
                }),
                _ => Err(near()),
            };
        }
        ["insert", "bulk", ..] => {
            let with = find_word(text, "with").unwrap_or(text.len());
            let (head, body) = parenthesised(&text[..with]).ok_or_else(near)?;
            let table = table_key(head.trim()[11..].trim());
            let columns = split_commas(body)
                .iter()
                .map(|d| {
                    column_def(d)
                        .map(|(n, t, _)| (n, t))
                        .ok_or_else(|| d.clone())
                })
                .collect::<Result<_, _>>()?;
            return Ok(Statement::InsertBulk { table, columns });
        }
        ["exec" | "execute", "sp_describe_first_result_set", ..] => {
            let start = text.find('\'').ok_or_else(near)?;
            let end = text.rfind('\'').filter(|e| *e > start).ok_or_else(near)?;
            let inner = text[start + 1..end].replace("''", "'");
            return match parse(&inner)? {
                Statement::Select(s) => Ok(Statement::Describe(s)),
                _ => Err("sp_describe_first_result_set".into()),
            };
        }
        ["select", ..] => {}
        _ => return Err(near()),
    }
    if lower.contains("serverproperty(") {
        return Ok(Statement::ServerInfo);
    }
    if lower.contains("sys.partition_range_values") {
        let at = lower.find("object_id(n'").ok_or_else(near)?;
        let rest = &text[at..];
        let start = rest.find('\'').ok_or_else(near)?;
        let end = rest[start + 1..].find('\'').ok_or_else(near)?;
        return Ok(Statement::PartitionBoundaries(table_key(
            &rest[start + 1..start + 1 + end],
        )));
    }
    if lower.contains("is_primary_key") {
        let at = lower.find("object_id(").ok_or_else(near)?;
        let rest = &text[at..];
        let start = rest.find('\'').ok_or_else(near)?;
        let end = rest[start + 1..].find('\'').ok_or_else(near)?;
        return Ok(Statement::PrimaryKey(table_key(
            &rest[start + 1..start + 1 + end],
        )));
    }
    if lower.contains("snapshot_isolation_state") {
        return Ok(Statement::SnapshotState);
    }
    let from = find_word(text, "from").ok_or_else(near)?;
    let list = text[6..from].trim();
    let after = text[from + 4..].trim();
    let (after, order_by) = match find_word(after, "order by") {
        Some(at) => (
            &after[..at],
            split_commas(&after[at + 8..])
                .iter()
                .map(|c| column_key(c.trim_end_matches(" ASC").trim_end_matches(" asc")))
                .collect(),
        ),
        None => (after, Vec::new()),
    };
    let where_at = find_word(after, "where");
    let table_text = where_at.map_or(after, |w| &after[..w]).trim();
    // A derived table `(SELECT ... FROM t) AS q` reads t.
    let table = if table_text.starts_with('(') {
        let (_, inner) = parenthesised(table_text).ok_or_else(near)?;
        match parse(inner)? {
            Statement::Select(s) => s.table,
            _ => return Err("a derived table".into()),
        }
    } else {
        table_key(first_name(table_text))
    };
    let list_lower = list.to_ascii_lowercase();
    if list_lower.starts_with("min(") {
        let items = split_commas(list);
        let column = items[0][4..items[0].len() - 1].to_string();
        return Ok(Statement::MinMax {
            table,
            column: column_key(&column),
        });
    }
    let (top, list) = if list_lower.starts_with("top") {
        let rest = list[3..].trim();
        let rest = rest.trim_start_matches('(');
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: usize = rest[..end].parse().map_err(|_| near())?;
        (Some(n), rest[end..].trim_start_matches(')').trim())
    } else {
        (None, list)
    };
    let mut casts = Vec::new();
    let columns = if list == "*" {
        None
    } else {
        let mut names = Vec::new();
        for item in split_commas(list) {
            let lower = item.to_ascii_lowercase();
            if lower.starts_with("cast(") {
                // CAST(col AS type) [AS alias]: the alias is the column's own name here.
                let (_, inner) = parenthesised(&item).ok_or_else(near)?;
                let at = find_word(inner, "as").ok_or_else(near)?;
                names.push(column_key(inner[..at].trim()));
                casts.push(Some(SqlType::parse(&inner[at + 2..]).ok_or_else(near)?));
            } else {
                names.push(column_key(&item));
                casts.push(None);
            }
        }
        Some(names)
    };
    let mut conditions = Vec::new();
    if let Some(w) = where_at {
        let clause = after[w + 5..].trim();
        match expression(clause).ok_or_else(|| clause.to_string())? {
            Condition::And(all) => conditions = all,
            one => conditions.push(one),
        }
    }
    Ok(Statement::Select(Select {
        top,
        columns,
        casts,
        table,
        conditions,
        order_by,
    }))
}

/// Splits `text` at `word` where it stands outside parentheses, quotes and brackets.
fn split_top(text: &str, word: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let (mut depth, mut quote, mut bracket) = (0i32, false, false);
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' if !bracket => quote = !quote,
            b'[' if !quote => bracket = true,
            b']' if !quote => bracket = false,
            b'(' if !quote && !bracket => depth += 1,
            b')' if !quote && !bracket => depth -= 1,
            _ => {}
        }
        if depth == 0
            && !quote
            && !bracket
            && lower[i..].starts_with(word)
            && i > 0
            && bytes[i - 1].is_ascii_whitespace()
            && bytes
                .get(i + word.len())
                .is_some_and(|b| b.is_ascii_whitespace())
        {
            parts.push(text[start..i].trim().to_string());
            start = i + word.len();
            i = start;
            continue;
        }
        i += 1;
    }
    parts.push(text[start..].trim().to_string());
    parts
}

/// A WHERE expression of ORs, ANDs, parentheses and comparisons.
fn expression(text: &str) -> Option<Condition> {
    let text = text.trim();
    if text.starts_with('(')
        && let Some((head, inner)) = parenthesised(text)
        && head.is_empty()
        && inner.len() + 2 == text.len()
    {
        return expression(inner);
    }
    let ors = split_top(text, "or");
    if ors.len() > 1 {
        return ors
            .iter()
            .map(|p| expression(p))
            .collect::<Option<_>>()
            .map(Condition::Or);
    }
    let ands = split_top(text, "and");
    if ands.len() > 1 {
        return ands
            .iter()
            .map(|p| expression(p))
            .collect::<Option<_>>()
            .map(Condition::And);
    }
    condition(text)
}

fn condition(part: &str) -> Option<Condition> {
    let lower = part.to_ascii_lowercase();
    if let Some(column) = lower.strip_suffix(" is not null") {
        return Some(Condition::NotNull(column_key(&part[..column.len()])));
    }
    if let Some(column) = lower.strip_suffix(" is null") {
        return Some(Condition::IsNull(column_key(&part[..column.len()])));
    }
    for (text, op) in [
        (">=", Op::Ge),
        ("<=", Op::Le),
        (">", Op::Gt),
        ("<", Op::Lt),
        ("=", Op::Eq),
    ] {
        if let Some(at) = part.find(text) {
            let literal = part[at + text.len()..].trim();
            let literal = literal.strip_prefix('N').unwrap_or(literal);
            // A quoted string: its quotes off, and its doubled quotes single again.
            let literal = match literal
                .strip_prefix('\'')
                .and_then(|l| l.strip_suffix('\''))
            {
                Some(inner) => inner.replace("''", "'"),
                None => literal.to_string(),
            };
            return Some(Condition::Compare(column_key(&part[..at]), op, literal));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_ferry_and_tiberius_send() {
        assert_eq!(
            parse("SELECT TOP 0 * FROM [dbo].[Orders]").unwrap(),
            Statement::Select(Select {
                top: Some(0),
                columns: None,
                casts: vec![],
                table: "dbo.orders".into(),
                conditions: vec![],
                order_by: vec![],
            })
        );
        let Statement::Select(s) =
            parse("SELECT [id], [when] FROM [s].[t] WHERE [id] >= 10 AND [id] < 20").unwrap()
        else {
            panic!()
        };
        assert_eq!(s.columns, Some(vec!["id".into(), "when".into()]));
        assert_eq!(
            s.conditions,
            vec![
                Condition::Compare("id".into(), Op::Ge, "10".into()),
                Condition::Compare("id".into(), Op::Lt, "20".into())
            ]
        );
        assert_eq!(
            parse("INSERT BULK [dbo].[t] ([a] int, [b] nvarchar(max) COLLATE Latin1_General_CI_AS, [c] decimal(38,10)) WITH (TABLOCK)").unwrap(),
            Statement::InsertBulk {
                table: "dbo.t".into(),
                columns: vec![
                    ("a".into(), SqlType::Int),
                    ("b".into(), SqlType::NVarChar(None)),
                    ("c".into(), SqlType::Decimal(38, 10)),
                ],
            }
        );
        assert!(matches!(
            parse("CREATE TABLE [dbo].[t] ([a] int NOT NULL, [b, c] datetime2(3) NULL)").unwrap(),
            Statement::Create { columns, .. } if columns[1] == ("b, c".into(), SqlType::DateTime2(3), true) && !columns[0].2
        ));
        assert!(parse("EXEC xp_cmdshell 'x'").is_err());
    }
}
