//! TDS packets and the tokens a server sends (MS-TDS 2.2.3, 2.2.7).

use std::io::{Read, Write};

/// Packet types.
pub mod packet {
    /// SQL batch
    pub const SQL_BATCH: u8 = 0x01;
    /// RPC request
    pub const RPC: u8 = 0x03;
    /// Tabular result (the server's answers)
    pub const REPLY: u8 = 0x04;
    /// Attention (cancel)
    pub const ATTENTION: u8 = 0x06;
    /// Bulk load data
    pub const BULK_LOAD: u8 = 0x07;
    /// Transaction manager request
    pub const TRANSACTION_MANAGER: u8 = 0x0E;
    /// LOGIN7
    pub const LOGIN7: u8 = 0x10;
    /// PRELOGIN (and the TLS handshake it carries)
    pub const PRELOGIN: u8 = 0x12;
}

/// The largest packet the peer sends (the default packet size).
pub const PACKET_SIZE: usize = 4096;

/// Little-endian writer of a message's bytes.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    /// u16, little-endian.
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// u32, little-endian.
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// u64, little-endian.
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// B_VARCHAR: a length in characters (one byte), then UTF-16LE.
    pub fn b_varchar(&mut self, s: &str) {
        let units: Vec<u16> = s.encode_utf16().collect();
        self.u8(units.len() as u8);
        units.iter().for_each(|u| self.u16(*u));
    }
    /// US_VARCHAR: a length in characters (two bytes), then UTF-16LE.
    pub fn us_varchar(&mut self, s: &str) {
        let units: Vec<u16> = s.encode_utf16().collect();
        self.u16(units.len() as u16);
        units.iter().for_each(|u| self.u16(*u));
    }
}

/// Little-endian reader over a message.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }
    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len()
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("message ends before byte {}", self.pos + n))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    /// One byte.
    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    /// u16, little-endian.
    pub fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    /// u32, little-endian.
    pub fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// u64, little-endian.
    pub fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut v = [0u8; 8];
        v.copy_from_slice(b);
        Ok(u64::from_le_bytes(v))
    }
}

/// Reads one message: its type and the payloads of its packets up to end-of-message.
pub fn read_message(stream: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    read_message_with(stream, |_, _| {})
}

/// [`read_message`], telling `on_packet` each packet's type and the bytes of the message
/// so far.
pub fn read_message_with(
    stream: &mut impl Read,
    mut on_packet: impl FnMut(u8, usize),
) -> std::io::Result<(u8, Vec<u8>)> {
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; 8];
        stream.read_exact(&mut header)?;
        let length = u16::from_be_bytes([header[2], header[3]]) as usize;
        if length < 8 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("packet length {length} is shorter than its header"),
            ));
        }
        let start = payload.len();
        payload.resize(start + length - 8, 0);
        stream.read_exact(&mut payload[start..])?;
        on_packet(header[0], payload.len());
        if header[1] & 0x01 != 0 {
            return Ok((header[0], payload));
        }
    }
}

/// Writes `payload` as a message of type `kind`, in packets of at most [`PACKET_SIZE`].
pub fn write_message(stream: &mut impl Write, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(payload.len() + payload.len() / PACKET_SIZE * 8 + 8);
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![&[]]
    } else {
        payload.chunks(PACKET_SIZE - 8).collect()
    };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        out.push(kind);
        out.push(u8::from(i == last));
        out.extend_from_slice(&((chunk.len() + 8) as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]); // SPID
        out.push((i + 1) as u8); // packet id
        out.push(0); // window
        out.extend_from_slice(chunk);
    }
    stream.write_all(&out)?;
    stream.flush()
}

/// DONE status bits.
pub mod done {
    /// More results follow.
    pub const MORE: u16 = 0x0001;
    /// An error ended the statement.
    pub const ERROR: u16 = 0x0002;
    /// The row count is valid.
    pub const COUNT: u16 = 0x0010;
}

/// A DONE token.
pub fn write_done(w: &mut Writer, status: u16, command: u16, rows: u64) {
    w.u8(0xFD);
    w.u16(status);
    w.u16(command);
    w.u64(rows);
}

/// An ERROR token.
pub fn write_error(w: &mut Writer, number: u32, class: u8, message: &str) {
    let mut body = Writer::default();
    body.u32(number);
    body.u8(1); // state
    body.u8(class);
    body.us_varchar(message);
    body.b_varchar("ferry-tds-peer");
    body.b_varchar("");
    body.u32(1); // line
    w.u8(0xAA);
    w.u16(body.0.len() as u16);
    w.bytes(&body.0);
}

/// An ENVCHANGE token with string values (database, language, packet size).
pub fn write_env_change(w: &mut Writer, kind: u8, new: &str, old: &str) {
    let mut body = Writer::default();
    body.u8(kind);
    body.b_varchar(new);
    body.b_varchar(old);
    w.u8(0xE3);
    w.u16(body.0.len() as u16);
    w.bytes(&body.0);
}

/// An ENVCHANGE token with binary values: a transaction (8 begin, 9 commit, 10 rollback)
/// or the collation (7).
pub fn write_tx_change(w: &mut Writer, kind: u8, new: &[u8], old: &[u8]) {
    let mut body = Writer::default();
    body.u8(kind);
    body.u8(new.len() as u8);
    body.bytes(new);
    body.u8(old.len() as u8);
    body.bytes(old);
    w.u8(0xE3);
    w.u16(body.0.len() as u16);
    w.bytes(&body.0);
}

/// A LOGINACK token for TDS 7.4.
pub fn write_login_ack(w: &mut Writer) {
    let mut body = Writer::default();
    body.u8(1); // SQL interface
    body.bytes(&[0x74, 0x00, 0x00, 0x04]); // TDS 7.4, big-endian
    body.b_varchar("Microsoft SQL Server");
    body.bytes(&[16, 0, 0x10, 0x00]); // 16.0.4096
    w.u8(0xAD);
    w.u16(body.0.len() as u16);
    w.bytes(&body.0);
}

/// The PRELOGIN answer: version, encryption, instance, thread id, MARS.
pub fn prelogin_answer(encryption: u8) -> Vec<u8> {
    let options: [(u8, Vec<u8>); 5] = [
        (0, vec![16, 0, 0x10, 0x00, 0, 0]),
        (1, vec![encryption]),
        (2, vec![0]),
        (3, vec![]),
        (4, vec![0]),
    ];
    let mut out = Vec::new();
    let mut offset = options.len() * 5 + 1;
    for (token, data) in &options {
        out.push(*token);
        out.extend_from_slice(&(offset as u16).to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        offset += data.len();
    }
    out.push(0xFF);
    for (_, data) in &options {
        out.extend_from_slice(data);
    }
    out
}

/// The client's requested encryption in its PRELOGIN.
pub fn prelogin_encryption(payload: &[u8]) -> Result<u8, String> {
    let mut r = Reader::new(payload);
    loop {
        let token = r.u8()?;
        if token == 0xFF {
            return Err("PRELOGIN without an ENCRYPTION option".into());
        }
        let offset = u16::from_be_bytes([r.u8()?, r.u8()?]) as usize;
        let length = u16::from_be_bytes([r.u8()?, r.u8()?]) as usize;
        if token == 1 {
            if length != 1 || offset >= payload.len() {
                return Err("a malformed ENCRYPTION option".into());
            }
            return Ok(payload[offset]);
        }
    }
}

/// What a LOGIN7 carries that the peer checks.
#[derive(Debug)]
pub struct Login {
    /// TDS version the client asks for.
    pub tds_version: u32,
    /// User name.
    pub user: String,
    /// Password (de-obfuscated).
    pub password: String,
    /// Database, if given.
    pub database: String,
    /// Application name.
    pub app: String,
}

/// Parses a LOGIN7 record (MS-TDS 2.2.6.4).
pub fn parse_login(payload: &[u8]) -> Result<Login, String> {
    if payload.len() < 94 {
        return Err("LOGIN7 shorter than its fixed part".into());
    }
    let u16_at = |i: usize| u16::from_le_bytes([payload[i], payload[i + 1]]) as usize;
    let field = |at: usize, password: bool| -> Result<String, String> {
        let (offset, chars) = (u16_at(at), u16_at(at + 2));
        let bytes = payload
            .get(offset..offset + chars * 2)
            .ok_or("a LOGIN7 field outside the record")?;
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| {
                let (mut a, mut b) = (c[0], c[1]);
                if password {
                    a = (a ^ 0xA5).rotate_left(4);
                    b = (b ^ 0xA5).rotate_left(4);
                }
                u16::from_le_bytes([a, b])
            })
            .collect();
        Ok(String::from_utf16_lossy(&units))
    };
    Ok(Login {
        tds_version: u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]),
        user: field(40, false)?,
        password: field(44, true)?,
        app: field(48, false)?,
        database: field(68, false)?,
    })
}
