//! Standard output of the command line, which stops quietly when its
//! reader goes away.
//!
//! Rust ignores `SIGPIPE`, so writing to a pipe whose reader has closed
//! (`stepgate audit timeline --data D | head -1`) fails with `BrokenPipe`,
//! and `println!` turns that into a panic. Every line the CLI prints goes
//! through [`outln!`](crate::outln) instead, which returns
//! [`OutputError::Closed`]: the command stops at that line, and the binary
//! exits with [`CLOSED_EXIT`] without a message, as a process ended by
//! `SIGPIPE` would look to the shell. Not 0: the output was not all
//! delivered, and a script using `set -o pipefail` should learn that.
//!
//! Used by [`crate::cli`], [`crate::remote`] and [`crate::demo`].

use std::io::{self, Write};

/// Exit status when stdout was closed by its reader: 128 + `SIGPIPE` (13),
/// what shells report for a process that `SIGPIPE` ended.
pub const CLOSED_EXIT: u8 = 141;

/// Why a line could not be printed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The reader of stdout went away; stop printing and exit quietly.
    #[error("stdout was closed by its reader")]
    Closed,
    /// Any other write failure (a full disk, a device error).
    #[error("cannot write to stdout: {0}")]
    Io(io::Error),
}

impl From<io::Error> for OutputError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            OutputError::Closed
        } else {
            OutputError::Io(e)
        }
    }
}

impl OutputError {
    /// True when `error` or any of its causes is [`OutputError::Closed`].
    pub fn is_closed(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(e) = next {
            if matches!(e.downcast_ref::<OutputError>(), Some(OutputError::Closed)) {
                return true;
            }
            next = e.source();
        }
        false
    }
}

/// Writes formatted text to stdout. Use [`outln!`](crate::outln).
pub fn write(args: std::fmt::Arguments<'_>) -> Result<(), OutputError> {
    io::stdout().lock().write_fmt(args)?;
    Ok(())
}

/// Flushes stdout, e.g. after a prompt without a newline.
pub fn flush() -> Result<(), OutputError> {
    io::stdout().lock().flush()?;
    Ok(())
}

/// `println!` that returns `Result<(), OutputError>` instead of panicking.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_closed_and_other_errors_are_io() {
        let closed = OutputError::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(matches!(closed, OutputError::Closed));
        let full = OutputError::from(io::Error::from(io::ErrorKind::StorageFull));
        assert!(matches!(full, OutputError::Io(_)));
    }

    #[test]
    fn closed_is_found_through_anyhow_context() {
        let e = anyhow::Error::from(OutputError::Closed).context("printing the timeline");
        assert!(OutputError::is_closed(e.as_ref()));
        let other = anyhow::anyhow!("something else");
        assert!(!OutputError::is_closed(other.as_ref()));
    }
}
