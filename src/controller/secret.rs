//! The credentials Secret: rendering it (byte-compatible with the Go controller) and reading it back. Pure.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::aws::IssuedCredentials;
use crate::crd::AWSIAMRole;

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

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The `data` of the Secret for these credentials.
pub fn render_data(
    creds: &IssuedCredentials,
    role_arn: &str,
    generation: i64,
) -> BTreeMap<String, ByteString> {
    let expire = rfc3339(&creds.expiration);
    let ini = format!(
        "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\naws_expiration = {}\n",
        creds.access_key_id, creds.secret_access_key, creds.session_token, expire
    );
    let json = serde_json::to_string(&ProcessCredentials {
        version: 1,
        access_key_id: creds.access_key_id.clone(),
        secret_access_key: creds.secret_access_key.clone(),
        session_token: creds.session_token.clone(),
        expiration: expire.clone(),
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

/// The whole Secret for `role`, with a controller owner reference to it.
pub fn render(role: &AWSIAMRole, creds: &IssuedCredentials, role_arn: &str) -> Secret {
    let owner: Option<OwnerReference> = role.controller_owner_ref(&());
    Secret {
        metadata: ObjectMeta {
            name: Some(role.name_any()),
            namespace: role.namespace(),
            labels: Some(labels(role)),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(render_data(
            creds,
            role_arn,
            role.meta().generation.unwrap_or_default(),
        )),
        ..Secret::default()
    }
}

/// What a Secret of the AWSIAMRole's name is to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Owner reference to this AWSIAMRole's UID (ours, or the Go controller's: we take it over).
    Owned,
    /// No owner reference at all but our heritage and type labels: a seed Secret written to be adopted.
    Adoptable,
    /// Anything else: never touched.
    Foreign,
}

pub fn ownership(secret: &Secret, role: &AWSIAMRole) -> Ownership {
    let uid = role.meta().uid.as_deref();
    let refs = secret
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default();
    // An owner reference to this AWSIAMRole, or to an earlier AWSIAMRole of the same name
    // (deleted and created again before the old Secret was cleaned up).
    let ours = |r: &OwnerReference| {
        r.kind == "AWSIAMRole"
            && r.api_version.starts_with("zalando.org/")
            && (Some(r.uid.as_str()) == uid || r.name == role.name_any())
    };
    if refs.iter().any(ours) {
        return Ownership::Owned;
    }
    let labels = secret.labels();
    let labelled = labels.get(HERITAGE_LABEL).map(String::as_str) == Some(HERITAGE_VALUE)
        && labels.get(TYPE_LABEL).map(String::as_str) == Some(TYPE_VALUE);
    if refs.is_empty() && labelled {
        Ownership::Adoptable
    } else {
        Ownership::Foreign
    }
}

/// What the controller needs to know about the credentials already in a Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub role_arn: String,
    pub generation: i64,
    pub credentials: IssuedCredentials,
}

fn text<'a>(data: &'a BTreeMap<String, ByteString>, key: &str) -> Option<&'a str> {
    data.get(key).and_then(|b| std::str::from_utf8(&b.0).ok())
}

/// Reads the credentials back; `None` when any key is missing, malformed or inconsistent,
/// in which case the Secret cannot be trusted and new credentials are issued.
pub fn read(secret: &Secret) -> Option<Stored> {
    let data = secret.data.as_ref()?;
    let json: ProcessCredentials = serde_json::from_str(text(data, CREDENTIALS_JSON_KEY)?).ok()?;
    let expiration = DateTime::parse_from_rfc3339(&json.expiration)
        .ok()?
        .with_timezone(&Utc);
    let generation = text(data, GENERATION_KEY)?.trim().parse().ok()?;
    let role_arn = text(data, ROLE_ARN_KEY)?.to_string();
    if json.version != 1 || json.access_key_id.is_empty() || json.secret_access_key.is_empty() {
        return None;
    }
    let credentials = IssuedCredentials {
        access_key_id: json.access_key_id,
        secret_access_key: json.secret_access_key,
        session_token: json.session_token,
        expiration,
    };
    Some(Stored {
        role_arn,
        generation,
        credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AWSIAMRoleSpec;

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

    fn role() -> AWSIAMRole {
        let mut r = AWSIAMRole::new(
            "app",
            AWSIAMRoleSpec {
                role_reference: "app".into(),
                role_session_duration: 3600,
                policy: None,
                policy_arns: Vec::new(),
            },
        );
        r.metadata.namespace = Some("team".into());
        r.metadata.uid = Some("uid-1".into());
        r.metadata.generation = Some(3);
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
            include_str!("../../tests/golden/credentials")
        );
        assert_eq!(
            s(&d, CREDENTIALS_PROCESS_KEY),
            include_str!("../../tests/golden/credentials.process")
        );
        assert_eq!(
            s(&d, CREDENTIALS_JSON_KEY),
            include_str!("../../tests/golden/credentials.json").trim_end()
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
        assert_eq!(stored.credentials, creds());
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
