//! Just enough ELF to read a shared library's SONAME.
//!
//! Used when the driver root has no `ld.so.cache` entry for the driver (its
//! libraries live outside the loader's dirs): the SONAME is the name the
//! container's loader will look for, so it is the name we must mount at. Only
//! 64-bit little-endian ELF is read (x86-64, aarch64); anything else is `None`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_STRTAB: u64 = 5;
const DT_SONAME: u64 = 14;
/// Bounds against hostile or corrupt files: real libraries have a handful of
/// program headers and a few dozen dynamic entries.
const MAX_PROGRAM_HEADERS: u64 = 512;
const MAX_DYNAMIC_ENTRIES: u64 = 4096;
const MAX_SONAME_LEN: usize = 256;

fn read_at(file: &File, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut buffer = vec![0; len];
    file.read_exact_at(&mut buffer, offset).ok()?;
    Some(buffer)
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The DT_SONAME of a 64-bit little-endian ELF shared object.
pub fn soname(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let header = read_at(&file, 0, 64)?;
    // ELFCLASS64 (2), ELFDATA2LSB (1).
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let program_offset = u64_at(&header, 0x20)?;
    let entry_size = u64::from(u16_at(&header, 0x36)?);
    let count = u64::from(u16_at(&header, 0x38)?);
    if entry_size < 56 || count > MAX_PROGRAM_HEADERS {
        return None;
    }
    let table = read_at(
        &file,
        program_offset,
        usize::try_from(entry_size * count).ok()?,
    )?;
    // (vaddr, offset, filesz) of loadable segments, and the dynamic segment.
    let mut loads = Vec::new();
    let mut dynamic = None;
    for index in 0..count as usize {
        let at = index * entry_size as usize;
        let kind = u32_at(&table, at)?;
        let offset = u64_at(&table, at + 8)?;
        let vaddr = u64_at(&table, at + 16)?;
        let file_size = u64_at(&table, at + 32)?;
        match kind {
            PT_LOAD => loads.push((vaddr, offset, file_size)),
            PT_DYNAMIC => dynamic = Some((offset, file_size)),
            _ => {}
        }
    }
    let (dynamic_offset, dynamic_size) = dynamic?;
    let entries = (dynamic_size / 16).min(MAX_DYNAMIC_ENTRIES);
    let dynamic = read_at(&file, dynamic_offset, usize::try_from(entries * 16).ok()?)?;
    let (mut string_table, mut soname_offset) = (None, None);
    for index in 0..entries as usize {
        let tag = u64_at(&dynamic, index * 16)?;
        let value = u64_at(&dynamic, index * 16 + 8)?;
        match tag {
            DT_NULL => break,
            DT_STRTAB => string_table = Some(value),
            DT_SONAME => soname_offset = Some(value),
            _ => {}
        }
    }
    // DT_STRTAB is a virtual address: map it to a file offset through the
    // PT_LOAD segment that contains it.
    let string_vaddr = string_table?.checked_add(soname_offset?)?;
    let file_offset = loads.iter().find_map(|&(vaddr, offset, size)| {
        let delta = string_vaddr.checked_sub(vaddr)?;
        (delta < size).then(|| offset.checked_add(delta))?
    })?;
    let mut bytes = vec![0; MAX_SONAME_LEN];
    let read = file.read_at(&mut bytes, file_offset).ok()?;
    bytes.truncate(read);
    let end = bytes.iter().position(|&b| b == 0)?;
    String::from_utf8(bytes[..end].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soname_of_a_system_library() {
        // Every glibc system has libc.so.6 with that SONAME.
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        if !libc.exists() {
            eprintln!("SKIPPED: {} not found on this machine", libc.display());
            return;
        }
        assert_eq!(soname(libc).as_deref(), Some("libc.so.6"));
    }

    #[test]
    fn non_elf_is_none() {
        let path = std::env::temp_dir().join(format!("ncr-elf-{}", std::process::id()));
        std::fs::write(&path, b"\x7fELF\x02\x01garbage").unwrap();
        assert_eq!(soname(&path), None);
        std::fs::remove_file(&path).unwrap();
    }
}
