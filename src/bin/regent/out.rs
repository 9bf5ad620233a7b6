//! Standard output for the CLI: every line goes through [`line`], which
//! turns a closed pipe (`regent watch | head -3`) into a quiet exit instead
//! of a panic.

use std::fmt;
use std::io::{self, Write};

use crate::error::EXIT_ERROR;

/// The exit status after a write to a closed pipe: 128 + SIGPIPE, as a
/// shell reports a process that SIGPIPE ended.
pub(crate) const EXIT_BROKEN_PIPE: i32 = 141;

/// Writes `args` and a newline to standard output and flushes, so lines
/// from several tasks never interleave and a reader sees each at once.
/// A closed pipe ends the process quietly with [`EXIT_BROKEN_PIPE`]; any
/// other write error ends it with one error line and the error status.
pub(crate) fn line(args: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        std::process::exit(exit_status(&e));
    }
}

/// Writes `text` as it is (a block that ends in its own newline).
pub(crate) fn text(text: &str) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        std::process::exit(exit_status(&e));
    }
}

/// The status to exit with after failing to write standard output,
/// telling the user why unless the reader simply went away.
fn exit_status(e: &io::Error) -> i32 {
    if e.kind() == io::ErrorKind::BrokenPipe {
        EXIT_BROKEN_PIPE
    } else {
        eprintln!("error: cannot write to standard output: {e}");
        i32::from(EXIT_ERROR)
    }
}

/// `say!("fmt", args…)`: one line on standard output, through [`line`].
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use say;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_a_quiet_141() {
        let pipe = io::Error::from(io::ErrorKind::BrokenPipe);
        assert_eq!(exit_status(&pipe), 141);
        let full = io::Error::other("disk full");
        assert_eq!(exit_status(&full), i32::from(EXIT_ERROR));
    }
}
