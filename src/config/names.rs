//! Names parsed once, when the config is read: tables (`schema.table`, `schema.*`) and
//! Elasticsearch indexes. Code after loading takes them apart without checking again.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// One table, `schema.table`. Names are taken literally (case-sensitive, as stored in the
/// catalog) and never spliced into SQL unquoted.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct TableName {
    schema: String,
    table: String,
}

impl TableName {
    /// Parse `schema.table` (no wildcard); the error says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        match TableSelector::parse(s) {
            Ok(TableSelector::Table { schema, table }) => Ok(Self { schema, table }),
            _ => Err(format!("{s:?} must be `schema.table`")),
        }
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table within the schema.
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl TryFrom<String> for TableName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl FromStr for TableName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

// As the config spells it, so `{:?}` of a map keyed by tables reads like the file.
impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// One `source.tables` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSelector {
    /// `schema.table`.
    Table {
        /// Schema name.
        schema: String,
        /// Table name.
        table: String,
    },
    /// `schema.*`.
    Schema(String),
}

impl TableSelector {
    /// Parse `schema.table` or `schema.*`. Names are taken literally (case-sensitive, as stored
    /// in the catalog), never spliced into SQL unquoted.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (schema, table) = s.split_once('.').ok_or_else(|| format!("{s:?} must be `schema.table` or `schema.*`"))?;
        if schema.is_empty() || table.is_empty() || table.contains('.') {
            return Err(format!("{s:?} must be `schema.table` or `schema.*`"));
        }
        if table == "*" {
            Ok(TableSelector::Schema(schema.to_string()))
        } else {
            Ok(TableSelector::Table { schema: schema.to_string(), table: table.to_string() })
        }
    }
}

/// An Elasticsearch index name, checked against Elasticsearch's rules: lower case, no
/// `\ / * ? " < > | space , # :`, not starting with `-`, `_` or `+`, not `.` or `..`, at most
/// 255 bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct IndexName(String);

impl IndexName {
    /// Check `name`; the error says which rule it breaks.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > 255 {
            return Err("an index name must be 1 to 255 bytes".into());
        }
        if name == "." || name == ".." || name.starts_with(['-', '_', '+']) {
            return Err(format!("{name:?} is not a valid index name (it must not start with -, _ or +)"));
        }
        if name.chars().any(|c| c.is_uppercase() || "\\/*?\"<>| ,#:".contains(c)) {
            return Err(format!("{name:?} is not a valid index name: use lower case, without \\ / * ? \" < > | space , # :"));
        }
        Ok(Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IndexName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl FromStr for IndexName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl fmt::Display for IndexName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IndexName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names() {
        assert!(IndexName::parse("orders-2024.v1").is_ok());
        for bad in ["", "Orders", "a b", "_x", "-x", "a/b", "a,b", "a#b", "..", "a:b"] {
            assert!(IndexName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn table_names() {
        let t = TableName::parse("public.orders").expect("valid");
        assert_eq!((t.schema(), t.table(), t.to_string()), ("public", "orders", "public.orders".to_string()));
        assert_eq!(format!("{t:?}"), "\"public.orders\"");
        for bad in ["orders", "public.*", ".orders", "public.", "a.b.c"] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(TableSelector::parse("shop.*"), Ok(TableSelector::Schema("shop".into())));
        assert!(TableSelector::parse("shop").is_err());
    }
}
