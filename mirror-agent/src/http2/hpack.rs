//! HPACK decoding (RFC 7541): header blocks into fields, with the direction's dynamic table.
//!
//! Written here, around `httlib-huffman`'s table-driven Huffman decoder, because no HPACK crate
//! does the job well enough: `loona-hpack` (the maintained fork of `hpack`) rebuilds its Huffman
//! code table as nested hash maps for every Huffman-coded string and decodes bit by bit through
//! them (measured under `cargo xtask bench h2`: that and its hashing took 46% of the agent's
//! CPU, about 20 us per stream); `httlib-hpack` indexes an empty slice when a block ends inside
//! a literal (a panic on bad input); the `h2` crate keeps its codec private. What is left is
//! small and fully specified: integers (5.1), string literals (5.2), the static table
//! (Appendix A), the dynamic table with its size and eviction (4), and the four field
//! representations (6). Every error is a value, never a panic; memory is bounded by the table
//! size the caller allows. Checked against `loona-hpack` as an independent oracle and fuzzed
//! through `http2_client`.

use std::collections::VecDeque;

use bytes::Bytes;

/// The table size both ends start with (RFC 9113 6.5.2, SETTINGS_HEADER_TABLE_SIZE).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Why a header block could not be decoded. After any of these the connection's table is
/// out of step with the encoder's, so the caller stops decoding the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpackError {
    /// The block ended inside a representation.
    Truncated,
    /// An integer over 2^32 (no real block needs one).
    IntegerOverflow,
    /// Index 0, or past the static and dynamic tables.
    BadIndex,
    /// A Huffman string that is not a valid code (bad padding, EOS inside).
    BadHuffman,
    /// A table size update above the allowed maximum, or after the block's first field.
    BadSizeUpdate,
}

/// One direction's HPACK decoding state.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: index 62 is `table[0]`.
    table: VecDeque<(Bytes, Bytes)>,
    /// Sum of the entries' sizes (name + value + 32 each).
    size: usize,
    /// The encoder's current maximum (changed by size updates).
    capacity: usize,
    /// What the encoder may raise it to (our SETTINGS_HEADER_TABLE_SIZE, as the caller allows).
    max_allowed: usize,
    scratch: Vec<u8>,
}

impl Decoder {
    /// A decoder whose table starts at the default size and may be raised to `max_allowed`.
    pub fn new(max_allowed: usize) -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            capacity: DEFAULT_TABLE_SIZE.min(max_allowed),
            max_allowed,
            scratch: Vec::new(),
        }
    }

    /// Decodes one complete header block, appending its fields in order to `out`.
    pub fn decode(
        &mut self,
        mut block: &[u8],
        out: &mut Vec<(Bytes, Bytes)>,
    ) -> Result<(), HpackError> {
        let mut fields = 0usize;
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                // 6.1: indexed field.
                let index = integer(&mut block, 7)?;
                out.push(self.get(index)?);
            } else if first & 0xc0 == 0x40 {
                // 6.2.1: literal with incremental indexing.
                let field = self.literal(&mut block, 6)?;
                self.insert(field.clone());
                out.push(field);
            } else if first & 0xe0 == 0x20 {
                // 6.3: dynamic table size update, only before the block's first field (4.2).
                if fields > 0 {
                    return Err(HpackError::BadSizeUpdate);
                }
                let size = integer(&mut block, 5)?;
                if size > self.max_allowed {
                    return Err(HpackError::BadSizeUpdate);
                }
                self.capacity = size;
                self.evict(0);
                continue;
            } else {
                // 6.2.2 and 6.2.3: literal without indexing, or never indexed.
                out.push(self.literal(&mut block, 4)?);
            }
            fields += 1;
        }
        Ok(())
    }

    /// Entries and their total size (tests).
    #[cfg(test)]
    fn table_size(&self) -> (usize, usize) {
        (self.table.len(), self.size)
    }

    fn get(&self, index: usize) -> Result<(Bytes, Bytes), HpackError> {
        match index {
            0 => Err(HpackError::BadIndex),
            1..=STATIC_LEN => {
                let (n, v) = STATIC[index - 1];
                Ok((
                    Bytes::from_static(n.as_bytes()),
                    Bytes::from_static(v.as_bytes()),
                ))
            }
            _ => self
                .table
                .get(index - STATIC_LEN - 1)
                .cloned()
                .ok_or(HpackError::BadIndex),
        }
    }

    /// A literal field whose name index has a `prefix`-bit prefix (0: the name follows).
    fn literal(&mut self, block: &mut &[u8], prefix: u8) -> Result<(Bytes, Bytes), HpackError> {
        let index = integer(block, prefix)?;
        let name = if index == 0 {
            self.string(block)?
        } else {
            self.get(index)?.0
        };
        let value = self.string(block)?;
        Ok((name, value))
    }

    /// 5.2: a string literal, Huffman-coded or not.
    fn string(&mut self, block: &mut &[u8]) -> Result<Bytes, HpackError> {
        let huffman = block.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = integer(block, 7)?;
        if len > block.len() {
            return Err(HpackError::Truncated);
        }
        let (raw, rest) = block.split_at(len);
        *block = rest;
        if !huffman {
            return Ok(Bytes::copy_from_slice(raw));
        }
        self.scratch.clear();
        httlib_huffman::decode(
            raw,
            &mut self.scratch,
            httlib_huffman::DecoderSpeed::FourBits,
        )
        .map_err(|_| HpackError::BadHuffman)?;
        Ok(Bytes::copy_from_slice(&self.scratch))
    }

    /// 4.4: a new entry goes in front, after evicting what it needs; one larger than the
    /// table empties it and is not kept.
    fn insert(&mut self, (name, value): (Bytes, Bytes)) {
        let size = name.len() + value.len() + 32;
        if size > self.capacity {
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front((name, value));
    }

    /// Evicts the oldest entries until `room` more fits within the capacity.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.capacity {
            let Some((n, v)) = self.table.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + 32;
        }
    }
}

/// 5.1: an integer with an `n`-bit prefix, at most 2^32.
fn integer(block: &mut &[u8], n: u8) -> Result<usize, HpackError> {
    let (&first, mut rest) = block.split_first().ok_or(HpackError::Truncated)?;
    let mask = (1u16 << n) as u8 - 1;
    let mut value = u64::from(first & mask);
    if value == u64::from(mask) {
        let mut shift = 0u32;
        loop {
            let (&b, r) = rest.split_first().ok_or(HpackError::Truncated)?;
            rest = r;
            value += u64::from(b & 0x7f) << shift;
            shift += 7;
            if value > u64::from(u32::MAX) || shift > 35 {
                return Err(HpackError::IntegerOverflow);
            }
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    *block = rest;
    Ok(value as usize)
}

const STATIC_LEN: usize = 61;

/// Appendix A.
static STATIC: [(&str, &str); STATIC_LEN] = [
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn texts(fields: &[(Bytes, Bytes)]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    /// What loona-hpack's decoder (an independent implementation) makes of the same blocks.
    fn oracle(blocks: &[Vec<u8>]) -> Vec<Vec<(String, String)>> {
        let mut d = loona_hpack::Decoder::new();
        blocks
            .iter()
            .map(|b| {
                d.decode(b)
                    .unwrap()
                    .into_iter()
                    .map(|(n, v)| {
                        (
                            String::from_utf8_lossy(&n).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    fn ours(blocks: &[Vec<u8>]) -> (Vec<Vec<(String, String)>>, Decoder) {
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        let got = blocks
            .iter()
            .map(|b| {
                let mut out = Vec::new();
                d.decode(b, &mut out).unwrap();
                texts(&out)
            })
            .collect();
        (got, d)
    }

    /// RFC 7541 C.4: three requests on one connection, Huffman-coded, sharing the table.
    #[test]
    fn rfc_7541_c4_requests_with_huffman() {
        let blocks = [
            hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
            hex("8286 84be 5886 a8eb 1064 9cbf"),
            hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 8925 a849 e95b b8e8 b4bf"),
        ];
        let (got, d) = ours(&blocks);
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            got[0],
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(
            got[1],
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(
            got[2],
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        // C.4.3's table: three entries, 164 octets.
        assert_eq!(d.table_size(), (3, 164));
        assert_eq!(got, oracle(&blocks));
    }

    /// Blocks from loona-hpack's encoder (indexing everything it can) decode as loona's
    /// decoder decodes them, through evictions in a small table.
    #[test]
    fn agrees_with_loona_through_indexing_and_eviction() {
        let mut enc = loona_hpack::Encoder::new();
        let mut blocks = Vec::new();
        for i in 0..200 {
            let path = format!("/items/{i}?q={}", "x".repeat(i % 50));
            let agent = format!("client/{}", i % 7);
            blocks.push(enc.encode([
                (&b":method"[..], &b"POST"[..]),
                (b":path", path.as_bytes()),
                (b"user-agent", agent.as_bytes()),
                (b"x-big", "v".repeat(i * 13 % 3000).as_bytes()),
            ]));
        }
        let (got, _) = ours(&blocks);
        assert_eq!(got, oracle(&blocks));
    }

    #[test]
    fn bad_blocks_are_errors_never_panics() {
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        let mut out = Vec::new();
        for (block, want) in [
            (hex("80"), HpackError::BadIndex),
            (hex("be"), HpackError::BadIndex),
            (hex("40"), HpackError::Truncated),
            (hex("4085"), HpackError::Truncated),
            (hex("7f"), HpackError::Truncated),
            (hex("ffffffffff7f"), HpackError::IntegerOverflow),
            (hex("3fe1ff03"), HpackError::BadSizeUpdate),
            (hex("8220"), HpackError::BadSizeUpdate),
            // Huffman: all-ones padding longer than 7 bits.
            (hex("0081ff 00"), HpackError::BadHuffman),
        ] {
            assert_eq!(d.decode(&block, &mut out), Err(want), "{block:02x?}");
        }
        // A size update to 0 empties the table; a field larger than the table is not kept.
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        d.decode(&hex("400161 0162"), &mut out).unwrap();
        assert_eq!(d.table_size(), (1, 34));
        d.decode(&hex("20"), &mut out).unwrap();
        assert_eq!(d.table_size(), (0, 0));
        d.decode(&hex("3f01 400161 0162"), &mut out).unwrap();
        assert_eq!(d.table_size(), (0, 0), "an entry of 34 in a table of 32");
    }
}
