//! The record format of log segments: what one durable write looks like on
//! disk and how a segment's bytes are scanned back into records.
//!
//! A record is `[body length: u32 LE][CRC32 of body: u32 LE][CRC32 of the
//! previous 8 bytes: u32 LE][body]`, where the body is one kind byte followed
//! by the payload. raft's own types (entries,
//! hard state, conf state, snapshot metadata) are encoded with raft-rs's
//! rust-protobuf codec, so the bytes are exactly what raft-rs defines.
//!
//! This module knows nothing of files, segments or what a record means to the
//! log; it only turns records into bytes and bytes into records, and reports
//! where and how a byte range stops being valid.

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

/// Bytes of the header before every record body: length, CRC32 of the body,
/// and CRC32 of those eight bytes (so a damaged length is recognised as
/// damage, not believed).
pub(crate) const RECORD_HEADER_BYTES: usize = 12;

/// The unit a disk persists atomically. A crash can leave whole sectors of
/// an unsynced write as zeros; see [`has_zero_sector`].
const SECTOR_BYTES: usize = 512;

/// Largest record body accepted on write and on read. It bounds the memory a
/// (possibly garbage) length prefix can make replay allocate, and it is far
/// above one raft Ready's entries in practice (the store bounds requests to a
/// few MiB); an append bigger than this is split over several records.
pub(crate) const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;

const KIND_ENTRIES: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_HARD_STATE: u8 = 3;
const KIND_CONF_STATE: u8 = 4;
const KIND_SNAPSHOT: u8 = 5;

/// One durable change to the log's state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// Consecutive entries; the first may overwrite (truncate) a suffix.
    Entries(Vec<Entry>),
    /// Entries at `from_index` and above are gone (a conflicting suffix).
    Truncate {
        from_index: u64,
    },
    HardState(HardState),
    ConfState(ConfState),
    /// A snapshot now covers the log up to `metadata.index`. `restore` is true
    /// for a snapshot received from the leader, which replaces the whole log
    /// and the membership; false for the member's own compaction.
    Snapshot {
        metadata: SnapshotMetadata,
        restore: bool,
    },
}

/// Where and why a scanned byte range stopped being a valid record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Damage {
    /// Byte offset of the first invalid record.
    pub offset: usize,
    /// True when nothing valid can follow the damage: the record runs past
    /// the end, or everything after it is zero. That is what a crash in the
    /// middle of an unsynced write leaves behind.
    pub reaches_end: bool,
    pub reason: String,
}

/// The result of scanning one segment's bytes.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Valid records with their byte offsets, in order.
    pub records: Vec<(usize, Record)>,
    /// Length of the valid prefix.
    pub valid_len: usize,
    pub damage: Option<Damage>,
}

/// Appends the encoded `record` to `out`.
pub(crate) fn encode(record: &Record, out: &mut Vec<u8>) -> crate::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    encode_body(record, out)?;
    let body = &out[start + RECORD_HEADER_BYTES..];
    if body.len() > RECORD_BYTES_MAX {
        let size = body.len();
        out.truncate(start);
        return Err(crate::Error::TooLarge {
            what: "log record",
            size,
            limit: RECORD_BYTES_MAX,
        });
    }
    let length = u32::try_from(body.len()).expect("invariant: body is under RECORD_BYTES_MAX");
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc32fast::hash(&out[start..start + 8]);
    out[start + 8..start + 12].copy_from_slice(&header_crc.to_le_bytes());
    Ok(())
}

/// The encoded size of one entry inside an entries record.
pub(crate) fn entry_encoded_bytes(entry: &Entry) -> usize {
    4 + entry.compute_size() as usize
}

fn encode_body(record: &Record, out: &mut Vec<u8>) -> crate::Result<()> {
    match record {
        Record::Entries(entries) => {
            out.push(KIND_ENTRIES);
            for entry in entries {
                let length = entry.compute_size();
                out.extend_from_slice(&length.to_le_bytes());
                write_proto(entry, out)?;
            }
        }
        Record::Truncate { from_index } => {
            out.push(KIND_TRUNCATE);
            out.extend_from_slice(&from_index.to_le_bytes());
        }
        Record::HardState(hard_state) => {
            out.push(KIND_HARD_STATE);
            write_proto(hard_state, out)?;
        }
        Record::ConfState(conf_state) => {
            out.push(KIND_CONF_STATE);
            write_proto(conf_state, out)?;
        }
        Record::Snapshot { metadata, restore } => {
            out.push(KIND_SNAPSHOT);
            out.push(u8::from(*restore));
            write_proto(metadata, out)?;
        }
    }
    Ok(())
}

fn write_proto(message: &impl protobuf::Message, out: &mut Vec<u8>) -> crate::Result<()> {
    message
        .write_to_vec(out)
        .map_err(|e| crate::Error::Corrupt(format!("encoding a log record: {e}")))
}

/// Scans `bytes` (a whole segment) into records, stopping at the first
/// invalid one.
pub(crate) fn scan(bytes: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut offset = 0;
    while offset < bytes.len() {
        match read_one(bytes, offset) {
            Ok((record, next)) => {
                scan.records.push((offset, record));
                offset = next;
            }
            Err(damage) => {
                scan.damage = Some(damage);
                break;
            }
        }
    }
    scan.valid_len = offset;
    scan
}

fn read_one(bytes: &[u8], offset: usize) -> Result<(Record, usize), Damage> {
    let rest = &bytes[offset..];
    let zeros_after = |from: usize| {
        rest.get(from..)
            .is_none_or(|tail| tail.iter().all(|&b| b == 0))
    };
    let damage = |reaches_end: bool, reason: &str| Damage {
        offset,
        reaches_end,
        reason: reason.to_string(),
    };
    if rest.len() < RECORD_HEADER_BYTES {
        return Err(damage(true, "record header cut short"));
    }
    let word =
        |at: usize| u32::from_le_bytes(rest[at..at + 4].try_into().expect("invariant: 4 bytes"));
    if crc32fast::hash(&rest[..8]) != word(8) {
        // A header that fails its own check is torn only if nothing but
        // zeros follows; otherwise a flipped length could make replay throw
        // away synced records behind it.
        return Err(damage(zeros_after(0), "record header check mismatch"));
    }
    let length = word(0) as usize;
    if length == 0 || length > RECORD_BYTES_MAX {
        return Err(damage(false, &format!("record length {length} is invalid")));
    }
    let end = RECORD_HEADER_BYTES + length;
    if end > rest.len() {
        // The header is intact, so the length is real: the body's write
        // did not finish.
        return Err(damage(true, "record runs past the end of the segment"));
    }
    let body = &rest[RECORD_HEADER_BYTES..end];
    if crc32fast::hash(body) != word(4) {
        let torn = end == rest.len() || zeros_after(end) || has_zero_sector(bytes, offset, end);
        return Err(damage(torn, "record CRC mismatch"));
    }
    // A record whose CRC matches but does not decode was written wrongly;
    // that is never a torn write, so it is never treated as one.
    let record = decode_body(body).map_err(|reason| damage(false, &reason))?;
    Ok((record, offset + end))
}

/// Whether a whole disk sector inside the record (at `offset..offset + end`
/// of `bytes`) is zero: a crash that persisted the file's size but not all of
/// its pages leaves exactly that, while bit rot flips bits in place.
fn has_zero_sector(bytes: &[u8], offset: usize, end: usize) -> bool {
    let record_end = offset + end;
    let mut start = offset.div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
    while start + SECTOR_BYTES <= record_end {
        if bytes[start..start + SECTOR_BYTES].iter().all(|&b| b == 0) {
            return true;
        }
        start += SECTOR_BYTES;
    }
    false
}

fn decode_body(body: &[u8]) -> Result<Record, String> {
    let (&kind, payload) = body.split_first().ok_or("empty record body")?;
    match kind {
        KIND_ENTRIES => decode_entries(payload).map(Record::Entries),
        KIND_TRUNCATE => {
            let bytes: [u8; 8] = payload
                .try_into()
                .map_err(|_| "truncate record is not 8 bytes")?;
            Ok(Record::Truncate {
                from_index: u64::from_le_bytes(bytes),
            })
        }
        KIND_HARD_STATE => parse_proto(payload).map(Record::HardState),
        KIND_CONF_STATE => parse_proto(payload).map(Record::ConfState),
        KIND_SNAPSHOT => {
            let (&restore, metadata) = payload.split_first().ok_or("empty snapshot record")?;
            Ok(Record::Snapshot {
                metadata: parse_proto(metadata)?,
                restore: restore != 0,
            })
        }
        other => Err(format!("unknown record kind {other}")),
    }
}

fn decode_entries(mut payload: &[u8]) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    while !payload.is_empty() {
        if payload.len() < 4 {
            return Err("entry length cut short".into());
        }
        let (length, rest) = payload.split_at(4);
        let length = u32::from_le_bytes(length.try_into().expect("invariant: 4 bytes")) as usize;
        if length > rest.len() {
            return Err(format!("entry of {length} bytes runs past its record"));
        }
        let (entry, rest) = rest.split_at(length);
        entries.push(parse_proto(entry)?);
        payload = rest;
    }
    Ok(entries)
}

fn parse_proto<M: protobuf::Message>(bytes: &[u8]) -> Result<M, String> {
    M::parse_from_bytes(bytes)
        .map_err(|e| format!("undecodable {}: {e}", std::any::type_name::<M>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn encoded(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for record in records {
            encode(record, &mut out).expect("encode");
        }
        out
    }

    #[test]
    fn records_round_trip() {
        let hard_state = HardState {
            term: 3,
            commit: 7,
            ..Default::default()
        };
        let mut metadata = SnapshotMetadata {
            index: 5,
            term: 2,
            ..Default::default()
        };
        metadata.mut_conf_state().voters = vec![1, 2, 3];
        let records = vec![
            Record::Entries(vec![entry(1, 1, b"a"), entry(2, 1, b"")]),
            Record::Truncate { from_index: 2 },
            Record::HardState(hard_state),
            Record::ConfState(metadata.get_conf_state().clone()),
            Record::Snapshot {
                metadata,
                restore: true,
            },
        ];
        let bytes = encoded(&records);
        let scan = scan(&bytes);
        assert_eq!(scan.damage, None);
        assert_eq!(scan.valid_len, bytes.len());
        let decoded: Vec<Record> = scan.records.into_iter().map(|(_, r)| r).collect();
        assert_eq!(decoded, records);
    }

    #[test]
    fn cut_record_reaches_end_and_flipped_byte_does_not() {
        let bytes = encoded(&[
            Record::Truncate { from_index: 1 },
            Record::Truncate { from_index: 2 },
        ]);
        let cut = scan(&bytes[..bytes.len() - 3]);
        assert_eq!(cut.records.len(), 1);
        assert!(cut.damage.as_ref().expect("damage").reaches_end);

        let mut flipped = bytes.clone();
        flipped[RECORD_HEADER_BYTES + 2] ^= 0xff;
        let flipped = scan(&flipped);
        assert!(flipped.records.is_empty());
        let damage = flipped.damage.expect("damage");
        assert_eq!(damage.offset, 0);
        assert!(!damage.reaches_end);
    }

    #[test]
    fn zeroed_tail_is_torn_but_a_flipped_length_is_not() {
        let mut bytes = encoded(&[Record::Truncate { from_index: 1 }]);
        let valid = bytes.len();
        bytes.extend_from_slice(&[0; 700]);
        let zeroed = scan(&bytes);
        assert_eq!(zeroed.valid_len, valid);
        assert!(zeroed.damage.expect("damage").reaches_end);

        let mut bytes = encoded(&[
            Record::Truncate { from_index: 1 },
            Record::Truncate { from_index: 2 },
        ]);
        // Claiming a longer body would make the record run past the end;
        // the header check must catch it instead of cutting the log there.
        bytes[0] ^= 0x40;
        let flipped = scan(&bytes);
        let damage = flipped.damage.expect("damage");
        assert_eq!(damage.offset, 0);
        assert!(!damage.reaches_end, "{damage:?}");
    }

    #[test]
    fn a_zero_sector_inside_a_record_marks_a_torn_write() {
        let big = Record::Entries(vec![entry(1, 1, &[7; 2000])]);
        let mut bytes = encoded(&[big, Record::Truncate { from_index: 1 }]);
        bytes[512..1024].fill(0);
        let damage = scan(&bytes).damage.expect("damage");
        assert!(damage.reaches_end, "{damage:?}");
        let mut bytes = encoded(&[
            Record::Entries(vec![entry(1, 1, &[7; 2000])]),
            Record::Truncate { from_index: 1 },
        ]);
        bytes[700] ^= 1;
        assert!(!scan(&bytes).damage.expect("damage").reaches_end);
    }
}
