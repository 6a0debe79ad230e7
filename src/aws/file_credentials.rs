//! The controller's own credentials from a mounted `credentials.json` (the process-credentials
//! JSON the controller writes into every Secret), read by the controller itself: no
//! `credential_process`, so no shell and no `cat` in the image.
//!
//! The SDK's identity cache calls [`FileCredentials`] again shortly before the credentials it
//! returned expire; by then the kubelet has replaced the file with the renewed Secret, so the
//! controller renews its own credentials from its own Secret indefinitely.

use std::path::{Path, PathBuf};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError};
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// Largest file accepted (a credentials.json is well under 4 KiB).
const MAX_BYTES: u64 = 64 * 1024;

/// `credentials.json` in the AWS process-credentials format, Version 1 (also read by the
/// `serve-credentials` sidecar).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ProcessCredentials {
    pub(crate) version: u32,
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) session_token: Option<String>,
    pub(crate) expiration: Option<DateTime<Utc>>,
}

/// Reads credentials from a process-credentials JSON file on every call.
#[derive(Clone, Debug)]
pub struct FileCredentials {
    path: PathBuf,
}

impl FileCredentials {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The credentials in the file now. Errors name the file and the problem, never a value.
    pub fn read(&self) -> provider::Result {
        let text = read_bounded(&self.path).map_err(|e| {
            CredentialsError::provider_error(format!("{}: {e}", self.path.display()))
        })?;
        parse(&text, &self.path)
    }
}

fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    Ok(text)
}

fn parse(text: &str, path: &Path) -> provider::Result {
    let bad = |what: String| {
        CredentialsError::invalid_configuration(format!("{}: {what}", path.display()))
    };
    // serde's messages quote no values for these field types, but keep only the position.
    let c: ProcessCredentials = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "not process-credentials JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if c.version != 1 {
        return Err(bad(format!("unsupported Version {}", c.version)));
    }
    if c.access_key_id.is_empty() || c.secret_access_key.is_empty() {
        return Err(bad("AccessKeyId or SecretAccessKey is empty".into()));
    }
    if let Some(expiration) = c.expiration
        && expiration <= Utc::now()
    {
        // Expired keys would only get ExpiredToken from STS; say what is wrong instead.
        return Err(CredentialsError::provider_error(format!(
            "{}: credentials expired at {expiration} (is the controller's own Secret renewed?)",
            path.display()
        )));
    }
    Ok(Credentials::new(
        c.access_key_id,
        c.secret_access_key,
        c.session_token,
        c.expiration.map(std::time::SystemTime::from),
        "kube-aws-iam-controller-file",
    ))
}

impl ProvideCredentials for FileCredentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::ready(self.read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> FileCredentials {
        let path = dir.join("credentials.json");
        std::fs::write(&path, text).expect("write");
        FileCredentials::new(path)
    }

    #[test]
    fn valid_process_credentials_are_read_with_their_expiry() {
        let dir = tempfile::tempdir().expect("tmp");
        let exp = Utc::now() + chrono::Duration::minutes(30);
        let f = write(
            dir.path(),
            &format!(
                r#"{{"Version":1,"AccessKeyId":"AKID","SecretAccessKey":"s3cr3t","SessionToken":"tok","Expiration":"{}"}}"#,
                exp.to_rfc3339()
            ),
        );
        let c = f.read().expect("credentials");
        assert_eq!(c.access_key_id(), "AKID");
        assert_eq!(c.session_token(), Some("tok"));
        let got: DateTime<Utc> = c.expiry().expect("expiry").into();
        assert_eq!(got.timestamp(), exp.timestamp());
    }

    #[test]
    fn the_file_is_read_again_on_every_call() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = write(
            dir.path(),
            r#"{"Version":1,"AccessKeyId":"FIRST","SecretAccessKey":"a"}"#,
        );
        assert_eq!(f.read().expect("first").access_key_id(), "FIRST");
        write(
            dir.path(),
            r#"{"Version":1,"AccessKeyId":"SECOND","SecretAccessKey":"b"}"#,
        );
        assert_eq!(f.read().expect("second").access_key_id(), "SECOND");
    }

    #[test]
    fn bad_files_give_errors_that_name_the_file_and_no_secret() {
        let dir = tempfile::tempdir().expect("tmp");
        let past = (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
        for (text, says) in [
            ("not json s3cr3t", "not process-credentials JSON"),
            (
                r#"{"Version":2,"AccessKeyId":"AKID","SecretAccessKey":"s3cr3t"}"#,
                "unsupported Version 2",
            ),
            (
                r#"{"Version":1,"AccessKeyId":"","SecretAccessKey":"s3cr3t"}"#,
                "is empty",
            ),
            (
                &format!(
                    r#"{{"Version":1,"AccessKeyId":"AKID","SecretAccessKey":"s3cr3t","Expiration":"{past}"}}"#
                ),
                "expired",
            ),
        ] {
            let f = write(dir.path(), text);
            let err = format!("{:?}", f.read().expect_err(text));
            assert!(err.contains(says), "{err}");
            assert!(err.contains("credentials.json"), "{err}");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
        let missing = FileCredentials::new(dir.path().join("absent.json"));
        assert!(format!("{:?}", missing.read().expect_err("missing")).contains("absent.json"));
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = write(dir.path(), &"x".repeat(MAX_BYTES as usize + 10));
        assert!(format!("{:?}", f.read().expect_err("big")).contains("larger than"));
    }
}
