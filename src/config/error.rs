//! Why a section of the config cannot be used: the error every section's validation
//! returns (`section`, and the settings it builds on, such as `remote_write`).

use std::path::PathBuf;

use crate::rules::RuleError;
use crate::tenant::RegistryError;

/// Why one section cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SectionError {
    /// A value is out of range or inconsistent; the message names the key.
    #[error("{0}")]
    Invalid(String),
    /// A file the section names could not be read.
    #[error("{}: cannot read: {error}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The IO error.
        error: std::io::Error,
    },
    /// A rules file the section names is invalid.
    #[error(transparent)]
    Rules(#[from] RuleError),
    /// The tenant registry the section names is invalid.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A [`SectionError::Invalid`] saying `message` (which names the key).
pub(crate) fn invalid(message: impl Into<String>) -> SectionError {
    SectionError::Invalid(message.into())
}
