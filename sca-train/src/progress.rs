//! Progress lines on stdout, and warnings on stderr, that never stop training.
//!
//! `println!` and `eprintln!` panic when their stream is closed (EPIPE: the
//! launcher's reader gone, `| head`, a terminal that went away), which
//! killed the trainer before its next checkpoint, or, on its way out, before
//! it wrote the failure file. A line is for people; the run's state lives in
//! checkpoints, metrics and the failure file, so a line that cannot be
//! written is dropped.

use std::io::Write;

/// Like `println!`, but a failed write is ignored.
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => {
        $crate::progress::line(format_args!($($arg)*))
    };
}

/// Like `eprintln!`, but a failed write is ignored.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        $crate::progress::warn_line(format_args!($($arg)*))
    };
}

/// Write `args` and a newline to stdout, ignoring any error.
pub fn line(args: std::fmt::Arguments<'_>) {
    write_line(&mut std::io::stdout().lock(), args);
}

/// Write `args` and a newline to stderr, ignoring any error.
pub fn warn_line(args: std::fmt::Arguments<'_>) {
    write_line(&mut std::io::stderr().lock(), args);
}

fn write_line(out: &mut impl Write, args: std::fmt::Arguments<'_>) {
    let _ = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stdout whose reader is gone.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_closed_stdout_drops_the_line_without_panicking() {
        for epoch in 0..3 {
            write_line(&mut Closed, format_args!("epoch {epoch}"));
        }
        let mut open = Vec::new();
        write_line(&mut open, format_args!("epoch {}", 1));
        assert_eq!(open, b"epoch 1\n");
    }
}
