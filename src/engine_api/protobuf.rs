//! The protobuf wire format (protobuf.dev/programming-guides/encoding), as
//! much as the CRI calls here need: writing strings and bools, reading
//! any message field by field (unknown fields skipped, as every protobuf
//! reader does, so a newer engine's additions are harmless).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    #[error("a protobuf message ends inside a field")]
    Truncated,
    #[error("a protobuf message holds a varint longer than 10 bytes")]
    VarintTooLong,
    #[error("a protobuf message holds wire type {0}, which no field has")]
    WireType(u64),
    #[error("protobuf field {field} is not valid UTF-8")]
    NotUtf8 { field: u32 },
}

/// One field's value as the wire has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    /// Strings, bytes, embedded messages, packed repeated fields.
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Value<'a> {
    /// A string field (a wrong wire type reads as empty, as a reader that
    /// does not know the field would skip it).
    pub fn string(self, field: u32) -> Result<String, ProtobufError> {
        match self {
            Value::Bytes(bytes) => {
                String::from_utf8(bytes.to_vec()).map_err(|_| ProtobufError::NotUtf8 { field })
            }
            _ => Ok(String::new()),
        }
    }

    pub fn bool(self) -> bool {
        matches!(self, Value::Varint(value) if value != 0)
    }

    pub fn message(self) -> &'a [u8] {
        match self {
            Value::Bytes(bytes) => bytes,
            _ => &[],
        }
    }
}

/// Every field of `message`, in wire order: `(field number, value)`.
pub fn fields(message: &[u8]) -> Result<Vec<(u32, Value<'_>)>, ProtobufError> {
    let mut input = message;
    let mut out = Vec::new();
    while !input.is_empty() {
        let key = varint(&mut input)?;
        // Field numbers are below 2^29, so the shifted key fits.
        let field = (key >> 3) as u32;
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut input)?),
            1 => Value::Fixed64(u64::from_le_bytes(fixed(&mut input)?)),
            2 => {
                let length = varint(&mut input)?;
                let length = usize::try_from(length).map_err(|_| ProtobufError::Truncated)?;
                Value::Bytes(take(&mut input, length)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(fixed(&mut input)?)),
            other => return Err(ProtobufError::WireType(other)),
        };
        out.push((field, value));
    }
    Ok(out)
}

fn take<'a>(input: &mut &'a [u8], length: usize) -> Result<&'a [u8], ProtobufError> {
    if input.len() < length {
        return Err(ProtobufError::Truncated);
    }
    let (taken, rest) = input.split_at(length);
    *input = rest;
    Ok(taken)
}

fn fixed<const N: usize>(input: &mut &[u8]) -> Result<[u8; N], ProtobufError> {
    let mut bytes = [0; N];
    bytes.copy_from_slice(take(input, N)?);
    Ok(bytes)
}

fn varint(input: &mut &[u8]) -> Result<u64, ProtobufError> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or(ProtobufError::Truncated)?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ProtobufError::VarintTooLong)
}

/// A message being written.
#[derive(Debug, Default)]
pub struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    /// A string field; an empty one is left out, as proto3 does.
    pub fn string(mut self, field: u32, value: &str) -> Writer {
        if !value.is_empty() {
            self.key(field, 2);
            self.varint(value.len() as u64);
            self.bytes.extend_from_slice(value.as_bytes());
        }
        self
    }

    /// A bool field; false is left out, as proto3 does.
    pub fn bool(mut self, field: u32, value: bool) -> Writer {
        if value {
            self.key(field, 0);
            self.varint(1);
        }
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }

    fn key(&mut self, field: u32, wire_type: u64) {
        self.varint((u64::from(field) << 3) | wire_type);
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.bytes.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        self.bytes.push(value as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_back() {
        let long = "v".repeat(200);
        let message = Writer::default()
            .string(1, "0.1.0")
            .bool(2, true)
            .bool(3, false)
            .string(4, "")
            .string(300, &long)
            .finish();
        // protobuf.dev's own example: field 1, "testing" is 0a 07 74 65 ...
        assert_eq!(
            Writer::default().string(1, "testing").finish(),
            b"\x0a\x07testing"
        );
        let fields = fields(&message).unwrap();
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[0], (1, Value::Bytes(b"0.1.0")));
        assert_eq!(fields[1], (2, Value::Varint(1)));
        assert!(fields[1].1.bool());
        assert_eq!(fields[2].0, 300);
        assert_eq!(fields[2].1.string(300).unwrap(), long);
    }

    #[test]
    fn skips_fixed_fields_and_refuses_broken_ones() {
        // Field 1 fixed64, field 2 fixed32, field 3 varint 150 (96 01).
        let message = [
            0x09, 1, 2, 3, 4, 5, 6, 7, 8, 0x15, 1, 2, 3, 4, 0x18, 0x96, 0x01,
        ];
        let fields = fields(&message).unwrap();
        assert_eq!(fields[0], (1, Value::Fixed64(0x0807060504030201)));
        assert_eq!(fields[1], (2, Value::Fixed32(0x04030201)));
        assert_eq!(fields[2], (3, Value::Varint(150)));
        assert_eq!(
            super::fields(&[0x0a, 5, b'a']),
            Err(ProtobufError::Truncated)
        );
        assert_eq!(super::fields(&[0x0b]), Err(ProtobufError::WireType(3)));
        assert_eq!(super::fields(&[0x08; 12]).map(|f| f.len()), Ok(6));
        assert_eq!(
            super::fields(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]),
            Err(ProtobufError::VarintTooLong)
        );
        assert_eq!(
            Value::Bytes(&[0xff]).string(7),
            Err(ProtobufError::NotUtf8 { field: 7 })
        );
    }
}
