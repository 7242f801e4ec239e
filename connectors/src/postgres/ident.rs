//! SQL identifiers: parse `schema.table` as PostgreSQL does (unquoted parts fold to lower
//! case, `"quoted"` parts keep their case), and quote names for generated SQL.

use ferry_engine::{Error, Result};

/// Parses `name`, `schema.name` or `db.schema.name`, quoted parts allowed.
pub fn parse_qualified(text: &str) -> Result<Vec<String>> {
    let bad = |why: &str| Error::config(format!("`{text}` is not a valid table name: {why}"));
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(bad("a quote is not closed")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' || c.is_whitespace() {
                    return Err(bad(
                        "quote names that hold spaces or quotes, like \"My Table\"",
                    ));
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(bad("a name is empty"));
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return Err(bad("expected `.` between names")),
        }
    }
    if parts.len() > 3 {
        return Err(bad("too many dotted parts"));
    }
    Ok(parts)
}

/// A table name as a job writes it (`orders`, `sales."Order Lines"`), parsed once when
/// the job is read: its parts, folded as PostgreSQL folds them, and the text as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    text: String,
    parts: Vec<String>,
}

impl TableName {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self> {
        Ok(Self {
            parts: parse_qualified(text)?,
            text: text.to_string(),
        })
    }

    /// The name's parts, unquoted (`["sales", "Order Lines"]`).
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    /// The name quoted for SQL (`"sales"."Order Lines"`).
    pub fn quoted(&self) -> String {
        quote_qualified(&self.parts)
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for TableName {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for TableName {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TableName::parse(&text).map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}

/// Quotes one identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a parsed qualified name.
pub fn quote_qualified(parts: &[String]) -> String {
    parts.iter().map(|p| quote(p)).collect::<Vec<_>>().join(".")
}

/// Quotes a string literal (standard_conforming_strings, on by default since 9.1).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_as_postgres_folds_them() {
        assert_eq!(parse_qualified("Orders").unwrap(), ["orders"]);
        assert_eq!(
            parse_qualified("sales.Orders").unwrap(),
            ["sales", "orders"]
        );
        assert_eq!(
            parse_qualified("\"Sales\".\"My \"\"T\"\"\"").unwrap(),
            ["Sales", "My \"T\""]
        );
        assert!(parse_qualified("a b").is_err());
        assert!(parse_qualified("a..b").is_err());
        assert!(parse_qualified("\"open").is_err());
        assert_eq!(
            quote_qualified(&parse_qualified("s.\"x\"\"y\"").unwrap()),
            "\"s\".\"x\"\"y\""
        );
        assert_eq!(literal("it's"), "'it''s'");
    }
}
