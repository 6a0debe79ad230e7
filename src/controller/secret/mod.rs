//! The credentials Secret: rendering it (byte-compatible with the Go controller) here; reading
//! it back in [`read`], comparing it with the desired one in [`compare`]. Pure.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::aws::IssuedCredentials;
use crate::crd::AWSIAMRole;

mod compare;
mod read;

use compare::is_role_reference;
pub use compare::{merge_patch, needs_repair};
pub use read::*;

pub const CREDENTIALS_KEY: &str = "credentials";
pub const CREDENTIALS_PROCESS_KEY: &str = "credentials.process";
pub const CREDENTIALS_JSON_KEY: &str = "credentials.json";
pub const ROLE_ARN_KEY: &str = "role-arn";
pub const EXPIRE_KEY: &str = "expire";
pub const GENERATION_KEY: &str = "awsiamrole-generation";

pub const HERITAGE_LABEL: &str = "heritage";
pub const HERITAGE_VALUE: &str = "kube-aws-iam-controller";
pub const TYPE_LABEL: &str = "type";
pub const TYPE_VALUE: &str = "awsiamrole";
/// Label selector for the Secrets this controller manages.
pub const SELECTOR: &str = "heritage=kube-aws-iam-controller,type=awsiamrole";

/// The path pods mount the Secret at; `credentials.process` names it, as the Go controller's does.
pub const MOUNT_PATH: &str = "/meta/aws-iam";

/// `credentials.process`: the SDKs re-run `cat` when the cached credentials near expiry.
pub const CREDENTIALS_PROCESS: &str =
    "[default]\ncredential_process = cat /meta/aws-iam/credentials.json\n";

/// Annotations recording what the credentials were issued for: the AWSIAMRole's UID, a hash
/// of the request (role ARN, session length, session options) and when they were issued.
pub const OWNER_UID_ANNOTATION: &str = "awsiamrole.zalando.org/owner-uid";
pub const REQUEST_HASH_ANNOTATION: &str = "awsiamrole.zalando.org/request-hash";
pub const ISSUED_AT_ANNOTATION: &str = "awsiamrole.zalando.org/issued-at";
/// Set on a Secret whose credentials were withdrawn; the other annotations then describe the
/// refused request.
pub const WITHDRAWN_ANNOTATION: &str = "awsiamrole.zalando.org/withdrawn";
/// The AWSIAMRole label keys copied onto the Secret, so that labels removed from the role are
/// removed from the Secret too (and labels others put on the Secret are left alone).
pub const COPIED_LABELS_ANNOTATION: &str = "awsiamrole.zalando.org/copied-labels";

/// The process-credentials document (`credentials.json`), field order as the Go controller writes it.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
struct ProcessCredentials {
    version: u8,
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

/// Go's `time.RFC3339` as the Go controller writes `expire` and `aws_expiration`: whole
/// seconds (truncated), `Z` for UTC.
pub fn go_rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Go's JSON encoding of a `time.Time` (`time.RFC3339Nano`), as in the Go controller's
/// `credentials.json`: the fraction kept, trailing zeros dropped, none when whole.
pub fn go_rfc3339_nano(t: &DateTime<Utc>) -> String {
    let nanos = t.timestamp_subsec_nanos() % 1_000_000_000;
    let whole = go_rfc3339(t);
    if nanos == 0 {
        return whole;
    }
    let fraction = format!("{nanos:09}");
    let fraction = fraction.trim_end_matches('0');
    format!("{}.{fraction}Z", whole.trim_end_matches('Z'))
}

/// The `data` of the Secret for these credentials, byte for byte as the Go controller renders them.
pub fn render_data(
    creds: &IssuedCredentials,
    role_arn: &str,
    generation: i64,
) -> BTreeMap<String, ByteString> {
    let expire = go_rfc3339(&creds.expiration);
    let ini = format!(
        "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\naws_expiration = {}\n",
        creds.access_key_id, creds.secret_access_key, creds.session_token, expire
    );
    let json = serde_json::to_string(&ProcessCredentials {
        version: 1,
        access_key_id: creds.access_key_id.clone(),
        secret_access_key: creds.secret_access_key.clone(),
        session_token: creds.session_token.clone(),
        expiration: go_rfc3339_nano(&creds.expiration),
    })
    .unwrap_or_default();
    [
        (CREDENTIALS_KEY, ini),
        (CREDENTIALS_PROCESS_KEY, CREDENTIALS_PROCESS.to_string()),
        (CREDENTIALS_JSON_KEY, json),
        (ROLE_ARN_KEY, role_arn.to_string()),
        (EXPIRE_KEY, expire),
        (GENERATION_KEY, generation.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect()
}

/// The keys that carry or describe credentials; withdrawing credentials removes them and
/// keeps only `credentials.process`, so SDKs fail to get credentials instead of falling back to
/// another identity.
pub const WITHDRAWN_KEYS: [&str; 5] = [
    CREDENTIALS_KEY,
    CREDENTIALS_JSON_KEY,
    EXPIRE_KEY,
    ROLE_ARN_KEY,
    GENERATION_KEY,
];

/// True when `desired` is a withdrawal ([`Content::Withdrawn`]): it keeps `credentials.process`
/// and holds none of [`WITHDRAWN_KEYS`]. (A desired Secret that leaves the data as it is
/// carries no data keys at all.)
pub fn is_withdrawal(desired: &Secret) -> bool {
    desired.data.as_ref().is_some_and(|d| {
        d.contains_key(CREDENTIALS_PROCESS_KEY)
            && WITHDRAWN_KEYS.iter().all(|k| !d.contains_key(*k))
    })
}

/// True when the Secret still holds any of [`WITHDRAWN_KEYS`].
pub fn holds_credentials(secret: &Secret) -> bool {
    secret
        .data
        .as_ref()
        .is_some_and(|d| WITHDRAWN_KEYS.iter().any(|k| d.contains_key(*k)))
}

/// Labels of the Secret: the AWSIAMRole's own labels plus the two ownership labels.
pub fn labels(role: &AWSIAMRole) -> BTreeMap<String, String> {
    let mut labels = role.labels().clone();
    labels.insert(HERITAGE_LABEL.into(), HERITAGE_VALUE.into());
    labels.insert(TYPE_LABEL.into(), TYPE_VALUE.into());
    labels
}

/// What credentials were issued for (the Secret's annotations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issuance {
    pub owner_uid: String,
    pub request_hash: String,
    pub issued_at: DateTime<Utc>,
}

/// What the Secret should carry.
#[derive(Clone, Copy, Debug)]
pub enum Content<'a> {
    /// These credentials; `issuance` is recorded when known (a fresh issue), and otherwise
    /// whatever the Secret recorded stays.
    Credentials {
        creds: &'a IssuedCredentials,
        issuance: Option<&'a Issuance>,
    },
    /// No credentials at all ([`WITHDRAWN_KEYS`] removed): the role is not permitted, or they
    /// were for a role the spec no longer names and STS refused the one it names; `issuance`
    /// then records the refused request and when.
    Withdrawn { issuance: Option<&'a Issuance> },
    /// The data as it is: only labels, annotations and owners are brought up to date (the
    /// Secret was observed without its data, which is known to be as this process last saw it).
    Unchanged,
}

/// The Secret to write for `role`: built on `existing` (keys, labels, annotations and owners
/// others added stay), with our keys, labels, annotations and one controller owner reference
/// to this AWSIAMRole (earlier AWSIAMRoles of the same name are dropped).
pub fn desired(
    existing: Option<&Secret>,
    role: &AWSIAMRole,
    role_arn: &str,
    content: Content<'_>,
) -> Secret {
    let mut secret = existing.cloned().unwrap_or_default();
    let meta = &mut secret.metadata;
    meta.name = Some(role.name_any());
    meta.namespace = role.namespace();
    meta.managed_fields = None;
    // Read before the annotations are brought up to date: the labels copied last time.
    let copied_before = copied_labels(meta.annotations.as_ref());
    meta.labels = Some(desired_labels(
        meta.labels.take().unwrap_or_default(),
        &copied_before,
        role,
    ));
    let annotations =
        desired_annotations(meta.annotations.take().unwrap_or_default(), role, content);
    meta.annotations = (!annotations.is_empty()).then_some(annotations);
    meta.owner_references = Some(owned_by(
        meta.owner_references.take().unwrap_or_default(),
        role,
    ));
    let data = secret.data.take().unwrap_or_default();
    secret.data = Some(desired_data(data, role, role_arn, content));
    if secret.type_.is_none() {
        secret.type_ = Some("Opaque".into());
    }
    secret
}

/// The role's labels copied onto the Secret by the last write, as its annotation records them.
fn copied_labels(annotations: Option<&BTreeMap<String, String>>) -> Vec<String> {
    annotations
        .and_then(|a| a.get(COPIED_LABELS_ANNOTATION))
        .map(|v| {
            v.split(',')
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Our labels and the role's own, without the ones copied before that the role dropped since.
fn desired_labels(
    mut labels: BTreeMap<String, String>,
    copied_before: &[String],
    role: &AWSIAMRole,
) -> BTreeMap<String, String> {
    let role_labels = role.labels();
    for gone in copied_before
        .iter()
        .filter(|k| !role_labels.contains_key(*k))
    {
        labels.remove(gone);
    }
    labels.extend(self::labels(role));
    labels
}

/// The copied labels' record, the issuance's (owner, request hash, time) when known, and the
/// withdrawal mark.
fn desired_annotations(
    mut annotations: BTreeMap<String, String>,
    role: &AWSIAMRole,
    content: Content<'_>,
) -> BTreeMap<String, String> {
    let copied: Vec<&str> = role.labels().keys().map(String::as_str).collect();
    if copied.is_empty() {
        annotations.remove(COPIED_LABELS_ANNOTATION);
    } else {
        annotations.insert(COPIED_LABELS_ANNOTATION.into(), copied.join(","));
    }
    if let Content::Credentials {
        issuance: Some(i), ..
    }
    | Content::Withdrawn { issuance: Some(i) } = content
    {
        annotations.insert(OWNER_UID_ANNOTATION.into(), i.owner_uid.clone());
        annotations.insert(REQUEST_HASH_ANNOTATION.into(), i.request_hash.clone());
        annotations.insert(ISSUED_AT_ANNOTATION.into(), go_rfc3339(&i.issued_at));
    }
    match content {
        Content::Withdrawn { issuance: Some(_) } => {
            annotations.insert(WITHDRAWN_ANNOTATION.into(), "true".into());
        }
        Content::Withdrawn { issuance: None } | Content::Credentials { .. } => {
            annotations.remove(WITHDRAWN_ANNOTATION);
        }
        Content::Unchanged => {}
    }
    annotations
}

/// Others' owner references and one controller reference to this AWSIAMRole (earlier
/// AWSIAMRoles of the same name are dropped).
fn owned_by(owners: Vec<OwnerReference>, role: &AWSIAMRole) -> Vec<OwnerReference> {
    let mut owners: Vec<OwnerReference> = owners
        .into_iter()
        .filter(|o| !is_role_reference(o))
        .collect();
    // blockOwnerDeletion, as controller-runtime sets it: foreground deletion of the AWSIAMRole
    // waits for its Secret. (Needs update on awsiamroles/finalizers where the
    // OwnerReferencesPermissionEnforcement admission plugin runs: deploy/rbac.yaml grants it.)
    owners.extend(role.controller_owner_ref(&()).map(|o| OwnerReference {
        block_owner_deletion: Some(true),
        ..o
    }));
    owners
}

/// Others' keys and ours: the credentials in every format, or none of them.
fn desired_data(
    mut data: BTreeMap<String, ByteString>,
    role: &AWSIAMRole,
    role_arn: &str,
    content: Content<'_>,
) -> BTreeMap<String, ByteString> {
    let generation = role.meta().generation.unwrap_or_default();
    match content {
        Content::Credentials { creds, .. } => data.extend(render_data(creds, role_arn, generation)),
        Content::Withdrawn { .. } => {
            for key in WITHDRAWN_KEYS {
                data.remove(key);
            }
            data.insert(
                CREDENTIALS_PROCESS_KEY.into(),
                ByteString(CREDENTIALS_PROCESS.as_bytes().to_vec()),
            );
        }
        Content::Unchanged => {}
    }
    data
}

/// A new Secret for `role` with these credentials, in the format the Go controller writes.
pub fn render(role: &AWSIAMRole, creds: &IssuedCredentials, role_arn: &str) -> Secret {
    desired(
        None,
        role,
        role_arn,
        Content::Credentials {
            creds,
            issuance: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_read_in_full_and_one_known_at_its_version_give_the_same_facts() {
        use crate::controller::fixtures::{role, stored_secret};
        let r = role("app", "app", 1);
        let full = stored_secret(&r, std::time::Duration::from_secs(600));
        let known = Known::of(&full).expect("summarised");
        let metadata = Secret {
            metadata: full.metadata.clone(),
            ..Secret::default()
        };
        let read = facts(&full, None, &r);
        let cached = facts(&metadata, Some(&known), &r);
        assert_eq!(read.ownership, Ownership::Owned);
        assert!(read.holds_credentials && read.withdrawn.is_none());
        let without_credentials = Facts {
            stored: read.stored.clone().map(|s| Stored {
                credentials: None,
                ..s
            }),
            ..read.clone()
        };
        assert_eq!(
            cached, without_credentials,
            "the summary keeps no credentials"
        );
        assert!(read.stored.is_some_and(|s| s.credentials.is_some()));
    }

    fn creds() -> IssuedCredentials {
        IssuedCredentials {
            access_key_id: "ASIAEXAMPLEKEY000001".into(),
            secret_access_key: "secretSECRETsecretSECRETsecretSECRET0000".into(),
            session_token: "FwoGZXIvYXdzEXAMPLETOKEN".into(),
            expiration: DateTime::parse_from_rfc3339("2026-11-26T16:30:00Z")
                .expect("time")
                .with_timezone(&Utc),
        }
    }

    /// The fixtures' role, in namespace `team` with UID `uid-1` and a label.
    fn role() -> AWSIAMRole {
        let mut r = crate::controller::fixtures::role("app", "app", 3);
        r.metadata.namespace = Some("team".into());
        r.metadata.uid = Some("uid-1".into());
        r.metadata.resource_version = None;
        r.metadata.labels = Some([("application".to_string(), "x".to_string())].into());
        r
    }

    fn s(data: &BTreeMap<String, ByteString>, k: &str) -> String {
        String::from_utf8(data[k].0.clone()).expect("utf8")
    }

    #[test]
    fn credentials_file_matches_the_go_controller_golden() {
        let d = render_data(&creds(), "arn:aws:iam::123456789012:role/app", 3);
        assert_eq!(
            s(&d, CREDENTIALS_KEY),
            include_str!("../../../tests/golden/credentials")
        );
        assert_eq!(
            s(&d, CREDENTIALS_PROCESS_KEY),
            include_str!("../../../tests/golden/credentials.process")
        );
        assert_eq!(
            s(&d, CREDENTIALS_JSON_KEY),
            include_str!("../../../tests/golden/credentials.json").trim_end()
        );
        assert_eq!(s(&d, EXPIRE_KEY), "2026-11-26T16:30:00Z");
        assert_eq!(s(&d, ROLE_ARN_KEY), "arn:aws:iam::123456789012:role/app");
        assert_eq!(s(&d, GENERATION_KEY), "3");
        assert_eq!(d.len(), 6);
    }

    #[test]
    fn rendered_secret_is_labelled_and_owned() {
        let sec = render(&role(), &creds(), "arn:aws:iam::123456789012:role/app");
        let labels = sec.metadata.labels.clone().expect("labels");
        assert_eq!(labels["heritage"], "kube-aws-iam-controller");
        assert_eq!(labels["type"], "awsiamrole");
        assert_eq!(labels["application"], "x");
        let owner = &sec.metadata.owner_references.clone().expect("owner")[0];
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(ownership(&sec, &role()), Ownership::Owned);
    }

    #[test]
    fn rendered_credentials_read_back_identically() {
        let sec = render(&role(), &creds(), "arn:aws:iam::123456789012:role/app");
        let stored = read(&sec).expect("readable");
        assert_eq!(stored.credentials, Some(creds()));
        assert_eq!(stored.expiration, creds().expiration);
        assert_eq!(stored.generation, 3);
    }

    #[test]
    fn damaged_secrets_are_not_trusted() {
        let mut sec = render(&role(), &creds(), "arn:aws:iam::123456789012:role/app");
        if let Some(d) = sec.data.as_mut() {
            d.insert(
                CREDENTIALS_JSON_KEY.into(),
                ByteString(b"{not json".to_vec()),
            );
        }
        assert!(read(&sec).is_none());
        let mut sec = render(&role(), &creds(), "arn:aws:iam::123456789012:role/app");
        if let Some(d) = sec.data.as_mut() {
            d.remove(GENERATION_KEY);
        }
        assert!(read(&sec).is_none());
    }

    #[test]
    fn foreign_and_seed_secrets_are_told_apart() {
        let mut sec = Secret::default();
        assert_eq!(ownership(&sec, &role()), Ownership::Foreign);
        sec.metadata.labels = Some(
            [
                (
                    "heritage".to_string(),
                    "kube-aws-iam-controller".to_string(),
                ),
                ("type".to_string(), "awsiamrole".to_string()),
            ]
            .into(),
        );
        assert_eq!(ownership(&sec, &role()), Ownership::Adoptable);
        sec.metadata.owner_references = Some(vec![OwnerReference {
            uid: "other".into(),
            name: "app".into(),
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            ..OwnerReference::default()
        }]);
        assert_eq!(ownership(&sec, &role()), Ownership::Foreign);
    }

    #[test]
    fn times_render_exactly_as_the_go_controller_renders_them() {
        let t = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("t")
                .with_timezone(&Utc)
        };
        // `time.RFC3339`: whole seconds, truncated.
        assert_eq!(
            go_rfc3339(&t("2026-11-26T16:30:00.987Z")),
            "2026-11-26T16:30:00Z"
        );
        // Go's JSON time: the fraction kept, trailing zeros dropped.
        assert_eq!(
            go_rfc3339_nano(&t("2026-11-26T16:30:00.120Z")),
            "2026-11-26T16:30:00.12Z"
        );
        assert_eq!(
            go_rfc3339_nano(&t("2026-11-26T16:30:00.123456789Z")),
            "2026-11-26T16:30:00.123456789Z"
        );
        assert_eq!(
            go_rfc3339_nano(&t("2026-11-26T16:30:00Z")),
            "2026-11-26T16:30:00Z"
        );
        let mut c = creds();
        c.expiration = t("2026-11-26T16:30:00.5Z");
        let d = render_data(&c, "arn:aws:iam::123456789012:role/app", 3);
        assert_eq!(s(&d, EXPIRE_KEY), "2026-11-26T16:30:00Z");
        assert!(s(&d, CREDENTIALS_KEY).contains("aws_expiration = 2026-11-26T16:30:00Z\n"));
        assert!(s(&d, CREDENTIALS_JSON_KEY).contains(r#""Expiration":"2026-11-26T16:30:00.5Z""#));
    }

    #[test]
    fn repair_is_decided_on_meaning_not_bytes() {
        let existing = render(&role(), &creds(), "arn:aws:iam::123456789012:role/app");
        let mut respaced = existing.clone();
        let data = respaced.data.as_mut().expect("data");
        data.insert(
            CREDENTIALS_JSON_KEY.into(),
            ByteString(
                br#"{ "Version": 1, "AccessKeyId": "ASIAEXAMPLEKEY000001", "SecretAccessKey": "secretSECRETsecretSECRETsecretSECRET0000", "SessionToken": "FwoGZXIvYXdzEXAMPLETOKEN", "Expiration": "2026-11-26T16:30:00.000Z" }"#.to_vec(),
            ),
        );
        data.insert(
            EXPIRE_KEY.into(),
            ByteString(b"2026-11-26T17:30:00+01:00".to_vec()),
        );
        let desired = desired(
            Some(&respaced),
            &role(),
            "arn:aws:iam::123456789012:role/app",
            Content::Credentials {
                creds: &creds(),
                issuance: None,
            },
        );
        assert!(!needs_repair(&respaced, &desired), "same meaning: no write");
        let mut edited = existing.clone();
        edited.data.as_mut().expect("data").insert(
            CREDENTIALS_PROCESS_KEY.into(),
            ByteString(b"[default]\ncredential_process = evil\n".to_vec()),
        );
        let desired = desired_for(&edited);
        assert!(needs_repair(&edited, &desired));
    }

    fn desired_for(existing: &Secret) -> Secret {
        desired(
            Some(existing),
            &role(),
            "arn:aws:iam::123456789012:role/app",
            Content::Credentials {
                creds: &creds(),
                issuance: None,
            },
        )
    }

    #[test]
    fn a_recreated_role_replaces_the_old_owner_and_removed_labels_go() {
        let mut old_role = role();
        old_role.metadata.uid = Some("uid-0".into());
        old_role.metadata.labels = Some(
            [
                ("application".to_string(), "x".to_string()),
                ("gone".to_string(), "y".to_string()),
            ]
            .into(),
        );
        let mut existing = render(&old_role, &creds(), "arn:aws:iam::123456789012:role/app");
        existing
            .metadata
            .labels
            .as_mut()
            .expect("labels")
            .insert("someone-elses".into(), "z".into());
        let want = desired_for(&existing);
        let owners: Vec<&str> = want
            .owner_references()
            .iter()
            .map(|o| o.uid.as_str())
            .collect();
        assert_eq!(owners, vec!["uid-1"]);
        assert_eq!(want.owner_references()[0].block_owner_deletion, Some(true));
        assert!(!want.labels().contains_key("gone"));
        assert_eq!(want.labels()["someone-elses"], "z");
        assert_eq!(want.labels()["application"], "x");
        assert!(needs_repair(&existing, &want));
    }

    #[test]
    fn the_merge_patch_sets_ours_drops_what_is_gone_and_carries_the_resource_version() {
        let mut existing = render(&role(), &creds(), "arn:aws:iam::123456789012:role/app");
        existing.metadata.resource_version = Some("42".into());
        let want = desired(
            Some(&existing),
            &role(),
            "arn:aws:iam::123456789012:role/app",
            Content::Withdrawn { issuance: None },
        );
        let patch = merge_patch(&existing, &want);
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["data"][CREDENTIALS_JSON_KEY], serde_json::Value::Null);
        assert!(patch["data"][CREDENTIALS_PROCESS_KEY].is_string());
        assert_eq!(patch["metadata"]["labels"]["application"], "x");
        assert_eq!(patch["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        let mut applied = serde_json::to_value(&existing).expect("json");
        json_merge(&mut applied, &patch);
        let applied: Secret = serde_json::from_value(applied).expect("secret");
        assert_eq!(applied.data, want.data);
        assert_eq!(applied.metadata.labels, want.metadata.labels);
    }

    /// RFC 7386, as the API server applies a merge patch.
    fn json_merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        match (target, patch) {
            (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        json_merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p.clone(),
        }
    }

    #[test]
    fn go_controller_owner_reference_without_controller_flag_counts_as_owned() {
        let mut sec = Secret::default();
        sec.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "zalando.org/v1".into(),
            kind: "AWSIAMRole".into(),
            name: "app".into(),
            uid: "uid-1".into(),
            ..OwnerReference::default()
        }]);
        assert_eq!(ownership(&sec, &role()), Ownership::Owned);
    }
}
