//! Reading and writing glibc's `/etc/ld.so.cache`.
//!
//! This module owns the on-disk format of the dynamic loader's cache: it
//! parses the cache of a driver root (to find the NVIDIA libraries the way
//! `ld.so` would) and writes caches that glibc's `ld.so` and `ldconfig -p`
//! accept (to make injected libraries visible inside a container).
//!
//! # Format (glibc `sysdeps/generic/dl-cache.h`)
//!
//! Two layouts exist, and a file may hold both:
//!
//! * the old libc5 layout: magic `"ld.so-1.7.0"`, a `u32` entry count at
//!   offset 12, then 12-byte entries `{i32 flags, u32 key, u32 value}` whose
//!   string offsets are relative to the end of that entry table;
//! * the new layout (glibc >= 2.2): a 48-byte header with magic
//!   `"glibc-ld.so.cache"` + version `"1.1"`, `u32 nlibs`, `u32 len_strings`,
//!   a flags byte (endianness), an extension-directory offset, then 24-byte
//!   entries `{i32 flags, u32 key, u32 value, u32 osversion, u64 hwcap}`
//!   whose string offsets are relative to the start of that header, then the
//!   string table of NUL-terminated strings.
//!
//! `ldconfig -c compat` hides the new layout inside the old one's string
//! table, 8-byte aligned after the old entries; `ld.so` and `ldconfig -p` then
//! use the new one, and so does [`LdCache::parse`].
//!
//! # Order
//!
//! `ld.so` finds a soname by binary search (`search_cache` in
//! `elf/dl-cache.c`), so a written cache must be sorted exactly as
//! `ldconfig` sorts it (`compare` in `elf/cache.c`): by key in *descending*
//! `_dl_cache_libcmp` order, then flags descending, then
//! glibc-hwcaps extension entries first, then most specific hwcap first.
//! [`LdCache::to_bytes`] does that.
//!
//! Only little-endian caches are handled: this runtime targets x86-64 (and
//! reads i386 entries from the same file).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

/// The low byte of an entry's flags is the library type, the next byte the
/// architecture (0 = the host's default ABI, which on x86 hosts is i386);
/// glibc's `ldconfig.h` and `dl-cache.h`.
pub const FLAG_TYPE_MASK: i32 = 0x00ff;
pub const FLAG_ARCH_MASK: i32 = 0xff00;
/// `FLAG_ELF`: an ELF library that links no libc.
pub const FLAG_ELF: i32 = 0x0001;
/// `FLAG_ELF_LIBC6`: 3 means "ELF linked against glibc (libc6)".
pub const FLAG_ELF_LIBC6: i32 = 0x0003;
/// `FLAG_X8664_LIB64`: the high byte is the required ABI; 3 is x86-64.
pub const FLAG_X8664_LIB64: i32 = 0x0300;
/// Flags of an x86-64 glibc library, printed `(libc6,x86-64)` by `ldconfig -p`.
pub const FLAGS_X86_64_LIBC6: i32 = FLAG_ELF_LIBC6 | FLAG_X8664_LIB64;
/// Flags of an i386 glibc library, printed `(libc6)` by `ldconfig -p`.
pub const FLAGS_I386_LIBC6: i32 = FLAG_ELF_LIBC6;
/// Bit 62 of `hwcap`: the entry lives in a `glibc-hwcaps/<name>` subdirectory
/// and its low 32 bits index the name table of the cache's extension section
/// (`DL_CACHE_HWCAP_EXTENSION`, glibc >= 2.33).
pub const HWCAP_EXTENSION: u64 = 1 << 62;

const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
/// `sizeof (struct cache_file)`: 11 magic bytes, 1 padding byte, `u32 nlibs`.
const OLD_HEADER_LEN: usize = 16;
const OLD_ENTRY_LEN: usize = 12;

const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
/// `sizeof (struct cache_file_new)`.
const NEW_HEADER_LEN: usize = 48;
const NEW_ENTRY_LEN: usize = 24;
/// `__alignof__ (struct cache_file_new)` on x86-64 (it holds a `u64`); the
/// `ALIGN_CACHE` used to place a new block after old entries.
const NEW_ALIGN: usize = 8;

/// Offsets of the new header's fields.
const NEW_NLIBS: usize = 20;
const NEW_LEN_STRINGS: usize = 24;
const NEW_FLAGS: usize = 28;
const NEW_EXTENSION_OFFSET: usize = 32;

/// `cache_file_new.flags & cache_file_new_flags_endian_mask`.
const ENDIAN_MASK: u8 = 3;
const ENDIAN_UNSET: u8 = 0;
const ENDIAN_LITTLE: u8 = 2;
/// Size of the extension directory header (`u32 magic`, `u32 count`).
const EXTENSION_HEADER_LEN: usize = 8;

/// One library in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// Type and ABI, e.g. [`FLAGS_X86_64_LIBC6`] or [`FLAGS_I386_LIBC6`].
    pub flags: i32,
    /// The soname, e.g. `libcuda.so.1`.
    pub key: String,
    /// The path `ld.so` opens, e.g. `/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15`.
    pub value: String,
    /// Minimum kernel version from the ELF ABI note; 0 (none) in current caches.
    pub os_version: u32,
    /// Legacy hwcap subdirectory bits, or [`HWCAP_EXTENSION`] | index for
    /// glibc-hwcaps entries; 0 for ordinary libraries.
    pub hwcap: u64,
}

/// The entries of an `ld.so.cache`, in file order after [`LdCache::parse`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LdCache {
    pub entries: Vec<CacheEntry>,
}

/// Why bytes are not a usable `ld.so.cache`. Offsets are byte offsets in the
/// file; callers add the path.
#[derive(Debug, thiserror::Error)]
pub enum LdCacheError {
    /// Neither the old nor the new magic at the start.
    #[error(
        "ld.so.cache has no known magic at offset {offset}: expected \"ld.so-1.7.0\" or \"glibc-ld.so.cache1.1\""
    )]
    BadMagic { offset: usize },
    /// A header or the string table runs past the end of the file.
    #[error("ld.so.cache is truncated: {what} at offset {offset} needs {needed} bytes but only {available} remain")]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    /// The entry count needs more bytes than the file has (also what a
    /// cut-off file looks like).
    #[error("ld.so.cache is truncated: the header at offset {offset} claims {nlibs} entries ({needed} bytes) but only {available} bytes follow it")]
    TooManyEntries {
        offset: usize,
        nlibs: u32,
        needed: u64,
        available: usize,
    },
    /// A key or value offset points past the end of the file.
    #[error("ld.so.cache entry {index} has a {field} string offset {string_offset} pointing outside the file (at file offset {offset}, file size {file_len})")]
    StringOutOfRange {
        index: usize,
        field: &'static str,
        string_offset: u32,
        offset: u64,
        file_len: usize,
    },
    /// A string runs to the end of the file without a NUL.
    #[error("ld.so.cache entry {index} has a {field} string at offset {offset} without a terminating NUL")]
    UnterminatedString {
        index: usize,
        field: &'static str,
        offset: u64,
    },
    /// A big-endian (or "invalid") cache, which `ld.so` on x86-64 rejects too.
    #[error("ld.so.cache header at offset {offset} has endianness flags {flags:#04x}; only little-endian caches are supported")]
    UnsupportedEndian { offset: usize, flags: u8 },
}

impl LdCache {
    /// Parses a whole `ld.so.cache` file.
    ///
    /// Accepts the new layout alone, the old layout followed by a new block
    /// (the old one is skipped, as `ld.so` does) and the old layout alone.
    /// Like `ld.so`'s `_dl_cache_verify_ptr`, string offsets only need to lie
    /// inside the file; every string must be NUL-terminated. An extension
    /// section (glibc >= 2.33) is not interpreted.
    ///
    /// Entries whose key or path is not UTF-8 are skipped rather than failing
    /// the whole cache: they cannot be NVIDIA libraries, and one odd file in a
    /// driver root should not stop a container from starting.
    ///
    /// Never panics: every offset and count read from `bytes` is checked.
    pub fn parse(bytes: &[u8]) -> Result<LdCache, LdCacheError> {
        if bytes.starts_with(OLD_MAGIC) {
            Self::parse_old_or_compat(bytes)
        } else if bytes.starts_with(NEW_MAGIC) {
            Self::parse_new(bytes, 0)
        } else if bytes.len() < OLD_HEADER_LEN {
            Err(LdCacheError::Truncated {
                what: "cache header",
                offset: 0,
                needed: OLD_HEADER_LEN,
                available: bytes.len(),
            })
        } else {
            Err(LdCacheError::BadMagic { offset: 0 })
        }
    }

    /// Old layout, possibly with a new block hidden in its string table
    /// (`print_cache` in `elf/cache.c`).
    fn parse_old_or_compat(bytes: &[u8]) -> Result<LdCache, LdCacheError> {
        let header = get(bytes, 0, OLD_HEADER_LEN, "old cache header")?;
        let nlibs = le_u32(header, OLD_MAGIC.len() + 1);
        let table_len = table_len(nlibs, OLD_ENTRY_LEN);
        let available = bytes.len() - OLD_HEADER_LEN;
        if table_len > available as u64 {
            return Err(LdCacheError::TooManyEntries {
                offset: 0,
                nlibs,
                needed: table_len,
                available,
            });
        }
        // Fits in usize: it is at most bytes.len().
        let strings_start = OLD_HEADER_LEN + table_len as usize;
        let new_start = strings_start.next_multiple_of(NEW_ALIGN);
        if bytes
            .get(new_start..)
            .is_some_and(|rest| rest.starts_with(NEW_MAGIC))
        {
            return Self::parse_new(bytes, new_start);
        }

        let table = &bytes[OLD_HEADER_LEN..strings_start];
        let strings = &bytes[strings_start..];
        let mut entries = Vec::with_capacity(nlibs as usize);
        for (index, raw) in table.chunks_exact(OLD_ENTRY_LEN).enumerate() {
            let at = |field| strings_start as u64 + u64::from(le_u32(raw, field));
            let key = c_str(strings, le_u32(raw, 4), index, "key", at(4), bytes.len())?;
            let value = c_str(strings, le_u32(raw, 8), index, "value", at(8), bytes.len())?;
            if let (Some(key), Some(value)) = (key, value) {
                entries.push(CacheEntry {
                    flags: le_i32(raw, 0),
                    key: key.to_owned(),
                    value: value.to_owned(),
                    os_version: 0,
                    hwcap: 0,
                });
            }
        }
        Ok(LdCache { entries })
    }

    /// New layout whose header starts at `base`.
    fn parse_new(bytes: &[u8], base: usize) -> Result<LdCache, LdCacheError> {
        let header = get(bytes, base, NEW_HEADER_LEN, "cache header")?;
        let endian = header[NEW_FLAGS] & ENDIAN_MASK;
        // ld.so rejects a cache whose endianness differs from its own
        // (`cache_file_new_matches_endian`); "unset" comes from ldconfig
        // before glibc 2.32 and means native.
        if endian != ENDIAN_UNSET && endian != ENDIAN_LITTLE {
            return Err(LdCacheError::UnsupportedEndian {
                offset: base + NEW_FLAGS,
                flags: header[NEW_FLAGS],
            });
        }
        let nlibs = le_u32(header, NEW_NLIBS);
        let table_start = base + NEW_HEADER_LEN;
        let available = bytes.len() - table_start;
        let table_len = table_len(nlibs, NEW_ENTRY_LEN);
        if table_len > available as u64 {
            return Err(LdCacheError::TooManyEntries {
                offset: base,
                nlibs,
                needed: table_len,
                available,
            });
        }
        let strings_start = table_start + table_len as usize;
        // ld.so does not look at len_strings, but ldconfig always writes it:
        // a file shorter than that was cut off (e.g. by a partial copy).
        let len_strings = le_u32(header, NEW_LEN_STRINGS) as usize;
        get(bytes, strings_start, len_strings, "string table")?;
        let extension_offset = le_u32(header, NEW_EXTENSION_OFFSET) as usize;
        if extension_offset != 0 {
            get(
                bytes,
                extension_offset,
                EXTENSION_HEADER_LEN,
                "extension directory",
            )?;
        }

        let table = &bytes[table_start..strings_start];
        // String offsets are relative to the header, not to the string table.
        let data = &bytes[base..];
        let mut entries = Vec::with_capacity(nlibs as usize);
        for (index, raw) in table.chunks_exact(NEW_ENTRY_LEN).enumerate() {
            let at = |field| base as u64 + u64::from(le_u32(raw, field));
            let key = c_str(data, le_u32(raw, 4), index, "key", at(4), bytes.len())?;
            let value = c_str(data, le_u32(raw, 8), index, "value", at(8), bytes.len())?;
            if let (Some(key), Some(value)) = (key, value) {
                entries.push(CacheEntry {
                    flags: le_i32(raw, 0),
                    key: key.to_owned(),
                    value: value.to_owned(),
                    os_version: le_u32(raw, 12),
                    hwcap: le_u64(raw, 16),
                });
            }
        }
        Ok(LdCache { entries })
    }

    /// Serializes to the new layout alone (what `ldconfig` writes by
    /// default since glibc 2.32), little-endian flag set, no extension
    /// section.
    ///
    /// * Entries are sorted as `ldconfig` sorts them (see the module docs), so
    ///   `ld.so`'s binary search finds every key; ties keep `self.entries`
    ///   order, as `ldconfig`'s insertion sort does.
    /// * Entries with the same key, flags and hwcap are deduplicated: the
    ///   first one in `self.entries` wins. That is the one `ld.so` would have
    ///   used when the entries came from [`LdCache::parse`], since it takes the
    ///   first matching entry in file order.
    /// * Entries whose key or value contains a NUL byte are left out: the
    ///   format cannot represent them.
    /// * glibc-hwcaps entries (hwcap with [`HWCAP_EXTENSION`]) are written,
    ///   ordered by their subdirectory index, but without an extension
    ///   section `ld.so` ignores them (its hwcaps priority table is empty).
    /// * Each distinct string is stored once, and a key that is the tail of
    ///   its own path (`libz.so.1` in `/lib/.../libz.so.1`) points into the
    ///   path, as `ldconfig`'s string table does.
    ///
    /// # Panics
    ///
    /// If the result would exceed 4 GiB, which the format's 32-bit offsets
    /// cannot address (a real cache is a few hundred KiB).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut seen = HashSet::with_capacity(self.entries.len());
        let mut sorted: Vec<&CacheEntry> = self
            .entries
            .iter()
            .filter(|e| !e.key.contains('\0') && !e.value.contains('\0'))
            .filter(|e| seen.insert((e.key.as_str(), e.flags, e.hwcap)))
            .collect();
        sorted.sort_by(|a, b| cache_order(a, b));

        let table_len = sorted.len() * NEW_ENTRY_LEN;
        let strings_start = NEW_HEADER_LEN + table_len;
        let mut strings: Vec<u8> = Vec::new();
        let mut offsets: HashMap<&str, u32> = HashMap::new();
        let to_u32 = |n: usize| {
            // Documented panic: see "# Panics" above.
            u32::try_from(n).expect("ld.so.cache would exceed the 4 GiB its 32-bit offsets address")
        };

        let mut table = Vec::with_capacity(table_len);
        for e in &sorted {
            let value_off = match offsets.get(e.value.as_str()) {
                Some(&off) => off,
                None => {
                    let off = to_u32(strings_start + strings.len());
                    strings.extend_from_slice(e.value.as_bytes());
                    strings.push(0);
                    offsets.insert(&e.value, off);
                    off
                }
            };
            let key_off = match offsets.get(e.key.as_str()) {
                Some(&off) => off,
                None if e.value.ends_with(e.key.as_str()) => {
                    let off = value_off + to_u32(e.value.len() - e.key.len());
                    offsets.insert(&e.key, off);
                    off
                }
                None => {
                    let off = to_u32(strings_start + strings.len());
                    strings.extend_from_slice(e.key.as_bytes());
                    strings.push(0);
                    offsets.insert(&e.key, off);
                    off
                }
            };
            table.extend_from_slice(&e.flags.to_le_bytes());
            table.extend_from_slice(&key_off.to_le_bytes());
            table.extend_from_slice(&value_off.to_le_bytes());
            table.extend_from_slice(&e.os_version.to_le_bytes());
            table.extend_from_slice(&e.hwcap.to_le_bytes());
        }

        let mut out = Vec::with_capacity(strings_start + strings.len());
        out.extend_from_slice(NEW_MAGIC);
        out.extend_from_slice(&to_u32(sorted.len()).to_le_bytes());
        out.extend_from_slice(&to_u32(strings.len()).to_le_bytes());
        out.push(ENDIAN_LITTLE);
        out.resize(NEW_HEADER_LEN, 0); // padding, extension_offset = 0, unused
        out.extend_from_slice(&table);
        out.extend_from_slice(&strings);
        out
    }

    /// [`LdCache::add_or_replace`] for every entry of `new`, in one pass
    /// over the cache: linear in the cache's size plus `new`'s, where a
    /// call per entry is their product (an image's cache has thousands of
    /// entries, a GPU container adds dozens; this runs on every start).
    /// Two entries of `new` with the same key and flags: the last wins.
    pub fn add_or_replace_all(&mut self, new: Vec<CacheEntry>) {
        let mut replacements: HashMap<(i32, String), Option<CacheEntry>> =
            HashMap::with_capacity(new.len());
        let mut order = Vec::with_capacity(new.len());
        for entry in new {
            let key = (entry.flags, entry.key.clone());
            if replacements.insert(key.clone(), Some(entry)).is_none() {
                order.push(key);
            }
        }
        let mut placed: HashSet<(i32, String)> = HashSet::with_capacity(order.len());
        let old = std::mem::take(&mut self.entries);
        self.entries.reserve(old.len() + order.len());
        for entry in old {
            let key = (entry.flags, entry.key.clone());
            match replacements.get_mut(&key) {
                // The first entry of a replaced name takes the new one's
                // place; later ones (hwcap variants, other dirs) go.
                Some(slot) => {
                    if let Some(replacement) = slot.take() {
                        self.entries.push(replacement);
                        placed.insert(key);
                    }
                }
                None => self.entries.push(entry),
            }
        }
        for key in order {
            if placed.contains(&key) {
                continue;
            }
            if let Some(Some(entry)) = replacements.remove(&key) {
                self.entries.push(entry);
            }
        }
    }

    /// Adds `entry`, or replaces the entry with the same key and flags.
    ///
    /// The first such entry takes all of `entry`'s fields and any further
    /// ones (other hwcap variants, duplicates from other directories) are
    /// removed: `ld.so` prefers a matching hwcap variant over a plain entry,
    /// so leaving one behind could shadow the replacement.
    pub fn add_or_replace(&mut self, entry: CacheEntry) {
        let same = |e: &CacheEntry| e.flags == entry.flags && e.key == entry.key;
        match self.entries.iter().position(same) {
            Some(first) => {
                let mut index = 0;
                self.entries.retain(|e| {
                    let keep = index <= first || !same(e);
                    index += 1;
                    keep
                });
                self.entries[first] = entry;
            }
            None => self.entries.push(entry),
        }
    }

    /// The entry for soname `key` with exactly these `flags`, preferring a
    /// plain entry (hwcap 0) over hwcap-subdirectory variants, which may need
    /// CPU features the host lacks; otherwise the first match in order.
    pub fn lookup(&self, key: &str, flags: i32) -> Option<&CacheEntry> {
        let mut first = None;
        for e in self.entries_with_flags(flags).filter(|e| e.key == key) {
            if e.hwcap == 0 {
                return Some(e);
            }
            first = first.or(Some(e));
        }
        first
    }

    /// All entries with exactly these `flags`, in order.
    pub fn entries_with_flags(&self, flags: i32) -> impl Iterator<Item = &CacheEntry> {
        self.entries.iter().filter(move |e| e.flags == flags)
    }
}

/// `ldconfig`'s entry order (`compare` in glibc 2.36 `elf/cache.c`), in
/// which `ld.so`'s binary search expects the file: keys in descending
/// [`libcmp`] order; for equal keys flags descending, glibc-hwcaps extension
/// entries before the others (`search_cache` stops at the first
/// non-extension entry when it looks for them), then more hwcap bits first,
/// then larger hwcap first, then larger osversion first (older glibc).
///
/// glibc orders extension entries by subdirectory name, which lives in the
/// extension section this module does not write; their index is used instead.
fn cache_order(a: &CacheEntry, b: &CacheEntry) -> Ordering {
    let ext = |e: &CacheEntry| e.hwcap & HWCAP_EXTENSION != 0;
    libcmp(b.key.as_bytes(), a.key.as_bytes())
        .then_with(|| b.flags.cmp(&a.flags))
        .then_with(|| ext(b).cmp(&ext(a)))
        .then_with(|| {
            if ext(a) && ext(b) {
                (a.hwcap & 0xffff_ffff).cmp(&(b.hwcap & 0xffff_ffff))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| b.hwcap.count_ones().cmp(&a.hwcap.count_ones()))
        .then_with(|| b.hwcap.cmp(&a.hwcap))
        .then_with(|| b.os_version.cmp(&a.os_version))
}

/// glibc's `_dl_cache_libcmp` (`elf/dl-cache.c`): compares sonames so that
/// runs of digits compare numerically (`libfoo.so.10` > `libfoo.so.9`), a
/// digit sorts after any non-digit (and after the end of the string), and
/// other bytes compare as x86's signed `char`, the end being 0.
///
/// glibc accumulates a digit run in an `int` that wraps on overflow; the
/// same wrapping `i32` is used here so both agree on absurdly long numbers.
/// Comparing the values (instead of returning their difference, as glibc
/// does) keeps this a total order, which `sort_by` needs.
fn libcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    loop {
        let ca = a.get(i).copied().unwrap_or(0);
        let cb = b.get(j).copied().unwrap_or(0);
        if ca == 0 {
            return 0i8.cmp(&(cb as i8));
        }
        match (ca.is_ascii_digit(), cb.is_ascii_digit()) {
            (true, true) => {
                let (va, ni) = digit_run(a, i);
                let (vb, nj) = digit_run(b, j);
                match va.cmp(&vb) {
                    Ordering::Equal => (i, j) = (ni, nj),
                    unequal => return unequal,
                }
            }
            (true, false) => return Ordering::Greater,
            (false, true) => return Ordering::Less,
            (false, false) if ca != cb => return (ca as i8).cmp(&(cb as i8)),
            (false, false) => (i, j) = (i + 1, j + 1),
        }
    }
}

/// The value of the digit run starting at `s[i]` (wrapping like a C `int`)
/// and the index just past it.
fn digit_run(s: &[u8], mut i: usize) -> (i32, usize) {
    let mut value = 0i32;
    while let Some(&c) = s.get(i).filter(|c| c.is_ascii_digit()) {
        value = value.wrapping_mul(10).wrapping_add(i32::from(c - b'0'));
        i += 1;
    }
    (value, i)
}

/// Bytes needed by `nlibs` entries of `entry_len` bytes; `u64` so that a
/// hostile count cannot overflow on any target.
fn table_len(nlibs: u32, entry_len: usize) -> u64 {
    u64::from(nlibs) * entry_len as u64
}

/// `bytes[offset..offset + len]`, or a truncation error naming `what`.
fn get<'a>(
    bytes: &'a [u8],
    offset: usize,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], LdCacheError> {
    offset
        .checked_add(len)
        .and_then(|end| bytes.get(offset..end))
        .ok_or(LdCacheError::Truncated {
            what,
            offset,
            needed: len,
            available: bytes.len().saturating_sub(offset),
        })
}

/// The NUL-terminated string at `data[offset..]`; `Ok(None)` when it is not
/// UTF-8 (the entry is skipped). `file_offset` and `file_len` only feed the
/// error message.
fn c_str<'a>(
    data: &'a [u8],
    offset: u32,
    index: usize,
    field: &'static str,
    file_offset: u64,
    file_len: usize,
) -> Result<Option<&'a str>, LdCacheError> {
    let tail = match data.get(offset as usize..) {
        Some(tail) if !tail.is_empty() => tail,
        _ => {
            return Err(LdCacheError::StringOutOfRange {
                index,
                field,
                string_offset: offset,
                offset: file_offset,
                file_len,
            })
        }
    };
    let Some(len) = tail.iter().position(|&b| b == 0) else {
        return Err(LdCacheError::UnterminatedString {
            index,
            field,
            offset: file_offset,
        });
    };
    Ok(std::str::from_utf8(&tail[..len]).ok())
}

/// Little-endian field readers for slices whose length the caller has
/// already checked; a short slice reads as zero-filled instead of panicking.
fn le_array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    if let Some(src) = at.checked_add(N).and_then(|end| b.get(at..end)) {
        out.copy_from_slice(src);
    }
    out
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(le_array(b, at))
}

fn le_i32(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(le_array(b, at))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(le_array(b, at))
}

#[cfg(test)]
mod tests {
    //! The format and the order are checked against the real tools: glibc's
    //! `ldconfig` writes caches we parse and reads caches we write, and the
    //! real `ld.so` loads libraries through a cache written here.

    use super::*;
    use crate::testing::TempDir;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    /// Finds a tool on PATH or in the sbin dirs, where `ldconfig` lives.
    fn find_tool(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    }

    /// The paths of `tools`, or `None` (after saying why) when one is missing
    /// and we are not in CI; in CI a missing tool fails the test.
    fn tools<const N: usize>(test: &str, names: [&str; N]) -> Option<[PathBuf; N]> {
        let found = names.map(find_tool);
        if found.iter().all(Option::is_some) {
            return Some(found.map(Option::unwrap));
        }
        let missing: Vec<_> = names
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(n, _)| *n)
            .collect();
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: {missing:?} not found, and CI is set: the test must run there"
        );
        eprintln!("skipping {test}: {missing:?} not found (CI unset)");
        None
    }

    /// Effective uid 0, read from procfs to avoid a libc dependency.
    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                == Some("0")
        })
    }

    fn run(cmd: &mut Command) -> Output {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `ldconfig -p -C cache`: the count from its first line and the entry
    /// lines (tab-indented), in file order.
    fn ldconfig_listing(ldconfig: &Path, cache: &Path) -> (usize, Vec<String>) {
        let out = run(Command::new(ldconfig).arg("-p").arg("-C").arg(cache));
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let count = lines
            .next()
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected ldconfig -p output: {text}"));
        let entries = lines
            .filter(|l| l.starts_with('\t'))
            .map(str::to_owned)
            .collect();
        (count, entries)
    }

    /// An entry as `print_entry` in glibc's `elf/cache.c` prints it, for the
    /// flags and fields met on x86-64.
    fn listing_line(e: &CacheEntry) -> String {
        let kind = ["libc4", "ELF", "libc5", "libc6"]
            .get((e.flags & 0xff) as usize)
            .copied()
            .unwrap_or("unknown");
        let abi = match e.flags & 0xff00 {
            0 => String::new(),
            0x0300 => ",x86-64".into(),
            0x0800 => ",x32".into(),
            other => format!(",{other}"),
        };
        let hwcap = if e.hwcap == 0 {
            String::new()
        } else {
            format!(", hwcap: {:#018x}", e.hwcap)
        };
        format!("\t{} ({kind}{abi}{hwcap}) => {}", e.key, e.value)
    }

    fn listing(cache: &LdCache) -> Vec<String> {
        cache.entries.iter().map(listing_line).collect()
    }

    fn host_cache() -> (Vec<u8>, LdCache) {
        let bytes = std::fs::read("/etc/ld.so.cache").expect("read /etc/ld.so.cache");
        let cache = LdCache::parse(&bytes).expect("parse /etc/ld.so.cache");
        (bytes, cache)
    }

    fn entry(key: &str, value: &str) -> CacheEntry {
        CacheEntry {
            flags: FLAGS_X86_64_LIBC6,
            key: key.into(),
            value: value.into(),
            os_version: 0,
            hwcap: 0,
        }
    }

    /// xorshift64: deterministic pseudo-random numbers without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                v.swap(i, self.below(i + 1));
            }
        }
    }

    fn gcc_shared(gcc: &Path, soname: &str, out: &Path, extra: &[&str]) {
        let dir = out.parent().unwrap();
        let src = dir.join(format!("{soname}.c"));
        let symbol: String = soname
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        std::fs::write(&src, format!("int {symbol}(void) {{ return 42; }}\n")).unwrap();
        run(Command::new(gcc)
            .args(["-shared", "-fPIC", "-o"])
            .arg(out)
            .arg(format!("-Wl,-soname,{soname}"))
            .args(extra)
            .arg(&src));
        std::fs::remove_file(src).unwrap();
    }

    // 1. The host's cache parses to exactly what `ldconfig -p` prints.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "expects an x86-64 host")]
    fn host_cache_matches_ldconfig_p() {
        let Some([ldconfig]) = tools("host_cache_matches_ldconfig_p", ["ldconfig"]) else {
            return;
        };
        let (_, cache) = host_cache();
        let (count, lines) = ldconfig_listing(&ldconfig, Path::new("/etc/ld.so.cache"));
        assert_eq!(cache.entries.len(), count);
        assert_eq!(listing(&cache), lines);
        let libc = cache
            .lookup("libc.so.6", FLAGS_X86_64_LIBC6)
            .expect("libc.so.6 in the host cache");
        assert!(libc.value.ends_with("/libc.so.6"), "{libc:?}");
    }

    // 2. Caches that `ldconfig -r` builds from gcc-made libraries, in all
    // three formats, parse to what `ldconfig -p` prints; and the sort order
    // of `to_bytes` reproduces ldconfig's from a shuffled entry list.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "expects an x86-64 host")]
    fn ldconfig_built_caches() {
        let Some([gcc, ldconfig]) = tools("ldconfig_built_caches", ["gcc", "ldconfig"]) else {
            return;
        };
        let tmp = TempDir::new("ldcache");
        let root = tmp.join("root");
        for dir in ["etc", "opt/foo", "opt/foo32", "usr/lib/x86_64-linux-gnu"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("etc/ld.so.conf"), "/opt/foo\n/opt/foo32\n").unwrap();
        // Sonames chosen to exercise _dl_cache_libcmp: numeric runs,
        // digits against letters, the end of the string, case, punctuation.
        let sonames = [
            "libfoo.so.1",
            "libfoo.so.9",
            "libfoo.so.10",
            "libfoo.so.1.2",
            "libfoo.so",
            "libfoo2.so.1",
            "libfoo10.so.1",
            "libFoo.so.1",
            "libfoo-bar.so.0",
            "libfoo_bar.so.0",
            "libfoo.so.007",
        ];
        for soname in sonames {
            gcc_shared(&gcc, soname, &root.join("opt/foo").join(soname), &[]);
        }
        // A real file with a versioned name: ldconfig adds the soname link.
        gcc_shared(
            &gcc,
            "libbar.so.2",
            &root.join("usr/lib/x86_64-linux-gnu/libbar.so.2.5.0"),
            &[],
        );
        // A 32-bit library (no libc to link, so ldconfig calls it "ELF",
        // flags 0x0001) with the same soname as a 64-bit one.
        let m32 = ["-m32", "-nostdlib"];
        let have_m32 = Command::new(&gcc)
            .args(m32)
            .args(["-shared", "-x", "c", "-o", "/dev/null", "-"])
            .stdin(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if have_m32 {
            gcc_shared(
                &gcc,
                "libfoo.so.1",
                &root.join("opt/foo32/libfoo.so.1"),
                &m32,
            );
        }

        let mut parsed = Vec::new();
        for format in ["new", "old", "compat"] {
            let cache_path = root.join("etc/ld.so.cache");
            run(Command::new(&ldconfig)
                .arg("-r")
                .arg(&root)
                .args(["-c", format]));
            let bytes = std::fs::read(&cache_path).unwrap();
            assert_eq!(bytes.starts_with(OLD_MAGIC), format != "new", "{format}");
            let cache = LdCache::parse(&bytes).unwrap();
            let (count, lines) = ldconfig_listing(&ldconfig, &cache_path);
            assert_eq!(cache.entries.len(), count, "{format}");
            assert_eq!(listing(&cache), lines, "{format}");
            parsed.push(cache);
        }
        assert_eq!(parsed[0], parsed[1], "old format differs from new");
        assert_eq!(parsed[0], parsed[2], "compat format differs from new");
        let cache = &parsed[0];

        for soname in sonames {
            let e = cache.lookup(soname, FLAGS_X86_64_LIBC6).unwrap();
            assert_eq!(e.value, format!("/opt/foo/{soname}"));
        }
        let bar = cache.lookup("libbar.so.2", FLAGS_X86_64_LIBC6).unwrap();
        assert_eq!(bar.value, "/usr/lib/x86_64-linux-gnu/libbar.so.2");
        if have_m32 {
            let foo32 = cache.lookup("libfoo.so.1", 0x0001).unwrap();
            assert_eq!(foo32.value, "/opt/foo32/libfoo.so.1");
        }
        assert_eq!(
            cache.entries.len(),
            sonames.len() + 1 + usize::from(have_m32)
        );

        // ldconfig's order, rebuilt from shuffled input by to_bytes.
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20 {
            let mut shuffled = cache.clone();
            rng.shuffle(&mut shuffled.entries);
            let rewritten = LdCache::parse(&shuffled.to_bytes()).unwrap();
            assert_eq!(&rewritten, cache);
        }
    }

    // 3. Round trip of the host cache: ldconfig prints the same listing, in
    // the same order, for the cache we wrote (also from shuffled entries).
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "expects an x86-64 host")]
    fn host_cache_round_trip() {
        let Some([ldconfig]) = tools("host_cache_round_trip", ["ldconfig"]) else {
            return;
        };
        let (_, cache) = host_cache();
        let (count, original) = ldconfig_listing(&ldconfig, Path::new("/etc/ld.so.cache"));
        let tmp = TempDir::new("ldcache");
        let written = tmp.join("ld.so.cache");

        std::fs::write(&written, cache.to_bytes()).unwrap();
        assert_eq!(
            ldconfig_listing(&ldconfig, &written),
            (count, original.clone())
        );

        let mut shuffled = cache.clone();
        Rng(12345).shuffle(&mut shuffled.entries);
        std::fs::write(&written, shuffled.to_bytes()).unwrap();
        assert_eq!(ldconfig_listing(&ldconfig, &written), (count, original));

        // Writing what we parsed is a fixed point.
        let bytes = cache.to_bytes();
        assert_eq!(LdCache::parse(&bytes).unwrap().to_bytes(), bytes);
        assert_eq!(&bytes[28], &ENDIAN_LITTLE);
    }

    // 4. The real ld.so, chrooted, finds libc and a library in a
    // non-default directory through a cache written by to_bytes, and fails
    // without the entry.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "expects an x86-64 host")]
    fn loader_uses_written_cache() {
        let Some([gcc, _ldconfig, chroot]) =
            tools("loader_uses_written_cache", ["gcc", "ldconfig", "chroot"])
        else {
            return;
        };
        if !is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "loader_uses_written_cache needs root for chroot, and CI is set"
            );
            eprintln!("skipping loader_uses_written_cache: chroot needs root (CI unset)");
            return;
        }
        let interp = Path::new("/lib64/ld-linux-x86-64.so.2");
        let (_, host) = host_cache();
        let host_libc = host.lookup("libc.so.6", FLAGS_X86_64_LIBC6).unwrap();

        let tmp = TempDir::new("ldcache");
        let build = tmp.join("build");
        let root = tmp.join("root");
        for dir in ["lib64", "etc", "opt/foo", "opt/libc"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::create_dir_all(&build).unwrap();
        std::fs::write(
            build.join("foo.c"),
            "#include <stdio.h>\nvoid foo_hello(void) { puts(\"hello from libfoo\"); }\n",
        )
        .unwrap();
        std::fs::write(
            build.join("prog.c"),
            "void foo_hello(void);\nint main(void) { foo_hello(); return 0; }\n",
        )
        .unwrap();
        run(Command::new(&gcc)
            .current_dir(&build)
            .args(["-shared", "-fPIC", "-Wl,-soname,libfoo.so.1"])
            .args(["-o", "libfoo.so.1", "foo.c"]));
        run(Command::new(&gcc)
            .current_dir(&build)
            .args(["-o", "prog", "prog.c", "./libfoo.so.1"]));
        // fs::copy follows the host's symlinks and keeps the mode bits.
        std::fs::copy(build.join("prog"), root.join("prog")).unwrap();
        std::fs::copy(build.join("libfoo.so.1"), root.join("opt/foo/libfoo.so.1")).unwrap();
        std::fs::copy(interp, root.join("lib64/ld-linux-x86-64.so.2")).unwrap();
        // libc outside every default search dir: only the cache finds it.
        std::fs::copy(&host_libc.value, root.join("opt/libc/libc.so.6")).unwrap();

        // Start from the host's ~500 entries so the binary search has work.
        let mut cache = host.clone();
        cache.add_or_replace(entry("libc.so.6", "/opt/libc/libc.so.6"));
        let without_foo = cache.clone();
        cache.add_or_replace(entry("libfoo.so.1", "/opt/foo/libfoo.so.1"));

        std::fs::write(root.join("etc/ld.so.cache"), cache.to_bytes()).unwrap();
        let out = run(Command::new(&chroot).arg(&root).arg("/prog"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from libfoo\n");
        let out = run(Command::new(&chroot).arg(&root).args([
            "/lib64/ld-linux-x86-64.so.2",
            "--list",
            "/prog",
        ]));
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(
            list.contains("libfoo.so.1 => /opt/foo/libfoo.so.1 "),
            "{list}"
        );
        assert!(list.contains("libc.so.6 => /opt/libc/libc.so.6 "), "{list}");

        std::fs::write(root.join("etc/ld.so.cache"), without_foo.to_bytes()).unwrap();
        let out = Command::new(&chroot)
            .arg(&root)
            .arg("/prog")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("libfoo.so.1: cannot open shared object file"),
            "{stderr}"
        );
    }

    // 5. Adding to the host cache keeps every original entry visible.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "expects an x86-64 host")]
    fn add_to_host_cache() {
        let Some([ldconfig]) = tools("add_to_host_cache", ["ldconfig"]) else {
            return;
        };
        let (_, mut cache) = host_cache();
        let (count, original) = ldconfig_listing(&ldconfig, Path::new("/etc/ld.so.cache"));
        let added = [
            entry(
                "libcuda.so.1",
                "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15",
            ),
            entry(
                "libnvidia-ml.so.1",
                "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15",
            ),
            CacheEntry {
                flags: FLAGS_I386_LIBC6,
                ..entry(
                    "libcuda.so.1",
                    "/usr/lib/i386-linux-gnu/libcuda.so.550.54.15",
                )
            },
        ];
        for e in &added {
            cache.add_or_replace(e.clone());
        }
        let tmp = TempDir::new("ldcache");
        let written = tmp.join("ld.so.cache");
        std::fs::write(&written, cache.to_bytes()).unwrap();
        let (new_count, lines) = ldconfig_listing(&ldconfig, &written);
        assert_eq!(new_count, count + added.len());
        let added_lines: Vec<String> = added.iter().map(listing_line).collect();
        for line in original.iter().chain(&added_lines) {
            assert!(lines.contains(line), "{line} missing");
        }
        // Written in ldconfig order: the x86-64 libcuda before the i386 one.
        let pos = |e: &CacheEntry| lines.iter().position(|l| *l == listing_line(e));
        assert!(pos(&added[0]) < pos(&added[2]));
    }

    #[test]
    fn add_or_replace_all_is_add_or_replace_per_entry() {
        // Deterministic pseudo-random caches: keys from a small set, so that
        // replacements, duplicates, hwcap variants and both ABIs all occur.
        let state = std::cell::Cell::new(0x9e37_79b9_7f4a_7c15_u64);
        let next = |n: u64| {
            let mut x = state.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.set(x);
            x % n
        };
        for round in 0..200 {
            let random_entry = |dir: &str| CacheEntry {
                flags: if next(4) == 0 {
                    FLAGS_I386_LIBC6
                } else {
                    FLAGS_X86_64_LIBC6
                },
                hwcap: if next(5) == 0 { 2 } else { 0 },
                ..entry(
                    &format!("lib{}.so.1", next(12)),
                    &format!("/{dir}/{}", next(1000)),
                )
            };
            let image: Vec<CacheEntry> = (0..next(40)).map(|_| random_entry("image")).collect();
            let added: Vec<CacheEntry> = (0..next(15))
                .map(|_| CacheEntry {
                    hwcap: 0,
                    ..random_entry("driver")
                })
                .collect();
            let mut one_by_one = LdCache {
                entries: image.clone(),
            };
            for e in &added {
                one_by_one.add_or_replace(e.clone());
            }
            let mut batch = LdCache { entries: image };
            batch.add_or_replace_all(added);
            assert_eq!(batch.entries, one_by_one.entries, "round {round}");
        }
    }

    #[test]
    fn add_or_replace_semantics() {
        let mut cache = LdCache::default();
        cache.add_or_replace(entry("libcuda.so.1", "/a/libcuda.so.1"));
        cache.add_or_replace(CacheEntry {
            hwcap: 2,
            ..entry("libcuda.so.1", "/a/tls/libcuda.so.1")
        });
        cache.entries.push(CacheEntry {
            flags: FLAGS_I386_LIBC6,
            ..entry("libcuda.so.1", "/b/libcuda.so.1")
        });
        assert_eq!(cache.entries.len(), 2, "same key+flags replaces");
        assert_eq!(cache.entries[0].value, "/a/tls/libcuda.so.1");
        cache
            .entries
            .push(entry("libcuda.so.1", "/dup/libcuda.so.1"));
        cache.add_or_replace(entry("libcuda.so.1", "/c/libcuda.so.1"));
        assert_eq!(cache.entries.len(), 2, "all variants replaced by one");
        assert_eq!(
            cache
                .lookup("libcuda.so.1", FLAGS_X86_64_LIBC6)
                .unwrap()
                .value,
            "/c/libcuda.so.1"
        );
        assert_eq!(
            cache
                .lookup("libcuda.so.1", FLAGS_I386_LIBC6)
                .unwrap()
                .value,
            "/b/libcuda.so.1"
        );
        assert_eq!(cache.entries_with_flags(FLAGS_I386_LIBC6).count(), 1);
        assert!(cache.lookup("libcuda.so", FLAGS_X86_64_LIBC6).is_none());
    }

    #[test]
    fn lookup_prefers_plain_entry() {
        let cache = LdCache {
            entries: vec![
                CacheEntry {
                    hwcap: HWCAP_EXTENSION,
                    ..entry("libm.so.6", "/lib/glibc-hwcaps/x86-64-v3/libm.so.6")
                },
                entry("libm.so.6", "/lib/libm.so.6"),
            ],
        };
        assert_eq!(
            cache.lookup("libm.so.6", FLAGS_X86_64_LIBC6).unwrap().value,
            "/lib/libm.so.6"
        );
    }

    #[test]
    fn to_bytes_dedups_and_shares_strings() {
        let cache = LdCache {
            entries: vec![
                entry("libz.so.1", "/first/libz.so.1"),
                entry("libz.so.1", "/second/libz.so.1"),
                entry("libz.so", "/first/libz.so.1"),
                entry("bad\0key", "/x"),
            ],
        };
        let bytes = cache.to_bytes();
        let parsed = LdCache::parse(&bytes).unwrap();
        assert_eq!(
            parsed.entries,
            vec![
                entry("libz.so.1", "/first/libz.so.1"),
                entry("libz.so", "/first/libz.so.1")
            ]
        );
        // One copy of "/first/libz.so.1\0"; both keys point into it.
        let strings = &bytes[NEW_HEADER_LEN + 2 * NEW_ENTRY_LEN..];
        assert_eq!(strings, b"/first/libz.so.1\0libz.so\0");
        assert_eq!(le_u32(&bytes, NEW_LEN_STRINGS) as usize, strings.len());
        assert!(LdCache::default().to_bytes().len() == NEW_HEADER_LEN);
        assert_eq!(
            LdCache::parse(&LdCache::default().to_bytes()).unwrap(),
            LdCache::default()
        );
    }

    #[test]
    fn libcmp_matches_glibc() {
        use Ordering::*;
        let cases: &[(&str, &str, Ordering)] = &[
            ("libfoo.so.10", "libfoo.so.9", Greater),
            ("libfoo.so.1", "libfoo.so.01", Equal),
            ("libfoo.so.1", "libfoo.so", Greater),
            ("libfoo.so", "libfoo.so.1", Less),
            ("libfoo2.so", "libfoo.so", Greater),
            ("libfoo2.so", "libfooz.so", Greater), // digit after any letter
            ("libz.so", "liba.so", Greater),
            ("libA.so", "liba.so", Less),
            ("lib", "lib\u{e9}", Greater), // bytes >= 0x80 are negative chars
            ("same", "same", Equal),
            ("", "", Equal),
            ("", "1", Less),
        ];
        for &(a, b, want) in cases {
            assert_eq!(libcmp(a.as_bytes(), b.as_bytes()), want, "{a:?} vs {b:?}");
            assert_eq!(
                libcmp(b.as_bytes(), a.as_bytes()),
                want.reverse(),
                "{b:?} vs {a:?}"
            );
        }
        // Wraps like glibc's int instead of overflowing.
        assert_eq!(digit_run(b"99999999999", 0), (1215752191, 11));
    }

    /// A hand-made old-format-only cache, as libc5-era ldconfig wrote it.
    #[test]
    fn parses_handmade_old_format() {
        let strings = b"libold.so.1\0/lib/libold.so.1\0";
        let mut bytes = OLD_MAGIC.to_vec();
        bytes.push(0);
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&FLAGS_I386_LIBC6.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&12u32.to_le_bytes());
        bytes.extend_from_slice(strings);
        let cache = LdCache::parse(&bytes).unwrap();
        assert_eq!(
            cache.entries,
            vec![CacheEntry {
                flags: FLAGS_I386_LIBC6,
                ..entry("libold.so.1", "/lib/libold.so.1")
            }]
        );
    }

    #[test]
    fn invalid_utf8_entries_are_skipped() {
        let mut bytes = LdCache {
            entries: vec![
                entry("libok.so.1", "/ok/libok.so.1"),
                entry("libxx.so.1", "/x/libxx.so.1"),
            ],
        }
        .to_bytes();
        let at = bytes.windows(4).position(|w| w == b"/x/l").unwrap();
        bytes[at + 1] = 0xff;
        let cache = LdCache::parse(&bytes).unwrap();
        assert_eq!(cache.entries, vec![entry("libok.so.1", "/ok/libok.so.1")]);
    }

    // 6. Hostile input: errors, never panics.
    #[test]
    fn garbage_never_panics() {
        let (host_bytes, host) = host_cache();
        let small = LdCache {
            entries: vec![
                entry("libfoo.so.1", "/opt/libfoo.so.1"),
                entry("libbar.so", "/b"),
            ],
        };
        let small_bytes = small.to_bytes();

        // Every prefix: an error up to the end of the string table; after
        // that only the extension section is cut, which is not read.
        for bytes in [&host_bytes, &small_bytes] {
            let full = LdCache::parse(bytes).unwrap();
            let base = if bytes.starts_with(OLD_MAGIC) {
                let old = OLD_HEADER_LEN + le_u32(bytes, 12) as usize * OLD_ENTRY_LEN;
                old.next_multiple_of(NEW_ALIGN)
            } else {
                0
            };
            let strings_end = base
                + NEW_HEADER_LEN
                + le_u32(bytes, base + NEW_NLIBS) as usize * NEW_ENTRY_LEN
                + le_u32(bytes, base + NEW_LEN_STRINGS) as usize;
            for len in 0..bytes.len() {
                match LdCache::parse(&bytes[..len]) {
                    Ok(c) => {
                        assert!(len >= strings_end, "prefix of {len} bytes parsed");
                        assert_eq!(c, full);
                    }
                    Err(e) => assert!(e.to_string().starts_with("ld.so.cache "), "{e}"),
                }
            }
        }

        // Header claiming a huge entry count.
        let mut huge = small_bytes.clone();
        huge[NEW_NLIBS..NEW_NLIBS + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = LdCache::parse(&huge).unwrap_err();
        assert!(matches!(err, LdCacheError::TooManyEntries { .. }), "{err}");
        assert!(
            err.to_string().starts_with("ld.so.cache is truncated"),
            "{err}"
        );
        let mut huge_old = OLD_MAGIC.to_vec();
        huge_old.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            LdCache::parse(&huge_old),
            Err(LdCacheError::TooManyEntries { .. })
        ));

        // String offsets out of range, and a string without its NUL.
        for (field, at) in [("key", 4), ("value", 8)] {
            for off in [small_bytes.len() as u32, u32::MAX] {
                let mut bad = small_bytes.clone();
                let pos = NEW_HEADER_LEN + at;
                bad[pos..pos + 4].copy_from_slice(&off.to_le_bytes());
                let err = LdCache::parse(&bad).unwrap_err();
                assert!(
                    matches!(err, LdCacheError::StringOutOfRange { field: f, .. } if f == field),
                    "{err}"
                );
            }
        }
        let mut unterminated = small_bytes.clone();
        *unterminated.last_mut().unwrap() = b'x';
        assert!(matches!(
            LdCache::parse(&unterminated),
            Err(LdCacheError::UnterminatedString { .. })
        ));
        let mut big_endian = small_bytes.clone();
        big_endian[NEW_FLAGS] = 3;
        assert!(matches!(
            LdCache::parse(&big_endian),
            Err(LdCacheError::UnsupportedEndian { .. })
        ));
        assert!(matches!(
            LdCache::parse(b"definitely not a cache file"),
            Err(LdCacheError::BadMagic { offset: 0 })
        ));

        // Random buffers: plain, behind each magic, and random mutations of
        // real caches. Only "no panic" is checked; mutations may parse.
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut buf = Vec::new();
        for round in 0..6000 {
            buf.clear();
            match round % 4 {
                0 => {}
                1 => buf.extend_from_slice(NEW_MAGIC),
                2 => buf.extend_from_slice(OLD_MAGIC),
                _ => {
                    let src = if round % 8 == 3 {
                        &small_bytes
                    } else {
                        &host_bytes
                    };
                    buf.extend_from_slice(src);
                    for _ in 0..1 + rng.below(8) {
                        let i = rng.below(buf.len());
                        buf[i] = rng.next() as u8;
                    }
                }
            }
            if round % 4 != 3 {
                let len = rng.below(300);
                buf.extend((0..len).map(|_| rng.next() as u8));
                // Small counts so the entry table often fits.
                if buf.len() >= 24 && round % 2 == 1 {
                    buf[20] = rng.below(8) as u8;
                    buf[21..24].fill(0);
                }
            }
            if let Ok(cache) = LdCache::parse(&buf) {
                // Whatever parses must survive a round trip.
                LdCache::parse(&cache.to_bytes()).unwrap();
            }
        }
        assert!(!host.entries.is_empty());
    }

    /// `cargo test --release -- --ignored --nocapture parse_speed`
    #[test]
    #[ignore = "timing, run in release"]
    fn parse_speed() {
        let (bytes, cache) = host_cache();
        let iterations = 1000;
        let start = std::time::Instant::now();
        for _ in 0..iterations {
            std::hint::black_box(LdCache::parse(std::hint::black_box(&bytes)).unwrap());
        }
        let per = start.elapsed() / iterations;
        let start = std::time::Instant::now();
        for _ in 0..iterations {
            std::hint::black_box(std::hint::black_box(&cache).to_bytes());
        }
        let write = start.elapsed() / iterations;
        eprintln!(
            "{} entries, {} bytes: parse {per:?}, to_bytes {write:?} per call",
            cache.entries.len(),
            bytes.len()
        );
    }
}
