//! STS request options: the operator's session tags, source identity and external id, the
//! AWSIAMRole's session policies, and the role-chaining cap. Pure rules, no I/O.

use std::fmt;

use super::arn;
use super::{RequestOptions, SessionTag};
use crate::crd::{MAX_SESSION_SECONDS, MIN_SESSION_SECONDS};

/// AWS limits sessions assumed with role-session credentials (role chaining) to one hour.
pub const CHAINED_MAX_SECONDS: i64 = 3600;
/// Session tag naming the AWSIAMRole's namespace (the key EKS Pod Identity uses too).
pub const TAG_NAMESPACE: &str = "kubernetes-namespace";
/// Session tag naming the AWSIAMRole.
pub const TAG_AWSIAMROLE: &str = "kubernetes-awsiamrole";
/// Session tag naming the cluster (`--cluster-name`).
pub const TAG_CLUSTER: &str = "kubernetes-cluster";
/// STS accepts at most 10 managed session policies.
pub const MAX_POLICY_ARNS: usize = 10;
/// STS accepts an inline session policy of at most 2048 characters.
pub const MAX_POLICY_CHARS: usize = 2048;

/// Why an option cannot be used. Messages are shown in status, Events and start-up errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error(
        "source identity template {0:?} is invalid: use letters, digits, +=,.@_- and the placeholders {{namespace}} and {{name}}"
    )]
    Template(String),
    #[error("source identity {0:?} must be 2 to 64 characters of letters, digits and +=,.@_-")]
    SourceIdentity(String),
    #[error("external id must be 2 to 1224 characters of letters, digits and +=,.@:/_-")]
    ExternalId,
    #[error(
        "cluster name {0:?} is not a valid session tag value (at most 256 letters, digits, spaces and _.:/=+-@)"
    )]
    TagValue(String),
    #[error("spec.policy is not a JSON object: {0}")]
    PolicyJson(String),
    #[error("spec.policy has {0} characters; STS accepts at most 2048")]
    PolicyTooLong(usize),
    #[error("spec.policyARNs has {0} entries; STS accepts at most 10")]
    TooManyPolicyArns(usize),
    #[error(
        "spec.policyARNs entry {0:?} is not a managed policy ARN of the form arn:<partition>:iam::<12-digit account or aws>:policy/<path/><name>"
    )]
    PolicyArn(String),
    #[error(
        "spec.policyARNs entry {arn:?} is in partition {found:?} but the role is in {expected:?}"
    )]
    PolicyArnPartition {
        arn: String,
        found: String,
        expected: String,
    },
}

impl OptionError {
    /// The condition reason for a failure caused by the AWSIAMRole's spec.
    pub fn reason(&self) -> &'static str {
        match self {
            OptionError::SourceIdentity(_) => "InvalidSourceIdentity",
            _ => "InvalidSessionPolicy",
        }
    }
}

fn is_sts_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Namespace,
    Name,
}

/// `--source-identity`: a template with `{namespace}` and `{name}` rendered per AWSIAMRole,
/// e.g. `{namespace}@{name}` or `kube-aws-iam-controller`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceIdentityTemplate {
    text: String,
    parts: Vec<Part>,
}

impl std::str::FromStr for SourceIdentityTemplate {
    type Err = OptionError;
    fn from_str(s: &str) -> Result<Self, OptionError> {
        let invalid = || OptionError::Template(s.to_string());
        let mut parts = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let (name, tail) = after.split_once('}').ok_or_else(invalid)?;
                parts.push(match name {
                    "namespace" => Part::Namespace,
                    "name" => Part::Name,
                    _ => return Err(invalid()),
                });
                rest = tail;
            } else {
                let end = rest.find('{').unwrap_or(rest.len());
                let literal = &rest[..end];
                if !literal.chars().all(is_sts_char) {
                    return Err(invalid());
                }
                parts.push(Part::Literal(literal.to_string()));
                rest = &rest[end..];
            }
        }
        let literal_len: usize = parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.len(),
                _ => 0,
            })
            .sum();
        if parts.is_empty() || literal_len > arn::MAX_SESSION_NAME {
            return Err(invalid());
        }
        let template = SourceIdentityTemplate {
            text: s.to_string(),
            parts,
        };
        // A template without placeholders is a constant: check it once, here.
        if !template
            .parts
            .iter()
            .any(|p| matches!(p, Part::Namespace | Part::Name))
        {
            template.render("ns", "name")?;
        }
        Ok(template)
    }
}

impl fmt::Display for SourceIdentityTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl SourceIdentityTemplate {
    /// The source identity for one AWSIAMRole. Characters STS does not accept become `-`;
    /// more than 64 characters are shortened as session names are (a hash keeps them distinct).
    pub fn render(&self, namespace: &str, name: &str) -> Result<String, OptionError> {
        let full: String = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.as_str(),
                Part::Namespace => namespace,
                Part::Name => name,
            })
            .collect();
        let value = arn::fit(&arn::sanitize(&full), &format!("{namespace}/{name}"));
        if value.len() < 2 {
            return Err(OptionError::SourceIdentity(value));
        }
        Ok(value)
    }
}

/// `--external-id`: 2 to 1224 characters of `[\w+=,.@:/-]`.
pub fn validate_external_id(id: &str) -> Result<(), OptionError> {
    let ok = (2..=1224).contains(&id.chars().count())
        && id.chars().all(|c| is_sts_char(c) || c == ':' || c == '/');
    if ok {
        Ok(())
    } else {
        Err(OptionError::ExternalId)
    }
}

/// A session tag value: at most 256 characters of `[\p{L}\p{Z}\p{N}_.:/=+\-@]`.
pub fn validate_tag_value(value: &str) -> Result<(), OptionError> {
    let ok = value.chars().count() <= 256
        && value
            .chars()
            .all(|c| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(OptionError::TagValue(value.to_string()))
    }
}

/// `--session-tags`: which tags every AWSIAMRole's session carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagSettings {
    /// Adds `kubernetes-cluster=<name>` (`--cluster-name`).
    pub cluster_name: Option<String>,
    /// Marks every tag transitive (`--transitive-session-tags`).
    pub transitive: bool,
}

/// The session tags for one AWSIAMRole and, if asked for, their keys as transitive keys.
pub fn session_tags(
    settings: &TagSettings,
    namespace: &str,
    name: &str,
) -> (Vec<SessionTag>, Vec<String>) {
    let mut tags = vec![
        SessionTag {
            key: TAG_NAMESPACE.into(),
            value: namespace.into(),
        },
        SessionTag {
            key: TAG_AWSIAMROLE.into(),
            value: name.into(),
        },
    ];
    if let Some(cluster) = &settings.cluster_name {
        tags.push(SessionTag {
            key: TAG_CLUSTER.into(),
            value: cluster.clone(),
        });
    }
    let transitive = if settings.transitive {
        tags.iter().map(|t| t.key.clone()).collect()
    } else {
        Vec::new()
    };
    (tags, transitive)
}

/// `spec.policy`: a JSON object of at most 2048 characters. STS checks the grammar itself
/// (`MalformedPolicyDocument`); this catches what can be told without asking it.
pub fn validate_policy(policy: &str) -> Result<(), OptionError> {
    let chars = policy.chars().count();
    if chars > MAX_POLICY_CHARS {
        return Err(OptionError::PolicyTooLong(chars));
    }
    match serde_json::from_str::<serde_json::Value>(policy) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(OptionError::PolicyJson("not an object".into())),
        Err(e) => Err(OptionError::PolicyJson(e.to_string())),
    }
}

/// One `spec.policyARNs` entry: `arn:<partition>:iam::<12-digit account|aws>:policy/<path/><name>`,
/// in the role's partition.
pub fn validate_policy_arn(policy_arn: &str, role_partition: &str) -> Result<(), OptionError> {
    let invalid = || OptionError::PolicyArn(policy_arn.to_string());
    let parts: Vec<&str> = policy_arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return Err(invalid());
    };
    let account_ok =
        account == "aws" || (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()));
    let path_ok = resource.strip_prefix("policy/").is_some_and(|p| {
        p.len() <= 512
            && p.split('/')
                .all(|seg| !seg.is_empty() && seg.len() <= 128 && seg.chars().all(is_sts_char))
    });
    if prefix != "arn" || service != "iam" || !region.is_empty() || !account_ok || !path_ok {
        return Err(invalid());
    }
    if !arn::PARTITIONS.contains(&partition) {
        return Err(invalid());
    }
    if partition != role_partition {
        return Err(OptionError::PolicyArnPartition {
            arn: policy_arn.to_string(),
            found: partition.to_string(),
            expected: role_partition.to_string(),
        });
    }
    Ok(())
}

/// The session length to ask for, and whether the AWSIAMRole asked for more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLength {
    /// `spec.roleSessionDuration`, within STS's bounds.
    pub requested: i64,
    /// What is sent as `DurationSeconds`.
    pub seconds: i64,
}

impl SessionLength {
    /// `requested` within 900..=43200, and at most one hour when `chained`.
    pub fn new(requested: i64, chained: bool) -> Self {
        let requested = requested.clamp(MIN_SESSION_SECONDS, MAX_SESSION_SECONDS);
        let seconds = if chained {
            requested.min(CHAINED_MAX_SECONDS)
        } else {
            requested
        };
        SessionLength { requested, seconds }
    }

    pub fn is_capped(&self) -> bool {
        self.seconds < self.requested
    }
}

/// The operator's STS options (flags), applied to every AWSIAMRole.
#[derive(Clone, Debug, Default)]
pub struct StsOptions {
    /// `--external-id`.
    pub external_id: Option<String>,
    /// `--session-tags` (with `--cluster-name`, `--transitive-session-tags`).
    pub tags: Option<TagSettings>,
    /// `--source-identity`.
    pub source_identity: Option<SourceIdentityTemplate>,
}

impl StsOptions {
    /// The optional request parts for one AWSIAMRole: the operator's options plus its
    /// session policies, validated.
    pub fn request(
        &self,
        namespace: &str,
        name: &str,
        policy: Option<&str>,
        policy_arns: &[String],
        role_partition: &str,
    ) -> Result<RequestOptions, OptionError> {
        if let Some(p) = policy {
            validate_policy(p)?;
        }
        if policy_arns.len() > MAX_POLICY_ARNS {
            return Err(OptionError::TooManyPolicyArns(policy_arns.len()));
        }
        for a in policy_arns {
            validate_policy_arn(a, role_partition)?;
        }
        let (tags, transitive_tag_keys) = match &self.tags {
            Some(settings) => session_tags(settings, namespace, name),
            None => (Vec::new(), Vec::new()),
        };
        let source_identity = self
            .source_identity
            .as_ref()
            .map(|t| t.render(namespace, name))
            .transpose()?;
        Ok(RequestOptions {
            tags,
            transitive_tag_keys,
            source_identity,
            external_id: self.external_id.clone(),
            policy: policy.map(str::to_string),
            policy_arns: policy_arns.to_vec(),
        })
    }
}

/// True for the STS answer to a chained `AssumeRole` that asked for more than one hour.
pub fn is_chaining_limit(code: &str, message: &str) -> bool {
    code == "ValidationError" && message.contains("role chaining")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpl(s: &str) -> SourceIdentityTemplate {
        s.parse().expect("template")
    }

    #[test]
    fn source_identity_template_renders_namespace_and_name() {
        assert_eq!(
            tmpl("{namespace}@{name}")
                .render("team-a", "reader")
                .expect("render"),
            "team-a@reader"
        );
        assert_eq!(
            tmpl("k8s.{name}").render("ns", "app").expect("render"),
            "k8s.app"
        );
        assert_eq!(
            tmpl("kube-aws-iam-controller")
                .render("ns", "app")
                .expect("render"),
            "kube-aws-iam-controller"
        );
    }

    #[test]
    fn invalid_source_identity_templates_are_rejected_at_start() {
        for bad in [
            "",
            "{pod}",
            "{namespace",
            "a b{name}",
            "aws:{name}",
            "x",
            &"y".repeat(65),
        ] {
            assert!(
                bad.parse::<SourceIdentityTemplate>().is_err(),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn long_source_identities_are_shortened_deterministically_and_distinctly() {
        let t = tmpl("{namespace}@{name}");
        let ns = "n".repeat(40);
        let a = t.render(&ns, &"x".repeat(60)).expect("a");
        let b = t.render(&ns, &format!("{}y", "x".repeat(59))).expect("b");
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(a, t.render(&ns, &"x".repeat(60)).expect("again"));
        assert!(a.chars().all(is_sts_char));
    }

    #[test]
    fn too_short_source_identity_is_an_error_for_that_role() {
        let e = tmpl("{name}").render("ns", "a").expect_err("1 character");
        assert_eq!(e.reason(), "InvalidSourceIdentity");
    }

    #[test]
    fn tags_name_namespace_role_and_cluster_and_are_transitive_on_request() {
        let settings = TagSettings {
            cluster_name: Some("prod-eu".into()),
            transitive: false,
        };
        let (tags, transitive) = session_tags(&settings, "team", "reader");
        let pairs: Vec<(&str, &str)> = tags
            .iter()
            .map(|t| (t.key.as_str(), t.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("kubernetes-namespace", "team"),
                ("kubernetes-awsiamrole", "reader"),
                ("kubernetes-cluster", "prod-eu"),
            ]
        );
        assert!(transitive.is_empty());
        let (tags, transitive) = session_tags(
            &TagSettings {
                cluster_name: None,
                transitive: true,
            },
            "team",
            "reader",
        );
        assert_eq!(tags.len(), 2);
        assert_eq!(
            transitive,
            vec!["kubernetes-namespace", "kubernetes-awsiamrole"]
        );
    }

    #[test]
    fn cluster_names_and_external_ids_follow_sts_rules() {
        assert!(validate_tag_value("prod eu-1/blue@x").is_ok());
        assert!(validate_tag_value("bad,comma").is_err());
        assert!(validate_tag_value(&"c".repeat(257)).is_err());
        assert!(validate_external_id("tenant:42/ab").is_ok());
        assert!(validate_external_id("x").is_err());
        assert!(validate_external_id("no spaces").is_err());
    }

    #[test]
    fn policy_arns_must_be_managed_policies_in_the_roles_partition() {
        for ok in [
            "arn:aws:iam::aws:policy/ReadOnlyAccess",
            "arn:aws:iam::123456789012:policy/team/s3-read",
            "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        ] {
            assert_eq!(validate_policy_arn(ok, "aws"), Ok(()), "{ok}");
        }
        assert_eq!(
            validate_policy_arn("arn:aws-cn:iam::aws:policy/ReadOnlyAccess", "aws-cn"),
            Ok(())
        );
        for bad in [
            "ReadOnlyAccess",
            "arn:aws:iam::aws:role/ReadOnlyAccess",
            "arn:aws:iam::12345:policy/x",
            "arn:aws:s3::aws:policy/x",
            "arn:aws:iam:us-east-1:aws:policy/x",
            "arn:aws:iam::aws:policy/",
            "arn:aws:iam::aws:policy/a//b",
            "arn:aws-iso:iam::aws:policy/x",
        ] {
            assert!(
                matches!(
                    validate_policy_arn(bad, "aws"),
                    Err(OptionError::PolicyArn(_))
                ),
                "{bad} must be rejected"
            );
        }
        assert!(matches!(
            validate_policy_arn("arn:aws-us-gov:iam::aws:policy/ReadOnlyAccess", "aws"),
            Err(OptionError::PolicyArnPartition { .. })
        ));
    }

    #[test]
    fn inline_policies_must_be_json_objects_within_the_sts_limit() {
        assert!(validate_policy(r#"{"Version":"2012-10-17","Statement":[]}"#).is_ok());
        assert!(matches!(
            validate_policy("[1]"),
            Err(OptionError::PolicyJson(_))
        ));
        assert!(matches!(
            validate_policy("{not json"),
            Err(OptionError::PolicyJson(_))
        ));
        let long = format!(r#"{{"Sid":"{}"}}"#, "x".repeat(2048));
        assert!(matches!(
            validate_policy(&long),
            Err(OptionError::PolicyTooLong(_))
        ));
    }

    #[test]
    fn request_combines_operator_options_and_spec_policies() {
        let opts = StsOptions {
            external_id: Some("ext-1".into()),
            tags: Some(TagSettings {
                cluster_name: Some("c1".into()),
                transitive: true,
            }),
            source_identity: Some(tmpl("{namespace}.{name}")),
        };
        let policy = r#"{"Version":"2012-10-17"}"#;
        let arns = vec!["arn:aws:iam::aws:policy/ReadOnlyAccess".to_string()];
        let req = opts
            .request("ns", "app", Some(policy), &arns, "aws")
            .expect("request");
        assert_eq!(req.external_id.as_deref(), Some("ext-1"));
        assert_eq!(req.source_identity.as_deref(), Some("ns.app"));
        assert_eq!(req.tags.len(), 3);
        assert_eq!(req.transitive_tag_keys.len(), 3);
        assert_eq!(req.policy.as_deref(), Some(policy));
        assert_eq!(req.policy_arns, arns);
        let none = StsOptions::default()
            .request("ns", "app", None, &[], "aws")
            .expect("request");
        assert_eq!(none, RequestOptions::default());
        let eleven = vec![arns[0].clone(); 11];
        assert_eq!(
            StsOptions::default().request("ns", "app", None, &eleven, "aws"),
            Err(OptionError::TooManyPolicyArns(11))
        );
    }

    #[test]
    fn chained_sessions_are_capped_at_one_hour() {
        let s = SessionLength::new(7200, true);
        assert_eq!((s.requested, s.seconds, s.is_capped()), (7200, 3600, true));
        let s = SessionLength::new(1800, true);
        assert_eq!((s.seconds, s.is_capped()), (1800, false));
        let s = SessionLength::new(7200, false);
        assert_eq!((s.seconds, s.is_capped()), (7200, false));
        assert_eq!(SessionLength::new(60, false).seconds, 900);
    }

    #[test]
    fn the_sts_chaining_answer_is_recognised() {
        assert!(is_chaining_limit(
            "ValidationError",
            "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining."
        ));
        assert!(!is_chaining_limit(
            "ValidationError",
            "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."
        ));
    }
}
