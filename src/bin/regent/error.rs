//! The CLI's error (one line for the user) and exit statuses.

/// An error for the user: printed as one line.
#[derive(Debug)]
pub(crate) struct CliError(pub(crate) String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

/// The exit status of a run whose checks failed (a simulator violation).
pub(crate) const EXIT_VIOLATION: u8 = 1;
/// The exit status of an error (bad input, unreachable database).
pub(crate) const EXIT_ERROR: u8 = 2;
