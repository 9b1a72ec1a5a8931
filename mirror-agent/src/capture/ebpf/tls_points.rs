//! Where the TLS uprobes go in one target file (a libssl, or a binary with OpenSSL linked in).
//!
//! Owns one decision: probe OpenSSL's internal `ssl_read_internal`/`ssl_write_internal` when they
//! can be found and begin with an instruction the kernel emulates, else the four exported calls
//! by symbol.
//!
//! Why: a uprobe executes the instruction its breakpoint replaced either by emulating it (x86
//! emulates calls, jumps, nops and pushes) or by single-stepping a copy of it, a debug trap that
//! costs microseconds on bare metal and tens of them in a VM (measured: `cargo xtask bench tls`,
//! BENCHMARKS.md). OpenSSL 3's exported `SSL_read`, `SSL_read_ex`, `SSL_write` and `SSL_write_ex`
//! begin with `sub $N,%rsp`, which is single-stepped on every call; the internal functions they
//! call (`SSL_read_ex` is `sub $8,%rsp; call ssl_read_internal; ...`) begin with `push`es. The
//! internal functions take `(SSL *, buf, num, size_t *done)` and return > 0 with `*done` set, for
//! `SSL_read` and `SSL_read_ex` alike (and `SSL_write`, `SSL_write_ex`), so two probe points
//! cover the four calls. A return probe must sit where `[rsp]` is the return address: the
//! function's entry, or just after an `endbr64` (which does not touch the stack).
//!
//! Found without disassembling: only the exact prologue `[endbr64] [sub $imm8,%rsp] call rel32`
//! at `SSL_read_ex`/`SSL_write_ex` is followed, and only to a target that begins with
//! `[endbr64] push`. Anything else (another OpenSSL build, another compiler) keeps the exported
//! symbols, which always work, at the single-step's cost. Hand-written because no crate answers
//! "where is the first call in this prologue"; a full x86 decoder would be a large dependency
//! for three byte patterns.

use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol};

/// The probe points of one target file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbePoints {
    /// File offsets of the internal read and write functions (past an `endbr64`).
    Internal { read: u64, write: u64 },
    /// The exported functions by symbol.
    Exported,
}

const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// The probe points of `path` (see the module doc); `Exported` when the file cannot be read or
/// the pattern is not there.
pub fn probe_points(path: &Path) -> ProbePoints {
    let Ok(data) = std::fs::read(path) else {
        return ProbePoints::Exported;
    };
    let Ok(obj) = object::File::parse(&*data) else {
        return ProbePoints::Exported;
    };
    match (
        internal_of(&obj, "SSL_read_ex"),
        internal_of(&obj, "SSL_write_ex"),
    ) {
        (Some(read), Some(write)) if read != write => ProbePoints::Internal { read, write },
        _ => ProbePoints::Exported,
    }
}

/// The file offset to probe for the function `exported` calls first, when its prologue is the
/// known one and the callee's first instruction is emulated.
fn internal_of(obj: &object::File<'_>, exported: &str) -> Option<u64> {
    let sym = obj
        .dynamic_symbols()
        .chain(obj.symbols())
        .find(|s| s.name() == Ok(exported) && s.is_definition())?;
    let section = obj.section_by_index(sym.section_index()?).ok()?;
    let code = section.data().ok()?;
    let (file_offset, _) = section.file_range()?;
    let at = |vaddr: u64| -> Option<usize> {
        usize::try_from(vaddr.checked_sub(section.address())?).ok()
    };
    let start = at(sym.address())?;
    let call = callee(code, start)?;
    let target = (sym.address() as i64 + (call.0 as i64 - start as i64) + call.1) as u64;
    let t = at(target)?;
    let entry = if code.get(t..t + 4)? == ENDBR64 {
        t + 4
    } else {
        t
    };
    is_push(code.get(entry..entry + 2)?).then(|| file_offset + entry as u64)
}

/// `(offset after the call instruction, rel32)` when the code at `i` is
/// `[endbr64] [sub $imm8,%rsp] call rel32`.
fn callee(code: &[u8], mut i: usize) -> Option<(usize, i64)> {
    if code.get(i..i + 4)? == ENDBR64 {
        i += 4;
    }
    if code.get(i..i + 3)? == [0x48, 0x83, 0xec] {
        i += 4;
    }
    if *code.get(i)? != 0xe8 {
        return None;
    }
    let rel = i32::from_le_bytes(code.get(i + 1..i + 5)?.try_into().ok()?);
    Some((i + 5, i64::from(rel)))
}

/// `push %reg` (`50+r`) or `push %r8-15` (`41 50+r`).
fn is_push(b: &[u8]) -> bool {
    matches!(b, [0x50..=0x57, _] | [0x41, 0x50..=0x57])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prologue_leads_to_the_callee() {
        // sub $0x8,%rsp; call +0x10
        let code = [0x48, 0x83, 0xec, 0x08, 0xe8, 0x10, 0, 0, 0];
        assert_eq!(callee(&code, 0), Some((9, 0x10)));
        // endbr64; call -4
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0xe8, 0xfc, 0xff, 0xff, 0xff];
        assert_eq!(callee(&code, 0), Some((9, -4)));
        // sub $0x18,%rsp; mov %fs:... (SSL_read): not followed.
        let code = [0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25];
        assert_eq!(callee(&code, 0), None);
        assert_eq!(callee(&[0xe8, 1], 0), None, "truncated");
        assert!(is_push(&[0x41, 0x55]) && is_push(&[0x55, 0x48]));
        assert!(!is_push(&[0x48, 0x83]));
    }

    /// The system libssl (when there is one): OpenSSL 3.0 on Debian 12 has the pattern.
    #[test]
    fn the_system_libssl_has_internal_probe_points() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !lib.exists() {
            eprintln!("SKIPPED: no {}", lib.display());
            return;
        }
        match probe_points(lib) {
            ProbePoints::Internal { read, write } => assert_ne!(read, write),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            probe_points(Path::new("/no/such/file")),
            ProbePoints::Exported
        );
    }
}
