//! SQL Server column types and values, and their TDS 7.4 encodings (MS-TDS 2.2.5.4-2.2.5.5):
//! TYPE_INFO in COLMETADATA, and each type's value in ROW/NBCROW tokens and bulk loads.

use crate::wire::{Reader, Writer};

/// `SQL_Latin1_General_CP1_CI_AS`: LCID 0x0409, flags, version 0, sort id 52.
pub const COLLATION: [u8; 5] = [0x09, 0x04, 0xD0, 0x00, 0x34];

/// Days from 0001-01-01 to 1900-01-01 (the base of `datetime` and `smalldatetime`).
pub const DAYS_TO_1900: i64 = 693_595;

/// A column's type, as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlType {
    /// bit
    Bit,
    /// tinyint (0..=255)
    TinyInt,
    /// smallint
    SmallInt,
    /// int
    Int,
    /// bigint
    BigInt,
    /// real
    Real,
    /// float
    Float,
    /// decimal(p, s) / numeric(p, s)
    Decimal(u8, u8),
    /// money
    Money,
    /// smallmoney
    SmallMoney,
    /// char(n)
    Char(u16),
    /// varchar(n); `None` is varchar(max)
    VarChar(Option<u16>),
    /// nchar(n)
    NChar(u16),
    /// nvarchar(n); `None` is nvarchar(max)
    NVarChar(Option<u16>),
    /// text
    Text,
    /// ntext
    NText,
    /// binary(n)
    Binary(u16),
    /// varbinary(n); `None` is varbinary(max)
    VarBinary(Option<u16>),
    /// image
    Image,
    /// date
    Date,
    /// time(n)
    Time(u8),
    /// datetime
    DateTime,
    /// smalldatetime
    SmallDateTime,
    /// datetime2(n)
    DateTime2(u8),
    /// datetimeoffset(n)
    DateTimeOffset(u8),
    /// uniqueidentifier
    Guid,
    /// xml
    Xml,
    /// A type the peer only names (geography, hierarchyid, sql_variant): it describes such a
    /// column and cannot send its values.
    Other(String),
}

/// A value of a column. Dates count days from 0001-01-01 and times 100-ns ticks from
/// midnight, whatever the type; each type's encoding narrows them.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL
    Null,
    /// bit
    Bool(bool),
    /// tinyint, smallint, int, bigint
    Int(i64),
    /// real
    F32(f32),
    /// float
    F64(f64),
    /// decimal/numeric: the unscaled integer (the column's scale applies)
    Decimal(i128),
    /// money, smallmoney: units of 1/10000
    Money(i64),
    /// char, varchar, nchar, nvarchar, text, ntext, xml
    Text(String),
    /// binary, varbinary, image
    Bytes(Vec<u8>),
    /// date: days since 0001-01-01
    Date(i64),
    /// time: 100-ns ticks since midnight
    Time(u64),
    /// datetime, smalldatetime, datetime2: days since 0001-01-01 and 100-ns ticks
    DateTime(i64, u64),
    /// datetimeoffset: the UTC date and time, and the offset in minutes
    DateTimeOffset(i64, u64, i16),
    /// uniqueidentifier, in the order of its text form (RFC 4122 bytes)
    Guid([u8; 16]),
}

fn parse_args(text: &str) -> Option<Vec<String>> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    Some(
        text[open + 1..close]
            .split(',')
            .map(|a| a.trim().to_ascii_lowercase())
            .collect(),
    )
}

impl SqlType {
    /// Parses a type as written in DDL (`decimal(38,10)`, `nvarchar(max)`, `datetime2(3)`).
    pub fn parse(text: &str) -> Option<SqlType> {
        let text = text.trim();
        let lower = text.to_ascii_lowercase();
        let name = lower.split('(').next()?.trim();
        let args = parse_args(&lower);
        let n = |default: u16| -> Option<Option<u16>> {
            match args.as_deref() {
                None => Some(Some(default)),
                Some([a]) if a == "max" => Some(None),
                Some([a]) => a.parse().ok().map(Some),
                _ => None,
            }
        };
        let scale = |default: u8| -> Option<u8> {
            match args.as_deref() {
                None => Some(default),
                Some([a]) => a.parse().ok().filter(|s| *s <= 7),
                _ => None,
            }
        };
        Some(match name {
            "bit" => SqlType::Bit,
            "tinyint" => SqlType::TinyInt,
            "smallint" => SqlType::SmallInt,
            "int" => SqlType::Int,
            "bigint" => SqlType::BigInt,
            "real" => SqlType::Real,
            "float" => SqlType::Float,
            "decimal" | "numeric" => match args.as_deref() {
                None => SqlType::Decimal(18, 0),
                Some([p]) => SqlType::Decimal(p.parse().ok()?, 0),
                Some([p, s]) => SqlType::Decimal(p.parse().ok()?, s.parse().ok()?),
                _ => return None,
            },
            "money" => SqlType::Money,
            "smallmoney" => SqlType::SmallMoney,
            "char" => SqlType::Char(n(1)??),
            "varchar" => SqlType::VarChar(n(1)?),
            "nchar" => SqlType::NChar(n(1)??),
            "nvarchar" => SqlType::NVarChar(n(1)?),
            "text" => SqlType::Text,
            "ntext" => SqlType::NText,
            "binary" => SqlType::Binary(n(1)??),
            "varbinary" => SqlType::VarBinary(n(1)?),
            "image" => SqlType::Image,
            "date" => SqlType::Date,
            "time" => SqlType::Time(scale(7)?),
            "datetime" => SqlType::DateTime,
            "smalldatetime" => SqlType::SmallDateTime,
            "datetime2" => SqlType::DateTime2(scale(7)?),
            "datetimeoffset" => SqlType::DateTimeOffset(scale(7)?),
            "uniqueidentifier" => SqlType::Guid,
            "xml" => SqlType::Xml,
            "geography" | "geometry" | "hierarchyid" | "sql_variant" => SqlType::Other(name.into()),
            _ => return None,
        })
    }

    /// The type as DDL writes it.
    pub fn name(&self) -> String {
        let max = |n: &Option<u16>| n.map_or("max".to_string(), |n| n.to_string());
        match self {
            SqlType::Bit => "bit".into(),
            SqlType::TinyInt => "tinyint".into(),
            SqlType::SmallInt => "smallint".into(),
            SqlType::Int => "int".into(),
            SqlType::BigInt => "bigint".into(),
            SqlType::Real => "real".into(),
            SqlType::Float => "float".into(),
            SqlType::Decimal(p, s) => format!("decimal({p},{s})"),
            SqlType::Money => "money".into(),
            SqlType::SmallMoney => "smallmoney".into(),
            SqlType::Char(n) => format!("char({n})"),
            SqlType::VarChar(n) => format!("varchar({})", max(n)),
            SqlType::NChar(n) => format!("nchar({n})"),
            SqlType::NVarChar(n) => format!("nvarchar({})", max(n)),
            SqlType::Text => "text".into(),
            SqlType::NText => "ntext".into(),
            SqlType::Binary(n) => format!("binary({n})"),
            SqlType::VarBinary(n) => format!("varbinary({})", max(n)),
            SqlType::Image => "image".into(),
            SqlType::Date => "date".into(),
            SqlType::Time(s) => format!("time({s})"),
            SqlType::DateTime => "datetime".into(),
            SqlType::SmallDateTime => "smalldatetime".into(),
            SqlType::DateTime2(s) => format!("datetime2({s})"),
            SqlType::DateTimeOffset(s) => format!("datetimeoffset({s})"),
            SqlType::Guid => "uniqueidentifier".into(),
            SqlType::Xml => "xml".into(),
            SqlType::Other(name) => name.clone(),
        }
    }

    /// `sys.types.system_type_id` of the type.
    pub fn system_type_id(&self) -> i64 {
        match self {
            SqlType::Image => 34,
            SqlType::Text => 35,
            SqlType::Guid => 36,
            SqlType::Date => 40,
            SqlType::Time(_) => 41,
            SqlType::DateTime2(_) => 42,
            SqlType::DateTimeOffset(_) => 43,
            SqlType::TinyInt => 48,
            SqlType::SmallInt => 52,
            SqlType::Int => 56,
            SqlType::SmallDateTime => 58,
            SqlType::Real => 59,
            SqlType::Money => 60,
            SqlType::DateTime => 61,
            SqlType::Float => 62,
            SqlType::NText => 99,
            SqlType::Bit => 104,
            SqlType::Decimal(_, _) => 106,
            SqlType::SmallMoney => 122,
            SqlType::BigInt => 127,
            SqlType::VarBinary(_) => 165,
            SqlType::VarChar(_) => 167,
            SqlType::Binary(_) => 173,
            SqlType::Char(_) => 175,
            SqlType::NVarChar(_) => 231,
            SqlType::NChar(_) => 239,
            SqlType::Xml => 241,
            SqlType::Other(_) => 240,
        }
    }

    fn decimal_len(precision: u8) -> u8 {
        match precision {
            0..=9 => 5,
            10..=19 => 9,
            20..=28 => 13,
            _ => 17,
        }
    }

    fn time_len(scale: u8) -> u8 {
        match scale {
            0..=2 => 3,
            3..=4 => 4,
            _ => 5,
        }
    }

    /// Writes TYPE_INFO as a server describes a column (`nullable` picks the nullable
    /// variants of the fixed-length types, as SQL Server does).
    pub fn write_type_info(&self, w: &mut Writer, nullable: bool) {
        let fixed_or_n = |w: &mut Writer, fixed: u8, n: u8, len: u8| {
            if nullable {
                w.u8(n);
                w.u8(len);
            } else {
                w.u8(fixed);
            }
        };
        match self {
            SqlType::Bit => fixed_or_n(w, 0x32, 0x68, 1),
            SqlType::TinyInt => fixed_or_n(w, 0x30, 0x26, 1),
            SqlType::SmallInt => fixed_or_n(w, 0x34, 0x26, 2),
            SqlType::Int => fixed_or_n(w, 0x38, 0x26, 4),
            SqlType::BigInt => fixed_or_n(w, 0x7F, 0x26, 8),
            SqlType::Real => fixed_or_n(w, 0x3B, 0x6D, 4),
            SqlType::Float => fixed_or_n(w, 0x3E, 0x6D, 8),
            SqlType::Money => fixed_or_n(w, 0x3C, 0x6E, 8),
            SqlType::SmallMoney => fixed_or_n(w, 0x7A, 0x6E, 4),
            SqlType::DateTime => fixed_or_n(w, 0x3D, 0x6F, 8),
            SqlType::SmallDateTime => fixed_or_n(w, 0x3A, 0x6F, 4),
            SqlType::Decimal(p, s) => {
                w.u8(0x6A);
                w.u8(Self::decimal_len(*p));
                w.u8(*p);
                w.u8(*s);
            }
            SqlType::Char(n) => {
                w.u8(0xAF);
                w.u16(*n);
                w.bytes(&COLLATION);
            }
            SqlType::VarChar(n) => {
                w.u8(0xA7);
                w.u16(n.unwrap_or(0xFFFF));
                w.bytes(&COLLATION);
            }
            SqlType::NChar(n) => {
                w.u8(0xEF);
                w.u16(n * 2);
                w.bytes(&COLLATION);
            }
            SqlType::NVarChar(n) => {
                w.u8(0xE7);
                w.u16(n.map_or(0xFFFF, |n| n * 2));
                w.bytes(&COLLATION);
            }
            SqlType::Binary(n) => {
                w.u8(0xAD);
                w.u16(*n);
            }
            SqlType::VarBinary(n) => {
                w.u8(0xA5);
                w.u16(n.unwrap_or(0xFFFF));
            }
            SqlType::Text | SqlType::NText | SqlType::Image => {
                w.u8(match self {
                    SqlType::Text => 0x23,
                    SqlType::NText => 0x63,
                    _ => 0x22,
                });
                w.u32(if *self == SqlType::NText {
                    0x7FFF_FFFE
                } else {
                    0x7FFF_FFFF
                });
                if *self != SqlType::Image {
                    w.bytes(&COLLATION);
                }
            }
            SqlType::Date => w.u8(0x28),
            SqlType::Time(s) => {
                w.u8(0x29);
                w.u8(*s);
            }
            SqlType::DateTime2(s) => {
                w.u8(0x2A);
                w.u8(*s);
            }
            SqlType::DateTimeOffset(s) => {
                w.u8(0x2B);
                w.u8(*s);
            }
            SqlType::Guid => {
                w.u8(0x24);
                w.u8(16);
            }
            SqlType::Xml => {
                w.u8(0xF1);
                w.u8(0);
            }
            // Described as varbinary(max); its values are never sent.
            SqlType::Other(_) => {
                w.u8(0xA5);
                w.u16(0xFFFF);
            }
        }
    }

    /// Reads TYPE_INFO (as a client sends it in a bulk load's COLMETADATA); the second value
    /// says whether it is a fixed-length (non-nullable) encoding.
    pub fn read_type_info(r: &mut Reader) -> Result<(SqlType, Encoding), String> {
        let id = r.u8()?;
        let ty = match id {
            0x30 => return Ok((SqlType::TinyInt, Encoding::Fixed(1))),
            0x32 => return Ok((SqlType::Bit, Encoding::Fixed(1))),
            0x34 => return Ok((SqlType::SmallInt, Encoding::Fixed(2))),
            0x38 => return Ok((SqlType::Int, Encoding::Fixed(4))),
            0x7F => return Ok((SqlType::BigInt, Encoding::Fixed(8))),
            0x3B => return Ok((SqlType::Real, Encoding::Fixed(4))),
            0x3E => return Ok((SqlType::Float, Encoding::Fixed(8))),
            0x3C => return Ok((SqlType::Money, Encoding::Fixed(8))),
            0x7A => return Ok((SqlType::SmallMoney, Encoding::Fixed(4))),
            0x3D => return Ok((SqlType::DateTime, Encoding::Fixed(8))),
            0x3A => return Ok((SqlType::SmallDateTime, Encoding::Fixed(4))),
            0x26 => match r.u8()? {
                1 => SqlType::TinyInt,
                2 => SqlType::SmallInt,
                4 => SqlType::Int,
                8 => SqlType::BigInt,
                n => return Err(format!("INTN of length {n}")),
            },
            0x68 => {
                r.u8()?;
                SqlType::Bit
            }
            0x6D => match r.u8()? {
                4 => SqlType::Real,
                _ => SqlType::Float,
            },
            0x6E => match r.u8()? {
                4 => SqlType::SmallMoney,
                _ => SqlType::Money,
            },
            0x6F => match r.u8()? {
                4 => SqlType::SmallDateTime,
                _ => SqlType::DateTime,
            },
            0x6A | 0x6C => {
                r.u8()?;
                let p = r.u8()?;
                let s = r.u8()?;
                SqlType::Decimal(p, s)
            }
            0xAF | 0xA7 | 0xEF | 0xE7 => {
                let len = r.u16()?;
                r.take(5)?;
                let n = (len != 0xFFFF).then_some(len);
                match id {
                    0xAF => SqlType::Char(len),
                    0xA7 => SqlType::VarChar(n),
                    0xEF => SqlType::NChar(len / 2),
                    _ => SqlType::NVarChar(n.map(|n| n / 2)),
                }
            }
            0xAD => SqlType::Binary(r.u16()?),
            0xA5 => {
                let len = r.u16()?;
                SqlType::VarBinary((len != 0xFFFF).then_some(len))
            }
            0x23 | 0x63 | 0x22 => {
                r.u32()?;
                if id != 0x22 {
                    r.take(5)?;
                }
                // A bulk load's text types carry a table name (MS-TDS 2.2.7.4).
                let parts = r.u8()?;
                for _ in 0..parts {
                    let n = r.u16()? as usize;
                    r.take(n * 2)?;
                }
                match id {
                    0x23 => SqlType::Text,
                    0x63 => SqlType::NText,
                    _ => SqlType::Image,
                }
            }
            0x28 => SqlType::Date,
            0x29 => SqlType::Time(r.u8()?),
            0x2A => SqlType::DateTime2(r.u8()?),
            0x2B => SqlType::DateTimeOffset(r.u8()?),
            0x24 => {
                r.u8()?;
                SqlType::Guid
            }
            0xF1 => {
                if r.u8()? != 0 {
                    return Err("xml with a schema collection".into());
                }
                SqlType::Xml
            }
            other => return Err(format!("unknown TDS type 0x{other:02X}")),
        };
        Ok((ty, Encoding::Nullable))
    }

    /// Whether values of this type travel as PLP (partially length-prefixed).
    pub fn is_plp(&self) -> bool {
        matches!(
            self,
            SqlType::VarChar(None)
                | SqlType::NVarChar(None)
                | SqlType::VarBinary(None)
                | SqlType::Xml
        )
    }

    /// Writes `value` as a ROW token holds it for this type; `fixed` for NOT NULL columns
    /// of fixed-length types.
    pub fn write_value(&self, w: &mut Writer, value: &Value, fixed: bool) -> Result<(), String> {
        let bad = || format!("value {value:?} does not fit {}", self.name());
        if *value == Value::Null {
            if fixed {
                return Err(format!("NULL in a NOT NULL {} column", self.name()));
            }
            match self {
                SqlType::Char(_)
                | SqlType::VarChar(Some(_))
                | SqlType::NChar(_)
                | SqlType::NVarChar(Some(_))
                | SqlType::Binary(_)
                | SqlType::VarBinary(Some(_)) => w.u16(0xFFFF),
                t if t.is_plp() => w.u64(u64::MAX),
                _ => w.u8(0),
            }
            return Ok(());
        }
        let len_prefix = |w: &mut Writer, n: u8| {
            if !fixed {
                w.u8(n)
            }
        };
        match (self, value) {
            (SqlType::Bit, Value::Bool(b)) => {
                len_prefix(w, 1);
                w.u8(*b as u8);
            }
            (SqlType::TinyInt, Value::Int(v)) => {
                len_prefix(w, 1);
                w.u8(u8::try_from(*v).map_err(|_| bad())?);
            }
            (SqlType::SmallInt, Value::Int(v)) => {
                len_prefix(w, 2);
                w.bytes(&i16::try_from(*v).map_err(|_| bad())?.to_le_bytes());
            }
            (SqlType::Int, Value::Int(v)) => {
                len_prefix(w, 4);
                w.bytes(&i32::try_from(*v).map_err(|_| bad())?.to_le_bytes());
            }
            (SqlType::BigInt, Value::Int(v)) => {
                len_prefix(w, 8);
                w.bytes(&v.to_le_bytes());
            }
            (SqlType::Real, Value::F32(v)) => {
                len_prefix(w, 4);
                w.bytes(&v.to_le_bytes());
            }
            (SqlType::Float, Value::F64(v)) => {
                len_prefix(w, 8);
                w.bytes(&v.to_le_bytes());
            }
            (SqlType::Money, Value::Money(v)) => {
                len_prefix(w, 8);
                w.bytes(&((*v >> 32) as i32).to_le_bytes());
                w.bytes(&(*v as u32).to_le_bytes());
            }
            (SqlType::SmallMoney, Value::Money(v)) => {
                len_prefix(w, 4);
                w.bytes(&i32::try_from(*v).map_err(|_| bad())?.to_le_bytes());
            }
            (SqlType::Decimal(p, _), Value::Decimal(v)) => {
                let len = Self::decimal_len(*p);
                w.u8(len);
                w.u8(u8::from(*v >= 0));
                let magnitude = v.unsigned_abs().to_le_bytes();
                w.bytes(&magnitude[..len as usize - 1]);
            }
            (SqlType::Char(n), Value::Text(s)) => {
                let mut bytes = encode_1252(s);
                bytes.resize(*n as usize, b' ');
                w.u16(bytes.len() as u16);
                w.bytes(&bytes);
            }
            (SqlType::VarChar(Some(_)), Value::Text(s)) => {
                let bytes = encode_1252(s);
                w.u16(bytes.len() as u16);
                w.bytes(&bytes);
            }
            (SqlType::NChar(n), Value::Text(s)) => {
                let mut units: Vec<u16> = s.encode_utf16().collect();
                units.resize(*n as usize, b' ' as u16);
                w.u16((units.len() * 2) as u16);
                units.iter().for_each(|u| w.bytes(&u.to_le_bytes()));
            }
            (SqlType::NVarChar(Some(_)), Value::Text(s)) => {
                let bytes = utf16(s);
                w.u16(bytes.len() as u16);
                w.bytes(&bytes);
            }
            (SqlType::Binary(n), Value::Bytes(b)) => {
                let mut b = b.clone();
                b.resize(*n as usize, 0);
                w.u16(b.len() as u16);
                w.bytes(&b);
            }
            (SqlType::VarBinary(Some(_)), Value::Bytes(b)) => {
                w.u16(b.len() as u16);
                w.bytes(b);
            }
            (SqlType::VarChar(None), Value::Text(s)) => write_plp(w, &encode_1252(s)),
            (SqlType::NVarChar(None) | SqlType::Xml, Value::Text(s)) => write_plp(w, &utf16(s)),
            (SqlType::VarBinary(None), Value::Bytes(b)) => write_plp(w, b),
            (SqlType::Text | SqlType::NText | SqlType::Image, value) => {
                let bytes = match (self, value) {
                    (SqlType::Text, Value::Text(s)) => encode_1252(s),
                    (SqlType::NText, Value::Text(s)) => utf16(s),
                    (SqlType::Image, Value::Bytes(b)) => b.clone(),
                    _ => return Err(bad()),
                };
                w.u8(16);
                w.bytes(&[0xAA; 16]); // text pointer
                w.bytes(&[0; 8]); // timestamp
                w.u32(bytes.len() as u32);
                w.bytes(&bytes);
            }
            (SqlType::Date, Value::Date(days)) => {
                w.u8(3);
                write_date(w, *days).map_err(|_| bad())?;
            }
            (SqlType::Time(s), Value::Time(ticks)) => {
                w.u8(Self::time_len(*s));
                write_time(w, *ticks, *s);
            }
            (SqlType::DateTime2(s), Value::DateTime(days, ticks)) => {
                w.u8(Self::time_len(*s) + 3);
                write_time(w, *ticks, *s);
                write_date(w, *days).map_err(|_| bad())?;
            }
            (SqlType::DateTimeOffset(s), Value::DateTimeOffset(days, ticks, offset)) => {
                w.u8(Self::time_len(*s) + 5);
                write_time(w, *ticks, *s);
                write_date(w, *days).map_err(|_| bad())?;
                w.bytes(&offset.to_le_bytes());
            }
            (SqlType::DateTime, Value::DateTime(days, ticks)) => {
                len_prefix(w, 8);
                let days = i32::try_from(days - DAYS_TO_1900).map_err(|_| bad())?;
                // 1/300 s, rounded to the nearest.
                let t300 = (*ticks as u128 * 300 + 5_000_000) / 10_000_000;
                w.bytes(&days.to_le_bytes());
                w.bytes(&(t300 as u32).to_le_bytes());
            }
            (SqlType::SmallDateTime, Value::DateTime(days, ticks)) => {
                len_prefix(w, 4);
                let days = u16::try_from(days - DAYS_TO_1900).map_err(|_| bad())?;
                w.bytes(&days.to_le_bytes());
                w.bytes(&((ticks / 600_000_000) as u16).to_le_bytes());
            }
            (SqlType::Guid, Value::Guid(g)) => {
                w.u8(16);
                w.bytes(&guid_wire(g));
            }
            _ => return Err(bad()),
        }
        Ok(())
    }

    /// Reads a value of this type from a ROW token.
    pub fn read_value(&self, r: &mut Reader, encoding: Encoding) -> Result<Value, String> {
        if let Encoding::Fixed(n) = encoding {
            let bytes = r.take(n)?;
            return self.decode_fixed(bytes);
        }
        match self {
            SqlType::Char(_)
            | SqlType::VarChar(Some(_))
            | SqlType::NChar(_)
            | SqlType::NVarChar(Some(_))
            | SqlType::Binary(_)
            | SqlType::VarBinary(Some(_)) => {
                let len = r.u16()?;
                if len == 0xFFFF {
                    return Ok(Value::Null);
                }
                let bytes = r.take(len as usize)?;
                Ok(self.decode_var(bytes))
            }
            t if t.is_plp() => match read_plp(r)? {
                None => Ok(Value::Null),
                Some(bytes) => Ok(self.decode_var(&bytes)),
            },
            SqlType::Text | SqlType::NText | SqlType::Image => {
                let ptr = r.u8()?;
                if ptr == 0 {
                    return Ok(Value::Null);
                }
                r.take(ptr as usize + 8)?;
                let len = r.u32()? as usize;
                let bytes = r.take(len)?;
                Ok(self.decode_var(bytes))
            }
            _ => {
                let len = r.u8()? as usize;
                if len == 0 {
                    return Ok(Value::Null);
                }
                let bytes = r.take(len)?;
                self.decode_fixed(bytes)
            }
        }
    }

    fn decode_var(&self, bytes: &[u8]) -> Value {
        match self {
            SqlType::Char(_) | SqlType::VarChar(_) | SqlType::Text => {
                Value::Text(bytes.iter().map(|b| char::from(*b)).collect())
            }
            SqlType::NChar(_) | SqlType::NVarChar(_) | SqlType::NText | SqlType::Xml => {
                let units: Vec<u16> = bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                Value::Text(String::from_utf16_lossy(&units))
            }
            _ => Value::Bytes(bytes.to_vec()),
        }
    }

    fn decode_fixed(&self, b: &[u8]) -> Result<Value, String> {
        let le = |n: usize| -> u64 {
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(&b[..n]);
            u64::from_le_bytes(v)
        };
        Ok(match self {
            SqlType::Bit => Value::Bool(b[0] != 0),
            SqlType::TinyInt => Value::Int(b[0] as i64),
            SqlType::SmallInt => Value::Int(i16::from_le_bytes([b[0], b[1]]) as i64),
            SqlType::Int => Value::Int(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64),
            SqlType::BigInt => Value::Int(le(8) as i64),
            SqlType::Real => Value::F32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            SqlType::Float => Value::F64(f64::from_bits(le(8))),
            SqlType::Money if b.len() == 8 => {
                let high = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64;
                let low = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as i64;
                Value::Money((high << 32) | low)
            }
            SqlType::Money | SqlType::SmallMoney => {
                Value::Money(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
            }
            SqlType::Decimal(_, _) => {
                let mut magnitude = [0u8; 16];
                magnitude[..b.len() - 1].copy_from_slice(&b[1..]);
                let v = u128::from_le_bytes(magnitude) as i128;
                Value::Decimal(if b[0] == 1 { v } else { -v })
            }
            SqlType::DateTime if b.len() == 8 => {
                let days = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64;
                let t300 = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as u64;
                Value::DateTime(days + DAYS_TO_1900, (t300 * 10_000_000 + 150) / 300)
            }
            SqlType::DateTime | SqlType::SmallDateTime => {
                let days = u16::from_le_bytes([b[0], b[1]]) as i64;
                let minutes = u16::from_le_bytes([b[2], b[3]]) as u64;
                Value::DateTime(days + DAYS_TO_1900, minutes * 600_000_000)
            }
            SqlType::Date => Value::Date(le(3) as i64),
            SqlType::Time(s) => Value::Time(read_time(b, *s)),
            SqlType::DateTime2(s) => {
                let t = b.len() - 3;
                Value::DateTime(le_at(&b[t..], 3) as i64, read_time(&b[..t], *s))
            }
            SqlType::DateTimeOffset(s) => {
                let t = b.len() - 5;
                Value::DateTimeOffset(
                    le_at(&b[t..], 3) as i64,
                    read_time(&b[..t], *s),
                    i16::from_le_bytes([b[t + 3], b[t + 4]]),
                )
            }
            SqlType::Guid => {
                let mut wire = [0u8; 16];
                wire.copy_from_slice(&b[..16]);
                Value::Guid(guid_wire(&wire))
            }
            other => return Err(format!("{} is not a fixed-length type", other.name())),
        })
    }
}

/// How a value is framed: fixed-length (a NOT NULL fixed type) or with its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// This many bytes, no length prefix.
    Fixed(usize),
    /// Length-prefixed (or PLP), NULL possible.
    Nullable,
}

fn le_at(b: &[u8], n: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(v)
}

fn write_date(w: &mut Writer, days: i64) -> Result<(), ()> {
    if !(0..3_652_059).contains(&days) {
        return Err(());
    }
    w.bytes(&(days as u32).to_le_bytes()[..3]);
    Ok(())
}

fn write_time(w: &mut Writer, ticks: u64, scale: u8) {
    let units = ticks / 10u64.pow(7 - scale as u32);
    let len = SqlType::time_len(scale) as usize;
    w.bytes(&units.to_le_bytes()[..len]);
}

fn read_time(b: &[u8], scale: u8) -> u64 {
    le_at(b, b.len()) * 10u64.pow(7 - scale as u32)
}

/// SQL Server's GUID byte order: the first three groups little-endian. The same swap turns
/// text order into wire order and back.
pub fn guid_wire(g: &[u8; 16]) -> [u8; 16] {
    let mut w = *g;
    w[..4].reverse();
    w[4..6].reverse();
    w[6..8].reverse();
    w
}

/// UTF-16LE bytes of `s`.
pub fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

/// `s` in code page 1252 as far as Latin-1 reaches it; other characters become `?`, as a
/// server stores them in a varchar of this collation.
fn encode_1252(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c as u32 {
            0..=0x7F | 0xA0..=0xFF => c as u8,
            _ => b'?',
        })
        .collect()
}

fn write_plp(w: &mut Writer, bytes: &[u8]) {
    w.u64(bytes.len() as u64);
    // Chunks of at most 8000 bytes, as a server sends them.
    for chunk in bytes.chunks(8000) {
        w.u32(chunk.len() as u32);
        w.bytes(chunk);
    }
    w.u32(0);
}

fn read_plp(r: &mut Reader) -> Result<Option<Vec<u8>>, String> {
    let total = r.u64()?;
    if total == u64::MAX {
        return Ok(None);
    }
    let mut out = Vec::new();
    loop {
        let n = r.u32()? as usize;
        if n == 0 {
            return Ok(Some(out));
        }
        out.extend_from_slice(r.take(n)?);
    }
}
