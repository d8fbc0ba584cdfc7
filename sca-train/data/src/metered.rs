//! A reader that refuses to be read past an allowance its consumer moves
//! on. The tar reader holds an entry's headers (a GNU long name, PAX
//! records) whole in memory before it yields the entry, out of sight of
//! any cap on entries' sizes: a long name of gigabytes from a megabyte of
//! gzip. Both model archives read in this workspace go through it:
//! `experiment fetch`'s `model.tar.gz` (xtask) and a warm start's
//! (sca-train).

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

/// The most the headers before an archive's entry may take (its own, a
/// long name's, PAX records').
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

/// `inner` (a decompressed tar stream) read no further than its
/// [`Allowance`] says: past it, an error, which the tar reader does not
/// take for the archive's end (as it would a short read).
pub struct Metered<R> {
    inner: R,
    read: u64,
    allowed: Rc<Cell<u64>>,
}

/// How far a [`Metered`] reader may be read, moved on entry by entry.
#[derive(Clone)]
pub struct Allowance(Rc<Cell<u64>>);

impl Allowance {
    /// An entry was yielded whose data starts at `data_at` (its offset in
    /// the decompressed stream) and is `size` bytes long: its data, padded
    /// to a block, and the next entry's headers may be read.
    pub fn entry(&self, data_at: u64, size: u64) {
        let end = data_at.saturating_add(size.div_ceil(512).saturating_mul(512));
        self.0.set(end.saturating_add(MAX_HEADER_BYTES));
    }
}

/// `inner`, allowed the first entry's headers.
pub fn metered<R: Read>(inner: R) -> (Metered<R>, Allowance) {
    let allowed = Rc::new(Cell::new(MAX_HEADER_BYTES));
    let reader = Metered {
        inner,
        read: 0,
        allowed: allowed.clone(),
    };
    (reader, Allowance(allowed))
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.allowed.get() {
            return Err(std::io::Error::other(format!(
                "an entry's headers (a long name, PAX records) exceed {MAX_HEADER_BYTES} bytes"
            )));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_with_an_error_past_the_allowance() {
        let data = vec![7u8; (MAX_HEADER_BYTES + 500) as usize];
        let (mut r, _) = metered(&data[..]);
        let mut first = vec![0u8; MAX_HEADER_BYTES as usize];
        r.read_exact(&mut first).unwrap();
        let mut more = [0u8; 100];
        assert!(r.read_exact(&mut more).is_err());
        // An entry of 1 byte at offset 0 allows its block (512 bytes) and
        // the headers after it.
        let (mut r, allowance) = metered(&data[..]);
        allowance.entry(0, 1);
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), data.len());
    }
}
