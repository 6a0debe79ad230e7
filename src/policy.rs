//! Who may get which role: the namespace role policy (kiam's `iam.amazonaws.com/permitted` and
//! kube2iam's `iam.amazonaws.com/allowed-roles` annotations), the controller's own identity that
//! is never handed out, and the account allow-list. Pure: annotations and ARNs in, a verdict out.

use std::collections::BTreeMap;
use std::fmt;

use regex::{Regex, RegexBuilder};

use crate::aws::arn::{BaseRoleArn, RoleArn};

/// kiam's Namespace annotation: a regular expression, anchored `^…$`, for the roles the
/// namespace may assume.
pub const PERMITTED_ANNOTATION: &str = "iam.amazonaws.com/permitted";
/// kube2iam's Namespace annotation: a JSON list of role names or ARNs, `*` as a wildcard.
pub const ALLOWED_ROLES_ANNOTATION: &str = "iam.amazonaws.com/allowed-roles";

/// Compiled size limit for a namespace's regular expression: annotation editors cannot make
/// the controller spend unbounded memory or time on one.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Longest annotation value considered (Kubernetes allows 256 KiB for all annotations).
const MAX_ANNOTATION_BYTES: usize = 16 * 1024;
/// At most this many patterns of `allowed-roles` are read.
const MAX_PATTERNS: usize = 256;

/// How the namespace policy is applied (`--namespace-policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyMode {
    /// A namespace gets only the roles its annotations permit; without annotations, none.
    #[default]
    Enforce,
    /// Issue as with `none`, but report on each AWSIAMRole what `enforce` would deny.
    Audit,
    /// No namespace policy (the Go controller's behaviour).
    None,
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Audit => "audit",
            PolicyMode::None => "none",
        }
    }
}

/// Why a role is refused. The message is shown in status and Events; it names the role and
/// the rule, never a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub message: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The outcome for one role in one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Issue.
    Permitted,
    /// Do not issue; withdraw credentials already issued.
    Denied(Denial),
    /// Issue (audit mode), but report that `enforce` would deny.
    WouldDeny(Denial),
}

/// The controller's own identities: never issued to any AWSIAMRole but its own bootstrap one.
/// IAM role names are unique within an account whatever their path, and STS reports an
/// assumed role without its path, so roles are compared by partition, account and name
/// (case-insensitively, as IAM does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guard {
    protected: Vec<ProtectedRole>,
    /// Accounts roles may live in; empty: any.
    allowed_accounts: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ProtectedRole {
    partition: String,
    account: String,
    name: String,
    /// Where the controller learned it, for the message.
    what: &'static str,
}

impl Guard {
    pub fn new(allowed_accounts: Vec<String>) -> Self {
        Guard {
            protected: Vec::new(),
            allowed_accounts,
        }
    }

    /// Protects a role given by its ARN (`--assume-role`).
    pub fn protect_role(&mut self, arn: &RoleArn, what: &'static str) {
        self.push(ProtectedRole {
            partition: arn.partition.clone(),
            account: arn.account.clone(),
            name: arn.name().to_string(),
            what,
        });
    }

    /// Protects the role behind the identity STS reports for the controller
    /// (`arn:aws:sts::123:assumed-role/NAME/SESSION` or `arn:aws:iam::123:role/path/NAME`).
    /// Users and other identities carry no role: nothing to protect. Returns whether a role
    /// was found.
    pub fn protect_identity(&mut self, identity_arn: &str, what: &'static str) -> bool {
        let parts: Vec<&str> = identity_arn.splitn(6, ':').collect();
        let [_, partition, service, _, account, resource] = parts[..] else {
            return false;
        };
        let name = match service {
            "sts" => resource
                .strip_prefix("assumed-role/")
                .and_then(|r| r.split('/').next()),
            "iam" => resource
                .strip_prefix("role/")
                .and_then(|r| r.rsplit('/').next()),
            _ => None,
        };
        match name {
            Some(name) if !name.is_empty() => {
                self.push(ProtectedRole {
                    partition: partition.to_string(),
                    account: account.to_string(),
                    name: name.to_string(),
                    what,
                });
                true
            }
            _ => false,
        }
    }

    fn push(&mut self, role: ProtectedRole) {
        if !self.protected.iter().any(|p| p.same_role(&role)) {
            self.protected.push(role);
        }
    }

    /// Refuses the controller's own identities and roles outside the allowed accounts,
    /// whatever the namespace policy says.
    pub fn check(&self, arn: &RoleArn) -> Result<(), Denial> {
        if let Some(p) = self.protected.iter().find(|p| p.is(arn)) {
            return Err(Denial {
                message: format!(
                    "role {arn} is the controller's own identity ({}) and is never issued to an AWSIAMRole",
                    p.what
                ),
            });
        }
        if !self.allowed_accounts.is_empty() && !self.allowed_accounts.contains(&arn.account) {
            return Err(Denial {
                message: format!(
                    "role {arn} is in account {}, which is not in --allowed-account-ids",
                    arn.account
                ),
            });
        }
        Ok(())
    }
}

impl ProtectedRole {
    fn is(&self, arn: &RoleArn) -> bool {
        self.partition == arn.partition
            && self.account == arn.account
            && self.name.eq_ignore_ascii_case(arn.name())
    }

    fn same_role(&self, other: &ProtectedRole) -> bool {
        self.partition == other.partition
            && self.account == other.account
            && self.name.eq_ignore_ascii_case(&other.name)
    }
}

/// The role policy one Namespace's annotations express.
#[derive(Clone, Debug)]
pub struct NamespacePolicy {
    permitted: Option<Result<Regex, String>>,
    allowed: Option<Result<Vec<Glob>, String>>,
}

/// One pattern of `allowed-roles`: an ARN pattern is matched against the role's ARN; a bare
/// one against the role's name and path in the base role ARN's account and path, and against
/// nothing else (kube2iam puts the base ARN in front of it).
#[derive(Clone, Debug)]
struct Glob {
    arn: bool,
    regex: Regex,
}

impl NamespacePolicy {
    /// Reads the two annotations; malformed values are kept as errors (they permit nothing).
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Self {
        NamespacePolicy {
            permitted: annotations
                .get(PERMITTED_ANNOTATION)
                .map(|v| compile_permitted(v)),
            allowed: annotations
                .get(ALLOWED_ROLES_ANNOTATION)
                .map(|v| compile_allowed(v)),
        }
    }

    /// True when the namespace carries neither annotation.
    pub fn is_empty(&self) -> bool {
        self.permitted.is_none() && self.allowed.is_none()
    }

    /// Whether the namespace permits `arn`. Either annotation permitting is enough; a
    /// namespace with neither permits nothing. `base` turns bare names in `allowed-roles`
    /// into ARNs, as kube2iam does.
    pub fn permits(
        &self,
        namespace: &str,
        arn: &RoleArn,
        base: Option<&BaseRoleArn>,
    ) -> Result<(), Denial> {
        if self.is_empty() {
            return Err(Denial {
                message: format!(
                    "namespace {namespace} has no role policy: annotate it with {PERMITTED_ANNOTATION} (a regular expression) or {ALLOWED_ROLES_ANNOTATION} (a JSON list) to permit role {arn}"
                ),
            });
        }
        let full = arn.to_string();
        let mut problems = Vec::new();
        if let Some(permitted) = &self.permitted {
            match permitted {
                Ok(re) if re.is_match(&full) || re.is_match(&arn.path_and_name) => return Ok(()),
                Ok(_) => {}
                Err(e) => problems.push(format!("{PERMITTED_ANNOTATION} is invalid: {e}")),
            }
        }
        if let Some(allowed) = &self.allowed {
            match allowed {
                Ok(globs) => {
                    let name_arn = base.map(|b| format!("{b}"));
                    // The role's name and path under the base ARN, if it is in its account and path.
                    let rel = name_arn.as_deref().and_then(|b| full.strip_prefix(b));
                    if globs.iter().any(|g| match (g.arn, rel) {
                        (true, _) => g.regex.is_match(&full),
                        (false, Some(rel)) => g.regex.is_match(rel),
                        (false, None) => false,
                    }) {
                        return Ok(());
                    }
                }
                Err(e) => problems.push(format!("{ALLOWED_ROLES_ANNOTATION} is invalid: {e}")),
            }
        }
        let mut message = format!("role {full} is not permitted in namespace {namespace}");
        if !problems.is_empty() {
            message.push_str(" (");
            message.push_str(&problems.join("; "));
            message.push(')');
        }
        Err(Denial { message })
    }
}

fn compile_permitted(value: &str) -> Result<Regex, String> {
    if value.len() > MAX_ANNOTATION_BYTES {
        return Err(format!("longer than {MAX_ANNOTATION_BYTES} bytes"));
    }
    RegexBuilder::new(&format!("^(?:{value})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => "the regular expression is too large".to_string(),
            // The syntax error's last line names the problem; the lines above quote the pattern.
            other => format!(
                "invalid regular expression: {}",
                last_line(&other.to_string()).trim_start_matches("error: ")
            ),
        })
}

/// kube2iam's glob: `*` matches any run of characters (slashes too); nothing else is special.
fn compile_allowed(value: &str) -> Result<Vec<Glob>, String> {
    if value.len() > MAX_ANNOTATION_BYTES {
        return Err(format!("longer than {MAX_ANNOTATION_BYTES} bytes"));
    }
    // serde's message may quote the value (`invalid type: string "…"`): keep it short.
    let patterns: Vec<String> = serde_json::from_str(value).map_err(|e| {
        format!(
            "not a JSON list of strings: {}",
            shortened(&e.to_string(), 200)
        )
    })?;
    if patterns.len() > MAX_PATTERNS {
        return Err(format!("more than {MAX_PATTERNS} patterns"));
    }
    patterns
        .iter()
        .map(|p| {
            // A run of `*` is one `*`: `team/**` stays one small regular expression.
            let pieces: Vec<&str> = p.trim().split('*').collect();
            let last = pieces.len() - 1;
            let body = pieces
                .iter()
                .enumerate()
                .filter(|(i, piece)| !piece.is_empty() || *i == 0 || *i == last)
                .map(|(_, piece)| regex::escape(piece))
                .collect::<Vec<_>>()
                .join(".*");
            RegexBuilder::new(&format!("^{body}$"))
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map(|regex| Glob {
                    arn: p.trim().starts_with("arn:"),
                    regex,
                })
                .map_err(|_| format!("pattern {:?} is too large", shortened(p, 64)))
        })
        .collect()
}

/// `s` cut to `max` characters, `…` marking the cut: annotation values are quoted in
/// denials, which must stay short whatever the annotation holds.
fn shortened(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn last_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_string()
}

/// What the controller knows when it judges one AWSIAMRole.
pub struct PolicyInput<'a> {
    pub mode: PolicyMode,
    pub namespace: &'a str,
    /// The Namespace's annotations; `None` if the Namespace is not (yet) known.
    pub annotations: Option<&'a BTreeMap<String, String>>,
    pub arn: &'a RoleArn,
    pub base: Option<&'a BaseRoleArn>,
    pub guard: &'a Guard,
    /// The AWSIAMRole is the controller's own (`--own-awsiamrole`, the one `bootstrap`
    /// writes): neither the guard nor the namespace policy applies to it.
    pub own: bool,
}

/// The verdict for one AWSIAMRole: the controller's own AWSIAMRole is always permitted; any
/// other gets the guard first (every mode), then the namespace policy.
pub fn evaluate(input: &PolicyInput<'_>) -> Verdict {
    if input.own {
        return Verdict::Permitted;
    }
    if let Err(denial) = input.guard.check(input.arn) {
        return Verdict::Denied(denial);
    }
    if input.mode == PolicyMode::None {
        return Verdict::Permitted;
    }
    let empty = BTreeMap::new();
    let policy = NamespacePolicy::from_annotations(input.annotations.unwrap_or(&empty));
    match policy.permits(input.namespace, input.arn, input.base) {
        Ok(()) => Verdict::Permitted,
        Err(denial) if input.mode == PolicyMode::Audit => Verdict::WouldDeny(denial),
        Err(denial) => Verdict::Denied(denial),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn(s: &str) -> RoleArn {
        s.parse().expect("arn")
    }

    fn base() -> BaseRoleArn {
        "arn:aws:iam::123456789012:role/".parse().expect("base")
    }

    fn ns(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn verdict(mode: PolicyMode, ann: &BTreeMap<String, String>, role: &str) -> Verdict {
        evaluate(&PolicyInput {
            mode,
            namespace: "team",
            annotations: Some(ann),
            arn: &arn(role),
            base: Some(&base()),
            guard: &Guard::default(),
            own: false,
        })
    }

    const APP: &str = "arn:aws:iam::123456789012:role/app";
    const TEAM_APP: &str = "arn:aws:iam::123456789012:role/team/app";

    #[test]
    fn a_namespace_without_annotations_gets_no_role_under_enforce() {
        let v = verdict(PolicyMode::Enforce, &ns(&[]), APP);
        let Verdict::Denied(d) = v else {
            panic!("denied expected, got {v:?}")
        };
        assert!(d.message.contains("has no role policy"), "{d}");
        assert!(d.message.contains(PERMITTED_ANNOTATION), "{d}");
    }

    #[test]
    fn audit_reports_what_enforce_would_deny_and_none_permits() {
        assert!(matches!(
            verdict(PolicyMode::Audit, &ns(&[]), APP),
            Verdict::WouldDeny(_)
        ));
        assert_eq!(verdict(PolicyMode::None, &ns(&[]), APP), Verdict::Permitted);
    }

    #[test]
    fn kiam_regex_is_anchored_and_matches_the_arn_or_the_name_with_path() {
        let by_name = ns(&[(PERMITTED_ANNOTATION, "app")]);
        assert_eq!(
            verdict(PolicyMode::Enforce, &by_name, APP),
            Verdict::Permitted
        );
        // Anchored: `app` does not permit `app-admin` nor `team/app`.
        assert!(matches!(
            verdict(
                PolicyMode::Enforce,
                &by_name,
                "arn:aws:iam::123456789012:role/app-admin"
            ),
            Verdict::Denied(_)
        ));
        assert!(matches!(
            verdict(PolicyMode::Enforce, &by_name, TEAM_APP),
            Verdict::Denied(_)
        ));
        let by_path = ns(&[(PERMITTED_ANNOTATION, "team/.*")]);
        assert_eq!(
            verdict(PolicyMode::Enforce, &by_path, TEAM_APP),
            Verdict::Permitted
        );
        let by_arn = ns(&[(
            PERMITTED_ANNOTATION,
            r"arn:aws:iam::123456789012:role/(app|db)",
        )]);
        assert_eq!(
            verdict(PolicyMode::Enforce, &by_arn, APP),
            Verdict::Permitted
        );
        // An alternation cannot escape the anchors.
        let alt = ns(&[(PERMITTED_ANNOTATION, "x|app")]);
        assert!(matches!(
            verdict(
                PolicyMode::Enforce,
                &alt,
                "arn:aws:iam::123456789012:role/app-admin"
            ),
            Verdict::Denied(_)
        ));
    }

    #[test]
    fn kube2iam_globs_match_arns_and_bare_names_in_the_base_account() {
        let globs = ns(&[(ALLOWED_ROLES_ANNOTATION, r#"["app", "team/*"]"#)]);
        assert_eq!(
            verdict(PolicyMode::Enforce, &globs, APP),
            Verdict::Permitted
        );
        assert_eq!(
            verdict(PolicyMode::Enforce, &globs, TEAM_APP),
            Verdict::Permitted
        );
        // A bare name means the base account: the same name elsewhere is not permitted.
        assert!(matches!(
            verdict(
                PolicyMode::Enforce,
                &globs,
                "arn:aws:iam::999999999999:role/app"
            ),
            Verdict::Denied(_)
        ));
        let by_arn = ns(&[(
            ALLOWED_ROLES_ANNOTATION,
            r#"["arn:aws:iam::999999999999:role/ci-*"]"#,
        )]);
        assert_eq!(
            verdict(
                PolicyMode::Enforce,
                &by_arn,
                "arn:aws:iam::999999999999:role/ci-runner"
            ),
            Verdict::Permitted
        );
        // A bare pattern is a name in the base account, also with a star (tests/fuzz_namespace_policy.rs
        // found `*/ci-runner` matching the whole ARN of a role in any account).
        for (pattern, name) in [("*", "app"), ("*app", "app"), ("*/app", "team/app")] {
            let any = ns(&[(ALLOWED_ROLES_ANNOTATION, &format!("[{pattern:?}]"))]);
            let here = format!("arn:aws:iam::123456789012:role/{name}");
            let elsewhere = format!("arn:aws:iam::999999999999:role/{name}");
            assert_eq!(
                verdict(PolicyMode::Enforce, &any, &here),
                Verdict::Permitted
            );
            let v = verdict(PolicyMode::Enforce, &any, &elsewhere);
            assert!(
                matches!(v, Verdict::Denied(_)),
                "{pattern} {elsewhere}: {v:?}"
            );
        }
        // A run of stars is one star, however long (tests/fuzz.rs found 16,000 stars
        // refused as too large).
        let stars = format!(r#"["team/{}"]"#, "*".repeat(16_000));
        assert_eq!(
            verdict(
                PolicyMode::Enforce,
                &ns(&[(ALLOWED_ROLES_ANNOTATION, &stars)]),
                TEAM_APP
            ),
            Verdict::Permitted
        );
        // Regex characters in a glob are literal.
        let dot = ns(&[(ALLOWED_ROLES_ANNOTATION, r#"["a.p"]"#)]);
        assert!(matches!(
            verdict(
                PolicyMode::Enforce,
                &dot,
                "arn:aws:iam::123456789012:role/axp"
            ),
            Verdict::Denied(_)
        ));
    }

    #[test]
    fn either_annotation_permitting_is_enough() {
        let both = ns(&[
            (PERMITTED_ANNOTATION, "db"),
            (ALLOWED_ROLES_ANNOTATION, r#"["app"]"#),
        ]);
        assert_eq!(verdict(PolicyMode::Enforce, &both, APP), Verdict::Permitted);
    }

    #[test]
    fn malformed_annotations_permit_nothing_and_say_why() {
        for (key, value, says) in [
            (
                PERMITTED_ANNOTATION,
                "app(",
                "invalid regular expression: unclosed group",
            ),
            (ALLOWED_ROLES_ANNOTATION, "app", "not a JSON list"),
            (ALLOWED_ROLES_ANNOTATION, r#"{"a":1}"#, "not a JSON list"),
            (PERMITTED_ANNOTATION, "a{1000}{1000}", "too large"),
        ] {
            let v = verdict(PolicyMode::Enforce, &ns(&[(key, value)]), APP);
            let Verdict::Denied(d) = v else {
                panic!("{key}={value}: denied expected, got {v:?}")
            };
            assert!(d.message.contains(key), "{d}");
            assert!(
                d.message.to_lowercase().contains(&says.to_lowercase()),
                "{key}={value}: {d}"
            );
            assert!(d.message.len() < 1024, "{d}");
        }
        // Found by tests/fuzz.rs: a long pattern or value was quoted whole.
        for value in [
            format!("[\"{}\"]", "a".repeat(MAX_ANNOTATION_BYTES - 8)),
            format!("\"{}\"", "a".repeat(MAX_ANNOTATION_BYTES - 8)),
        ] {
            let v = verdict(
                PolicyMode::Enforce,
                &ns(&[(ALLOWED_ROLES_ANNOTATION, &value)]),
                APP,
            );
            assert!(
                matches!(&v, Verdict::Denied(d) if d.message.len() < 1024),
                "{v:?}"
            );
        }
        let huge = "a".repeat(MAX_ANNOTATION_BYTES + 1);
        let v = verdict(
            PolicyMode::Enforce,
            &ns(&[(PERMITTED_ANNOTATION, &huge)]),
            APP,
        );
        assert!(matches!(v, Verdict::Denied(d) if d.message.len() < 1024));
    }

    #[test]
    fn the_controllers_own_identity_is_refused_in_every_mode_except_for_its_own_role() {
        let mut guard = Guard::default();
        assert!(guard.protect_identity(
            "arn:aws:sts::123456789012:assumed-role/kube-aws-iam-controller/i-0abc",
            "the controller's own role"
        ));
        assert!(!guard.protect_identity("arn:aws:iam::123456789012:user/ci", "user"));
        guard.protect_role(
            &arn("arn:aws:iam::123456789012:role/ops/hub"),
            "--assume-role",
        );
        let open = ns(&[(PERMITTED_ANNOTATION, ".*")]);
        for mode in [PolicyMode::Enforce, PolicyMode::Audit, PolicyMode::None] {
            for role in [
                "arn:aws:iam::123456789012:role/kube-aws-iam-controller",
                // Same name under another path is the same IAM role; IAM names ignore case.
                "arn:aws:iam::123456789012:role/x/Kube-AWS-IAM-Controller",
                "arn:aws:iam::123456789012:role/hub",
            ] {
                let v = evaluate(&PolicyInput {
                    mode,
                    namespace: "team",
                    annotations: Some(&open),
                    arn: &arn(role),
                    base: Some(&base()),
                    guard: &guard,
                    own: false,
                });
                assert!(
                    matches!(&v, Verdict::Denied(d) if d.message.contains("own identity")),
                    "{mode:?} {role}: {v:?}"
                );
            }
        }
        let own = evaluate(&PolicyInput {
            mode: PolicyMode::Enforce,
            namespace: "kube-system",
            annotations: Some(&open),
            arn: &arn("arn:aws:iam::123456789012:role/kube-aws-iam-controller"),
            base: Some(&base()),
            guard: &guard,
            own: true,
        });
        assert_eq!(own, Verdict::Permitted);
        // Another account's role of the same name is someone else's.
        let other = evaluate(&PolicyInput {
            mode: PolicyMode::None,
            namespace: "team",
            annotations: None,
            arn: &arn("arn:aws:iam::999999999999:role/kube-aws-iam-controller"),
            base: Some(&base()),
            guard: &guard,
            own: false,
        });
        assert_eq!(other, Verdict::Permitted);
    }

    #[test]
    fn roles_outside_the_allowed_accounts_are_refused() {
        let guard = Guard::new(vec!["123456789012".into()]);
        let v = evaluate(&PolicyInput {
            mode: PolicyMode::None,
            namespace: "team",
            annotations: None,
            arn: &arn("arn:aws:iam::999999999999:role/app"),
            base: None,
            guard: &guard,
            own: false,
        });
        assert!(matches!(v, Verdict::Denied(d) if d.message.contains("--allowed-account-ids")));
        assert!(guard.check(&arn(APP)).is_ok());
    }
}
