//! Where the bearer token of each call comes from.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

/// Gives the token for the next call. Called once per call, so it should be cheap.
pub trait TokenSource: Send + Sync + 'static {
    fn token(&self) -> Result<String, String>;
}

/// The same token on every call.
pub struct StaticToken(pub String);

impl TokenSource for StaticToken {
    fn token(&self) -> Result<String, String> {
        Ok(self.0.clone())
    }
}

/// A token file kept fresh by someone else (a projected service-account token, a sidecar):
/// read again whenever its modification time or size changes, so a rotation is used by the
/// next call.
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(Stamp, String)>>,
}

type Stamp = (Option<SystemTime>, u64);

impl TokenFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), cached: Mutex::default() }
    }
}

impl TokenSource for TokenFile {
    fn token(&self) -> Result<String, String> {
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| format!("the token file {} cannot be read: {e}", self.path.display()))?;
        let stamp = (meta.modified().ok(), meta.len());
        let mut cached = self.cached.lock().expect("token cache");
        if let Some((s, t)) = &*cached
            && *s == stamp
        {
            return Ok(t.clone());
        }
        let t = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("the token file {} cannot be read: {e}", self.path.display()))?
            .trim()
            .to_owned();
        if t.is_empty() {
            return Err(format!("the token file {} is empty", self.path.display()));
        }
        *cached = Some((stamp, t.clone()));
        Ok(t)
    }
}

/// No token: for the calls that need none (health, reflection).
pub struct NoToken;

impl TokenSource for NoToken {
    fn token(&self) -> Result<String, String> {
        Ok(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_read_again_when_it_is_rotated_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let file = TokenFile::new(&path);
        let err = file.token().unwrap_err();
        assert!(err.contains("token"), "{err}");
        std::fs::write(&path, "first.token.x\n").unwrap();
        assert_eq!(file.token().unwrap(), "first.token.x");
        // A rotation writes a new file (here of another length, as a new JWT nearly always is).
        std::fs::write(&path, "second.token.xy\n").unwrap();
        assert_eq!(file.token().unwrap(), "second.token.xy");
        std::fs::write(&path, "\n").unwrap();
        assert!(file.token().unwrap_err().contains("empty"));
    }
}
