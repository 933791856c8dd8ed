//! HPACK (RFC 7541), the header compression of HTTP/2: a decoder for the
//! header blocks a gRPC server sends (static and dynamic table, integers,
//! Huffman-coded or plain strings), and the one representation our
//! requests use, a literal without indexing.

use std::collections::VecDeque;

use super::huffman::{self, HuffmanError};

/// A header field: name and value, as bytes (values are not always UTF-8).
pub type Field = (Vec<u8>, Vec<u8>);

/// The static table (RFC 7541 Appendix A); index 1 is the first entry.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// What RFC 7541 §4.1 counts for an entry besides its name and value.
const ENTRY_OVERHEAD: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("a header block ends inside a field")]
    Truncated,
    #[error("a header block holds an integer too large")]
    IntegerOverflow,
    #[error("a header block names table index {index}, and the tables hold {entries}")]
    BadIndex { index: usize, entries: usize },
    #[error("a header block sets the dynamic table to {size} bytes, above the {limit} allowed")]
    TableTooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Huffman(#[from] HuffmanError),
}

/// One connection's decoding state: the dynamic table lives as long as
/// the connection, across header blocks.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: index 62 is `dynamic[0]`.
    dynamic: VecDeque<Field>,
    size: usize,
    max_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE as we announced it (the default 4096).
    limit: usize,
}

impl Decoder {
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            dynamic: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
        }
    }

    /// Decodes one complete header block (HEADERS plus CONTINUATIONs).
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, HpackError> {
        let mut fields = Vec::new();
        let mut input = block;
        while let Some(&first) = input.first() {
            if first & 0x80 != 0 {
                // §6.1 indexed field.
                let index = integer(&mut input, 7)?;
                fields.push(self.entry(index)?);
            } else if first & 0x40 != 0 {
                // §6.2.1 literal with incremental indexing.
                let field = self.literal(&mut input, 6)?;
                self.insert(field.clone());
                fields.push(field);
            } else if first & 0x20 != 0 {
                // §6.3 dynamic table size update.
                let size = integer(&mut input, 5)?;
                if size > self.limit {
                    return Err(HpackError::TableTooLarge {
                        size,
                        limit: self.limit,
                    });
                }
                self.max_size = size;
                self.evict(0);
            } else {
                // §6.2.2 without indexing, §6.2.3 never indexed: both
                // have a 4-bit index prefix.
                fields.push(self.literal(&mut input, 4)?);
            }
        }
        Ok(fields)
    }

    fn entry(&self, index: usize) -> Result<Field, HpackError> {
        let entries = STATIC_TABLE.len() + self.dynamic.len();
        let bad = HpackError::BadIndex { index, entries };
        if index == 0 {
            return Err(bad);
        }
        if let Some((name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
        }
        self.dynamic
            .get(index - 1 - STATIC_TABLE.len())
            .cloned()
            .ok_or(bad)
    }

    /// A literal field whose name is an index (non-zero) or a string.
    fn literal(&self, input: &mut &[u8], prefix: u32) -> Result<Field, HpackError> {
        let index = integer(input, prefix)?;
        let name = if index == 0 {
            string(input)?
        } else {
            self.entry(index)?.0
        };
        Ok((name, string(input)?))
    }

    fn insert(&mut self, field: Field) {
        let size = field.0.len() + field.1.len() + ENTRY_OVERHEAD;
        // §4.4: an entry larger than the table empties it and is not kept.
        self.evict(size.min(self.max_size));
        if size <= self.max_size {
            self.size += size;
            self.dynamic.push_front(field);
        }
    }

    /// Drops the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.dynamic.pop_back() {
                Some((name, value)) => self.size -= name.len() + value.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }
}

/// §5.1: an integer in the low `prefix` bits of the first byte, continued
/// in 7-bit groups while it fills them.
fn integer(input: &mut &[u8], prefix: u32) -> Result<usize, HpackError> {
    let (&first, rest) = input.split_first().ok_or(HpackError::Truncated)?;
    *input = rest;
    let mask = (1usize << prefix) - 1;
    let mut value = usize::from(first) & mask;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let (&byte, rest) = input.split_first().ok_or(HpackError::Truncated)?;
        *input = rest;
        // Header lengths and indexes here are far below 2^28.
        if shift > 21 {
            return Err(HpackError::IntegerOverflow);
        }
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// §5.2: a string literal, Huffman-coded when its first bit is set.
fn string(input: &mut &[u8]) -> Result<Vec<u8>, HpackError> {
    let huffman_coded = input.first().is_some_and(|byte| byte & 0x80 != 0);
    let length = integer(input, 7)?;
    if input.len() < length {
        return Err(HpackError::Truncated);
    }
    let (raw, rest) = input.split_at(length);
    *input = rest;
    if huffman_coded {
        Ok(huffman::decode(raw)?)
    } else {
        Ok(raw.to_vec())
    }
}

/// Appends `name: value` as a literal without indexing, new name (§6.2.2),
/// strings not Huffman-coded: nothing for the server to remember.
pub fn encode_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    for text in [name, value] {
        encode_integer(out, 0, 7, text.len());
        out.extend_from_slice(text.as_bytes());
    }
}

fn encode_integer(out: &mut Vec<u8>, flags: u8, prefix: u32, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        // Below the mask, so it fits the prefix bits.
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine_api::tests::hex;

    fn text(fields: &[Field]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.clone()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// RFC 7541 C.1: integers.
    #[test]
    fn integers_of_the_rfc() {
        let mut out = Vec::new();
        encode_integer(&mut out, 0, 5, 10);
        assert_eq!(out, [0x0a]);
        let mut out = Vec::new();
        encode_integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        let mut input: &[u8] = &[0x1f, 0x9a, 0x0a];
        assert_eq!(integer(&mut input, 5).unwrap(), 1337);
        assert!(input.is_empty());
        let mut input: &[u8] = &[0x2a];
        assert_eq!(integer(&mut input, 8).unwrap(), 42);
        let mut input: &[u8] = &[0x1f, 0x9a];
        assert_eq!(integer(&mut input, 5), Err(HpackError::Truncated));
        let mut input: &[u8] = &[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(integer(&mut input, 5), Err(HpackError::IntegerOverflow));
    }

    /// RFC 7541 C.5 and C.6: three responses on one connection with a
    /// 256-byte table, so entries are evicted, plain then Huffman-coded.
    #[test]
    fn responses_of_the_rfc_with_eviction() {
        let first = [
            (":status", "302"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com"),
        ];
        let second = [
            (":status", "307"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com"),
        ];
        let third = [
            (":status", "200"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ("location", "https://www.example.com"),
            ("content-encoding", "gzip"),
            (
                "set-cookie",
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
            ),
        ];
        let plain = [
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
        ];
        let huffman = [
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ];
        for blocks in [plain, huffman] {
            let mut decoder = Decoder::new(256);
            for (block, expected) in blocks.iter().zip([&first[..], &second, &third]) {
                let fields = decoder.decode(&hex(block)).unwrap();
                assert_eq!(text(&fields), pairs(expected), "{block}");
            }
            // After the third: the table holds exactly what C.5.3 lists.
            assert_eq!(decoder.size, 215);
            assert_eq!(decoder.dynamic.len(), 3);
        }
    }

    #[test]
    fn table_updates_bad_indexes_and_never_indexed() {
        let mut decoder = Decoder::new(4096);
        // A size update to 0 then the static :status 200.
        assert_eq!(
            text(&decoder.decode(&[0x20, 0x88]).unwrap()),
            pairs(&[(":status", "200")])
        );
        assert_eq!(
            decoder.decode(&[0x3f, 0xe2, 0x1f]),
            Err(HpackError::TableTooLarge {
                size: 4096 + 1,
                limit: 4096
            })
        );
        assert_eq!(
            decoder.decode(&[0xbe]),
            Err(HpackError::BadIndex {
                index: 62,
                entries: 61
            })
        );
        assert!(matches!(
            decoder.decode(&[0x80]),
            Err(HpackError::BadIndex { index: 0, .. })
        ));
        // C.2.3: never indexed, new name; nothing enters the table.
        let block = hex("1008 7061 7373 776f 7264 0673 6563 7265 74");
        assert_eq!(
            text(&decoder.decode(&block).unwrap()),
            pairs(&[("password", "secret")])
        );
        assert!(decoder.dynamic.is_empty());
        assert_eq!(
            decoder.decode(&[0x44, 0x05, b'/', b'a']),
            Err(HpackError::Truncated)
        );
    }

    /// What we send decodes to what we meant.
    #[test]
    fn our_literals_decode() {
        let mut block = Vec::new();
        encode_literal(&mut block, ":path", "/runtime.v1.RuntimeService/Version");
        let long = "x".repeat(300);
        encode_literal(&mut block, "long", &long);
        let fields = Decoder::new(4096).decode(&block).unwrap();
        assert_eq!(
            text(&fields),
            pairs(&[
                (":path", "/runtime.v1.RuntimeService/Version"),
                ("long", &long)
            ])
        );
    }
}
