//! Role references, role ARNs and STS session names: pure rules, no I/O.

use std::fmt;

/// Partitions whose IAM ARNs the controller accepts.
pub const PARTITIONS: [&str; 3] = ["aws", "aws-cn", "aws-us-gov"];

/// A validated IAM role ARN: `arn:<partition>:iam::<account>:role/<path/><name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoleArn {
    pub partition: String,
    pub account: String,
    /// Path and name after `role/`, e.g. `team/app`.
    pub path_and_name: String,
}

impl RoleArn {
    /// The role's name (last path segment).
    pub fn name(&self) -> &str {
        self.path_and_name
            .rsplit('/')
            .next()
            .unwrap_or(&self.path_and_name)
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:iam::{}:role/{}",
            self.partition, self.account, self.path_and_name
        )
    }
}

/// The prefix that bare role names are appended to, e.g. `arn:aws:iam::123456789012:role/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseRoleArn {
    pub partition: String,
    pub account: String,
    /// Path prefix after `role/`, empty or ending in `/`.
    pub path: String,
}

impl fmt::Display for BaseRoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:iam::{}:role/{}",
            self.partition, self.account, self.path
        )
    }
}

/// Why a role reference or ARN is not usable. Messages are shown to users in status and Events.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArnError {
    #[error(
        "{0:?} is not an IAM role ARN of the form arn:<partition>:iam::<12-digit account>:role/<name>"
    )]
    Malformed(String),
    #[error("partition {0:?} is not supported (supported: aws, aws-cn, aws-us-gov)")]
    Partition(String),
    #[error(
        "role name or path {0:?} is invalid: segments must be 1-64 characters of letters, digits and +=,.@_-, at most 512 in all"
    )]
    Name(String),
    #[error(
        "role reference {0:?} is a bare name but the controller has no base role ARN (--base-role-arn)"
    )]
    NoBase(String),
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

fn valid_path_and_name(p: &str) -> bool {
    p.len() <= 512 && p.split('/').all(valid_segment)
}

fn split_arn(s: &str) -> Result<(String, String, String), ArnError> {
    let malformed = || ArnError::Malformed(s.to_string());
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = parts[..] else {
        return Err(malformed());
    };
    if arn != "arn"
        || service != "iam"
        || !region.is_empty()
        || account.len() != 12
        || !account.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(malformed());
    }
    if !PARTITIONS.contains(&partition) {
        return Err(ArnError::Partition(partition.to_string()));
    }
    let rest = resource.strip_prefix("role/").ok_or_else(malformed)?;
    Ok((partition.to_string(), account.to_string(), rest.to_string()))
}

impl std::str::FromStr for RoleArn {
    type Err = ArnError;
    fn from_str(s: &str) -> Result<Self, ArnError> {
        let (partition, account, rest) = split_arn(s)?;
        if !valid_path_and_name(&rest) {
            return Err(ArnError::Name(rest));
        }
        Ok(RoleArn {
            partition,
            account,
            path_and_name: rest,
        })
    }
}

impl std::str::FromStr for BaseRoleArn {
    type Err = ArnError;
    /// Accepts `arn:aws:iam::123456789012:role/` with an optional path, with or without the trailing `/`.
    fn from_str(s: &str) -> Result<Self, ArnError> {
        let with_slash = if s.ends_with('/') {
            s.to_string()
        } else {
            format!("{s}/")
        };
        let (partition, account, rest) = split_arn(&with_slash)?;
        let path = rest.trim_end_matches('/');
        if !path.is_empty() && !valid_path_and_name(path) {
            return Err(ArnError::Name(path.to_string()));
        }
        Ok(BaseRoleArn {
            partition,
            account,
            path: if path.is_empty() {
                String::new()
            } else {
                format!("{path}/")
            },
        })
    }
}

/// Resolves an `AWSIAMRole`'s `spec.roleReference`: a full ARN passes through (validated);
/// a name or `path/name` is appended to the base role ARN.
pub fn resolve(reference: &str, base: Option<&BaseRoleArn>) -> Result<RoleArn, ArnError> {
    let reference = reference.trim();
    if reference.starts_with("arn:") {
        return reference.parse();
    }
    let rel = reference.trim_start_matches('/');
    if !valid_path_and_name(rel) {
        return Err(ArnError::Name(reference.to_string()));
    }
    let base = base.ok_or_else(|| ArnError::NoBase(reference.to_string()))?;
    // The base's path and the name are valid each; together they may be too long.
    let path_and_name = format!("{}{rel}", base.path);
    if !valid_path_and_name(&path_and_name) {
        return Err(ArnError::Name(path_and_name));
    }
    Ok(RoleArn {
        partition: base.partition.clone(),
        account: base.account.clone(),
        path_and_name,
    })
}

/// Derives the base role ARN from the ARN the controller itself runs as
/// (`arn:aws:sts::123:assumed-role/NAME/SESSION`, `arn:aws:iam::123:role/path/NAME`,
/// `arn:aws:iam::123:user/NAME`, or an instance profile ARN): same partition and account, no path.
pub fn base_from_identity(arn: &str) -> Result<BaseRoleArn, ArnError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [_, partition, _, _, account, _] = parts[..] else {
        return Err(ArnError::Malformed(arn.to_string()));
    };
    format!("arn:{partition}:iam::{account}:role/").parse()
}

/// Maximum length STS allows for `RoleSessionName`.
pub const MAX_SESSION_NAME: usize = 64;

/// The `RoleSessionName` for an AWSIAMRole: `<namespace>@<name>`, so CloudTrail shows
/// `assumed-role/<role>/<namespace>@<name>`. Characters outside `[\w+=,.@-]` become `-`.
/// Longer than 64 characters: the first 55 characters, `-`, and 8 hex digits of a
/// FNV-1a hash of `<namespace>/<name>`, so shortened names stay unique and deterministic.
pub fn session_name(namespace: &str, name: &str) -> String {
    fit(
        &sanitize(&format!("{namespace}@{name}")),
        &format!("{namespace}/{name}"),
    )
}

/// Replaces every character outside `[\w+=,.@-]` (what STS accepts in session names and
/// source identities) with `-`.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@_-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `text` (sanitized, so ASCII) if it has at most 64 characters; otherwise its first 55, `-`,
/// and 8 hex digits of a FNV-1a hash of `key`: deterministic, and distinct for distinct keys.
pub fn fit(text: &str, key: &str) -> String {
    if text.len() <= MAX_SESSION_NAME {
        return text.to_string();
    }
    let hash = fnv1a(key.as_bytes());
    let head: String = text.chars().take(MAX_SESSION_NAME - 9).collect();
    format!("{head}-{:08x}", hash as u32)
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BaseRoleArn {
        "arn:aws:iam::123456789012:role/".parse().expect("base")
    }

    #[test]
    fn bare_name_is_appended_to_the_base_arn() {
        let arn = resolve("app", Some(&base())).expect("resolve");
        assert_eq!(arn.to_string(), "arn:aws:iam::123456789012:role/app");
        assert_eq!(arn.name(), "app");
    }

    #[test]
    fn name_with_a_path_keeps_the_path() {
        let arn = resolve("team/sub/app", Some(&base())).expect("resolve");
        assert_eq!(
            arn.to_string(),
            "arn:aws:iam::123456789012:role/team/sub/app"
        );
        assert_eq!(arn.name(), "app");
    }

    #[test]
    fn base_arn_accepts_paths_and_missing_trailing_slash() {
        let b: BaseRoleArn = "arn:aws-cn:iam::123456789012:role/k8s"
            .parse()
            .expect("base");
        assert_eq!(b.to_string(), "arn:aws-cn:iam::123456789012:role/k8s/");
        let b: BaseRoleArn = "arn:aws:iam::123456789012:role".parse().expect("base");
        assert_eq!(b.to_string(), "arn:aws:iam::123456789012:role/");
        assert_eq!(
            resolve(
                "x/app",
                Some(
                    &"arn:aws-us-gov:iam::123456789012:role/k8s/"
                        .parse()
                        .expect("b")
                )
            )
            .expect("resolve")
            .to_string(),
            "arn:aws-us-gov:iam::123456789012:role/k8s/x/app"
        );
    }

    #[test]
    fn full_arns_pass_through_in_every_partition() {
        for p in PARTITIONS {
            let s = format!("arn:{p}:iam::210987654321:role/path/app");
            assert_eq!(resolve(&s, None).expect("arn").to_string(), s);
        }
    }

    #[test]
    fn invalid_references_say_what_is_wrong() {
        assert!(matches!(resolve("app", None), Err(ArnError::NoBase(_))));
        assert!(matches!(
            resolve("arn:aws:iam::12345:role/app", None),
            Err(ArnError::Malformed(_))
        ));
        assert!(matches!(
            resolve("arn:aws-iso:iam::123456789012:role/app", None),
            Err(ArnError::Partition(_))
        ));
        assert!(matches!(
            resolve("arn:aws:iam::123456789012:user/app", None),
            Err(ArnError::Malformed(_))
        ));
        assert!(matches!(
            resolve("team//app", Some(&base())),
            Err(ArnError::Name(_))
        ));
        assert!(matches!(
            resolve("bad name", Some(&base())),
            Err(ArnError::Name(_))
        ));
        assert!(matches!(
            resolve(&"a".repeat(65), Some(&base())),
            Err(ArnError::Name(_))
        ));
    }

    #[test]
    fn a_name_too_long_under_the_base_path_is_refused_not_resolved_to_an_arn_that_does_not_parse() {
        // Found by tests/fuzz.rs: both parts valid, 512 characters in all exceeded.
        let path = vec!["p".repeat(60); 8].join("/");
        let long: BaseRoleArn = format!("arn:aws:iam::123456789012:role/{path}")
            .parse()
            .expect("base");
        let name = "n".repeat(64);
        assert!(matches!(
            resolve(&name, Some(&long)),
            Err(ArnError::Name(p)) if p.len() > 512
        ));
        let ok = resolve("app", Some(&long)).expect("short enough");
        assert_eq!(ok.to_string().parse::<RoleArn>(), Ok(ok));
    }

    #[test]
    fn base_is_derived_from_the_callers_identity() {
        for id in [
            "arn:aws:sts::123456789012:assumed-role/ctrl/i-0abc",
            "arn:aws:iam::123456789012:user/someone",
            "arn:aws:iam::123456789012:instance-profile/worker",
        ] {
            assert_eq!(
                base_from_identity(id).expect("base").to_string(),
                "arn:aws:iam::123456789012:role/"
            );
        }
        assert!(base_from_identity("nonsense").is_err());
    }

    #[test]
    fn session_name_names_namespace_and_object() {
        assert_eq!(session_name("team-a", "s3-reader"), "team-a@s3-reader");
    }

    #[test]
    fn long_session_names_are_shortened_deterministically_and_uniquely() {
        let ns = "n".repeat(40);
        let a = session_name(&ns, &"x".repeat(60));
        let b = session_name(&ns, &format!("{}y", "x".repeat(59)));
        assert_eq!(a.len(), MAX_SESSION_NAME);
        assert_eq!(a, session_name(&ns, &"x".repeat(60)));
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{ns}@")));
    }

    #[test]
    fn session_names_only_use_characters_sts_accepts() {
        let s = session_name("ns", "a:b/c");
        assert!(
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
        );
    }
}
