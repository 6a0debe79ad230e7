//! Reading a Secret back: who owns it, what credentials it holds and for which request, and
//! what this process already knows of it. Secrets written by the Go controller or by anyone
//! else are read leniently. Pure.

use super::*;

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
    pub expiration: DateTime<Utc>,
    /// The credentials themselves; `None` in a [`Known`] summary, which keeps none in memory.
    pub credentials: Option<IssuedCredentials>,
    /// What they were issued for; `None` for Secrets written by the Go controller or by
    /// earlier versions, which are judged by generation and role ARN instead.
    pub issuance: Option<Issuance>,
}

fn text<'a>(data: &'a BTreeMap<String, ByteString>, key: &str) -> Option<&'a str> {
    data.get(key).and_then(|b| std::str::from_utf8(&b.0).ok())
}

/// The request a Secret without credentials was withdrawn for (see [`Content::Withdrawn`]).
pub fn withdrawn(secret: &Secret) -> Option<Issuance> {
    let holds_json = secret
        .data
        .as_ref()
        .is_some_and(|d| d.contains_key(CREDENTIALS_JSON_KEY));
    withdrawn_given(secret, holds_json)
}

/// [`withdrawn`] for a Secret observed without its data, which `holds_json` describes.
pub fn withdrawn_given(secret: &Secret, holds_json: bool) -> Option<Issuance> {
    if holds_json || !secret.annotations().contains_key(WITHDRAWN_ANNOTATION) {
        return None;
    }
    issuance(secret)
}

/// What the Secret's annotations say its credentials were issued for.
pub fn issuance(secret: &Secret) -> Option<Issuance> {
    let annotations = secret.annotations();
    Some(Issuance {
        owner_uid: annotations.get(OWNER_UID_ANNOTATION)?.clone(),
        request_hash: annotations.get(REQUEST_HASH_ANNOTATION)?.clone(),
        issued_at: DateTime::parse_from_rfc3339(annotations.get(ISSUED_AT_ANNOTATION)?)
            .ok()?
            .with_timezone(&Utc),
    })
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
    let issuance = issuance(secret);
    Some(Stored {
        role_arn,
        generation,
        expiration,
        credentials: Some(credentials),
        issuance,
    })
}

/// What one version of a Secret held, as this process last wrote or read it in full: while the
/// watch cache shows the Secret at that resourceVersion, a reconcile decides from the cached
/// metadata and this summary, without reading the data (or holding credentials) again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    pub resource_version: String,
    /// What the data says of its credentials; `None` when it could not be read back.
    pub credentials: Option<KnownCredentials>,
    /// Any of [`WITHDRAWN_KEYS`] is present.
    pub holds_credentials: bool,
    /// `credentials.json` is present.
    pub holds_json: bool,
}

/// The part of [`Stored`] a [`Known`] keeps: no credentials, and no issuance (the cached
/// metadata's annotations carry it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownCredentials {
    pub role_arn: String,
    pub generation: i64,
    pub expiration: DateTime<Utc>,
}

impl Known {
    /// The [`Stored`] view of the Secret `metadata` (observed without its data) at this version.
    pub fn stored(&self, metadata: &Secret) -> Option<Stored> {
        self.credentials.as_ref().map(|c| Stored {
            role_arn: c.role_arn.clone(),
            generation: c.generation,
            expiration: c.expiration,
            credentials: None,
            issuance: issuance(metadata),
        })
    }

    /// The summary of `secret` (read in full: from the API server or a write's response).
    pub fn of(secret: &Secret) -> Option<Known> {
        Some(Known {
            resource_version: secret.metadata.resource_version.clone()?,
            credentials: read(secret).map(|s| KnownCredentials {
                role_arn: s.role_arn,
                generation: s.generation,
                expiration: s.expiration,
            }),
            holds_credentials: holds_credentials(secret),
            holds_json: secret
                .data
                .as_ref()
                .is_some_and(|d| d.contains_key(CREDENTIALS_JSON_KEY)),
        })
    }
}

/// What deciding needs to know of an observed Secret, read in one place: from the Secret in
/// full, or from its metadata and the [`Known`] summary of its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub ownership: Ownership,
    /// The credentials it holds, when readable.
    pub stored: Option<Stored>,
    /// The request its credentials were withdrawn for ([`withdrawn`]).
    pub withdrawn: Option<Issuance>,
    /// Any of the credential keys is present.
    pub holds_credentials: bool,
}

/// The [`Facts`] of `secret` for `role`; `known` describes its data when it was observed
/// without it.
pub fn facts(secret: &Secret, known: Option<&Known>, role: &AWSIAMRole) -> Facts {
    let ownership = ownership(secret, role);
    match known {
        Some(known) => Facts {
            ownership,
            stored: known.stored(secret),
            withdrawn: withdrawn_given(secret, known.holds_json),
            holds_credentials: known.holds_credentials,
        },
        None => Facts {
            ownership,
            stored: read(secret),
            withdrawn: withdrawn(secret),
            holds_credentials: holds_credentials(secret),
        },
    }
}
