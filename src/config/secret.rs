//! Secrets (passwords, API keys) read from the environment or a file named in the config, in a
//! type whose `Debug` never shows them.

use std::fmt;
use std::path::Path;

use super::ConfigError;

/// A secret value. `Debug` prints `Secret(<redacted>)`; nothing here is `Serialize` or
/// `Display`, so the value reaches a string only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that sends it (a connection's authentication).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A secret from the environment variable `env` or the file `file` (trailing newline removed),
/// whichever is set; `None` when neither is. Errors name the field `{field}_env` / `{field}_file`
/// (e.g. `source.password_env`) and never contain the secret.
pub(super) fn read_secret(field: &str, env: Option<&str>, file: Option<&Path>) -> Result<Option<Secret>, ConfigError> {
    read_secret_with(field, env, file, &|var| std::env::var(var).ok())
}

/// [`read_secret`] with the environment given as a lookup function (tests supply their own
/// instead of changing the process environment other tests read).
fn read_secret_with(
    field: &str,
    env: Option<&str>,
    file: Option<&Path>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    if let Some(var) = env {
        return match lookup(var) {
            Some(v) => Ok(Some(Secret(v))),
            None => Err(ConfigError::invalid(&format!("{field}_env"), format!("environment variable {var} is not set (or not UTF-8)"))),
        };
    }
    if let Some(path) = file {
        return match std::fs::read_to_string(path) {
            Ok(v) => Ok(Some(Secret(v.trim_end_matches(['\n', '\r']).to_string()))),
            Err(e) => Err(ConfigError::invalid(&format!("{field}_file"), format!("cannot read {}: {e}", path.display()))),
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_from_env_or_file_never_in_debug() {
        let env = |var: &str| (var == "WALCAST_TEST_PW").then(|| "hunter2".to_string());
        let s = read_secret_with("source.password", Some("WALCAST_TEST_PW"), None, &env).expect("set").expect("some");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let err = read_secret_with("source.password", Some("WALCAST_TEST_UNSET"), None, &env).expect_err("unset").to_string();
        assert!(err.contains("`source.password_env`") && err.contains("WALCAST_TEST_UNSET"), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "file-hunter2\n").expect("write");
        let s = read_secret_with("x.password", None, Some(&path), &env).expect("read").expect("some");
        assert_eq!(s.expose(), "file-hunter2");
        let err = read_secret_with("x.password", None, Some(&dir.path().join("none")), &env).expect_err("missing").to_string();
        assert!(err.contains("`x.password_file`"), "{err}");
        assert!(read_secret_with("x.password", None, None, &env).expect("none").is_none());
    }
}
