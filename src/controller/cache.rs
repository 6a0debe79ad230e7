//! What the watch caches keep of each object: the fields no decision reads are dropped as
//! objects arrive, and a Secret's metadata is kept packed ([`CachedSecret`]), so the
//! controller's memory per AWSIAMRole stays small.

use std::borrow::Cow;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{Lookup, ObjectRef};
use kube::runtime::watcher;

use super::secret::{
    HERITAGE_LABEL, HERITAGE_VALUE, ISSUED_AT_ANNOTATION, OWNER_UID_ANNOTATION,
    REQUEST_HASH_ANNOTATION, TYPE_LABEL, TYPE_VALUE,
};
use crate::crd::AWSIAMRole;

/// Annotation `kubectl apply` writes: a copy of the whole object as last applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops `managedFields` (often larger than the rest of the metadata) and kubectl's copy of
/// the last applied object; neither is read by the controller.
pub fn trim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    // An emptied map still holds its 544-byte node.
    if meta.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        meta.annotations = None;
    }
}

/// [`trim`], and no annotations at all: the controller reads none of an AWSIAMRole's.
pub fn trim_role<K: Resource>(obj: &mut K) {
    trim(obj);
    obj.meta_mut().annotations = None;
}

/// Whether a watched AWSIAMRole asks for a reconcile, decided against the cache's copy of it
/// (`None`: not cached) before the event is applied: new to the cache, recreated (another UID),
/// its spec changed (`generation`) or its labels changed. A status write (the controller's own)
/// changes none of these. kube-runtime's `predicate_filter` decides the same from a table of
/// its own holding a second copy of every role's name, namespace and UID; the cache already
/// holds the previous object.
pub fn role_changed(cached: Option<&AWSIAMRole>, new: &AWSIAMRole) -> bool {
    cached.is_none_or(|old| {
        old.metadata.uid != new.metadata.uid
            || old.metadata.generation != new.metadata.generation
            || old.metadata.labels != new.metadata.labels
    })
}

/// The reference the controller's scheduler keeps for an AWSIAMRole until its next reconcile:
/// name and namespace. kube-runtime's `ObjectRef::from_obj` copies the resourceVersion and
/// UID too, which its lookups ignore and its scheduler would hold twice per role.
pub fn role_ref(namespace: Option<&str>, name: &str) -> ObjectRef<AWSIAMRole> {
    let r = ObjectRef::new(name);
    match namespace {
        Some(ns) => r.within(ns),
        None => r,
    }
}

/// The AWSIAMRoles that own a labelled Secret, as [`role_ref`]s.
pub fn owners(secret: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<AWSIAMRole>> {
    let (api_version, kind) = (
        <AWSIAMRole as Resource>::api_version(&()),
        <AWSIAMRole as Resource>::kind(&()),
    );
    let meta = &secret.metadata;
    meta.owner_references
        .iter()
        .flatten()
        .filter(|o| o.api_version == api_version && o.kind == kind)
        .map(|o| role_ref(meta.namespace.as_deref(), &o.name))
        .collect()
}

/// One labelled Secret as the metadata cache keeps it: the fields the janitor reads on every
/// sweep unpacked, the rest of the metadata (labels, annotations, owner references: what a
/// reconcile compares) as one compact JSON value, decoded only when a reconcile observes it.
/// A `PartialObjectMeta<Secret>` costs more: each label and annotation map is a B-tree node
/// of 544 bytes however few entries it has, and every field its own allocation (packing took
/// the RSS at 10,000 roles from 81.8 to 66.2 MiB: `docs/performance.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct CachedSecret {
    name: Box<str>,
    namespace: Box<str>,
    resource_version: Box<str>,
    uid: Option<Box<str>>,
    /// `creationTimestamp`, in seconds since the epoch.
    created: Option<i64>,
    deleting: bool,
    owners: Owners,
    /// The metadata without the fields above (but the deletion time), as JSON, [`condense`]d.
    rest: Box<[u8]>,
}

/// Who owns a cached Secret, as far as the janitor cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owners {
    None,
    /// Only AWSIAMRoles (`zalando.org/*`).
    OnlyRoles,
    /// Something else owns it too.
    Others,
}

impl CachedSecret {
    /// Packs the metadata of `secret` (after [`trim`]).
    pub fn of(secret: &PartialObjectMeta<Secret>) -> Self {
        let meta = &secret.metadata;
        let owners = match meta.owner_references.as_deref().unwrap_or_default() {
            [] => Owners::None,
            refs if refs
                .iter()
                .all(|o| o.kind == "AWSIAMRole" && o.api_version.starts_with("zalando.org/")) =>
            {
                Owners::OnlyRoles
            }
            _ => Owners::Others,
        };
        let rest = ObjectMeta {
            name: None,
            namespace: None,
            resource_version: None,
            uid: None,
            creation_timestamp: None,
            managed_fields: None,
            ..meta.clone()
        };
        CachedSecret {
            name: meta.name.as_deref().unwrap_or_default().into(),
            namespace: meta.namespace.as_deref().unwrap_or_default().into(),
            resource_version: meta.resource_version.as_deref().unwrap_or_default().into(),
            uid: meta.uid.as_deref().map(Into::into),
            created: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
            deleting: meta.deletion_timestamp.is_some(),
            owners,
            // Serialising an `ObjectMeta` to a Vec cannot fail (string keys, no floats).
            rest: condense(&serde_json::to_vec(&rest).unwrap_or_default()).into_boxed_slice(),
        }
    }

    /// The metadata as it arrived (less what [`trim`] dropped); `None` if it cannot be
    /// decoded, which the caller treats as not cached.
    pub fn metadata(&self) -> Option<ObjectMeta> {
        let mut meta: ObjectMeta = serde_json::from_slice(&expand(&self.rest)?).ok()?;
        meta.name = Some(self.name.to_string());
        meta.namespace = Some(self.namespace.to_string());
        meta.resource_version = Some(self.resource_version.to_string());
        meta.uid = self.uid.as_deref().map(String::from);
        meta.creation_timestamp = match self.created {
            Some(seconds) => Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(seconds).ok()?,
            )),
            None => None,
        };
        Some(meta)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn resource_version(&self) -> &str {
        &self.resource_version
    }

    pub fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }

    /// `creationTimestamp`, in seconds since the epoch.
    pub fn created(&self) -> Option<i64> {
        self.created
    }

    pub fn deleting(&self) -> bool {
        self.deleting
    }

    pub fn owners(&self) -> Owners {
        self.owners
    }
}

/// What every Secret of this controller carries in its metadata's JSON (labels, annotation
/// keys, the owner reference), most specific first: [`condense`] writes each as one byte.
fn dictionary() -> &'static [Vec<u8>] {
    static DICTIONARY: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        let owner = format!(
            r#""apiVersion":"{}","blockOwnerDeletion":true,"controller":true,"kind":"{}","name":""#,
            <AWSIAMRole as Resource>::api_version(&()),
            <AWSIAMRole as Resource>::kind(&()),
        );
        let annotation_prefix = OWNER_UID_ANNOTATION
            .split_once('/')
            .map_or(OWNER_UID_ANNOTATION, |(prefix, _)| prefix);
        [
            format!(r#""ownerReferences":[{{{owner}"#),
            format!(
                r#""labels":{{"{HERITAGE_LABEL}":"{HERITAGE_VALUE}","{TYPE_LABEL}":"{TYPE_VALUE}"}}"#
            ),
            format!(r#""annotations":{{"{ISSUED_AT_ANNOTATION}":""#),
            format!(r#""{OWNER_UID_ANNOTATION}":""#),
            format!(r#""{REQUEST_HASH_ANNOTATION}":""#),
            format!(r#""{HERITAGE_LABEL}":"{HERITAGE_VALUE}""#),
            format!(r#""{TYPE_LABEL}":"{TYPE_VALUE}""#),
            owner,
            format!(r#""{annotation_prefix}/"#),
            r#""ownerReferences":[{"#.to_string(),
            r#""annotations":{"#.to_string(),
            r#""labels":{"#.to_string(),
            r#""uid":""#.to_string(),
            r#""name":""#.to_string(),
        ]
        .map(String::into_bytes)
        .into()
    })
}

/// `json` with every [`dictionary`] entry written as one byte, 1 to 31: compact JSON holds no
/// byte below 0x20 (control characters in strings are escaped), so none is ambiguous. Takes a
/// typical Secret's metadata from about 460 bytes to about 170.
fn condense(json: &[u8]) -> Vec<u8> {
    let dictionary = dictionary();
    let mut out = Vec::with_capacity(json.len());
    let mut rest = json;
    while let Some(&byte) = rest.first() {
        // Every entry starts with a quote.
        let found = (byte == b'"')
            .then(|| (1u8..).zip(dictionary).find(|(_, e)| rest.starts_with(e)))
            .flatten();
        match found {
            Some((code, entry)) => {
                out.push(code);
                rest = &rest[entry.len()..];
            }
            None => {
                out.push(byte);
                rest = &rest[1..];
            }
        }
    }
    out.shrink_to_fit();
    out
}

/// The JSON [`condense`] was given; `None` for a byte no entry stands for.
fn expand(condensed: &[u8]) -> Option<Vec<u8>> {
    let dictionary = dictionary();
    let mut out = Vec::with_capacity(condensed.len() * 3);
    for &byte in condensed {
        match byte {
            0x20.. => out.push(byte),
            code => out.extend_from_slice(dictionary.get(usize::from(code).checked_sub(1)?)?),
        }
    }
    Some(out)
}

/// The same watch event with its Secret packed, for the reflector's writer.
pub fn packed(event: &watcher::Event<PartialObjectMeta<Secret>>) -> watcher::Event<CachedSecret> {
    match event {
        watcher::Event::Apply(s) => watcher::Event::Apply(CachedSecret::of(s)),
        watcher::Event::Delete(s) => watcher::Event::Delete(CachedSecret::of(s)),
        watcher::Event::InitApply(s) => watcher::Event::InitApply(CachedSecret::of(s)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// The reflector's store key: name and namespace. The key's optional extras (resourceVersion,
/// UID) are left out: the store's keys would hold a second copy of each for nothing (its
/// lookups ignore them).
impl Lookup for CachedSecret {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        <Secret as Resource>::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        <Secret as Resource>::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        <Secret as Resource>::version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        <Secret as Resource>::plural(&())
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.namespace))
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference};

    #[test]
    fn managed_fields_and_the_last_applied_copy_are_dropped_other_annotations_kept() {
        let mut s = Secret {
            metadata: ObjectMeta {
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                annotations: Some(
                    [(LAST_APPLIED, "{}"), ("keep", "me")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut role = s.clone();
        trim(&mut s);
        assert!(s.metadata.managed_fields.is_none());
        let annotations = s.metadata.annotations.clone().expect("annotations");
        assert_eq!(annotations.len(), 1);
        assert_eq!(annotations.get("keep").map(String::as_str), Some("me"));
        s.metadata.annotations = Some([(LAST_APPLIED.to_string(), "{}".to_string())].into());
        trim(&mut s);
        assert_eq!(s.metadata.annotations, None, "no empty map is kept");
        trim_role(&mut role);
        assert_eq!(
            role.metadata.annotations, None,
            "an AWSIAMRole's are never read"
        );
    }
    #[test]
    fn a_packed_secret_gives_back_its_metadata_and_the_janitors_facts() {
        let mut meta = ObjectMeta {
            name: Some("app".into()),
            namespace: Some("team".into()),
            resource_version: Some("42".into()),
            uid: Some("u-1".into()),
            creation_timestamp: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(1_796_000_000).expect("time"),
            )),
            labels: Some(
                [(
                    "heritage".to_string(),
                    "kube-aws-iam-controller".to_string(),
                )]
                .into(),
            ),
            annotations: Some([("a".to_string(), "b".to_string())].into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "zalando.org/v1".into(),
                kind: "AWSIAMRole".into(),
                name: "app".into(),
                uid: "r-1".into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        };
        let secret = |metadata: ObjectMeta| PartialObjectMeta::<Secret> {
            types: None,
            metadata,
            _phantom: std::marker::PhantomData,
        };
        let packed = CachedSecret::of(&secret(meta.clone()));
        assert_eq!(packed.metadata(), Some(meta.clone()));
        assert_eq!(
            (packed.name(), packed.namespace(), packed.resource_version()),
            ("app", "team", "42")
        );
        assert_eq!(packed.uid(), Some("u-1"));
        assert_eq!(packed.created(), Some(1_796_000_000));
        assert!(
            !String::from_utf8_lossy(&packed.rest).contains("u-1"),
            "the UID is kept once"
        );
        assert_eq!(packed.owners(), Owners::OnlyRoles);
        assert!(!packed.deleting());
        // The store finds it by name and namespace alone.
        let (store, mut writer) = kube::runtime::reflector::store::<CachedSecret>();
        writer.apply_watcher_event(&packed_event(&secret(meta.clone())));
        let found = store
            .get(&kube::runtime::reflector::ObjectRef::new("app").within("team"))
            .expect("cached");
        assert_eq!(*found, packed);

        meta.owner_references.as_mut().expect("owners")[0].kind = "Deployment".into();
        assert_eq!(
            CachedSecret::of(&secret(meta.clone())).owners(),
            Owners::Others
        );
        meta.owner_references = None;
        assert_eq!(CachedSecret::of(&secret(meta)).owners(), Owners::None);
    }

    #[test]
    fn a_role_triggers_when_new_recreated_respecified_or_relabelled_never_for_its_status() {
        let cached = crate::controller::fixtures::role("app", "my-role", 1);
        assert!(role_changed(None, &cached), "new to the cache");
        let mut status_written = cached.clone();
        status_written.metadata.resource_version = Some("99".into());
        status_written.status = Some(Default::default());
        assert!(!role_changed(Some(&cached), &status_written));
        let mut respecified = cached.clone();
        respecified.metadata.generation = Some(2);
        assert!(role_changed(Some(&cached), &respecified));
        let mut relabelled = cached.clone();
        relabelled.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
        assert!(role_changed(Some(&cached), &relabelled));
        let mut recreated = cached.clone();
        recreated.metadata.uid = Some("another".into());
        assert!(role_changed(Some(&cached), &recreated));
    }

    #[test]
    fn a_secret_names_only_its_awsiamrole_owners_without_extras() {
        let owner = |api_version: &str, kind: &str, name: &str| OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            ..OwnerReference::default()
        };
        let secret = PartialObjectMeta::<Secret> {
            types: None,
            metadata: ObjectMeta {
                name: Some("app".into()),
                namespace: Some("team".into()),
                owner_references: Some(vec![
                    owner("zalando.org/v1", "AWSIAMRole", "app"),
                    owner("apps/v1", "Deployment", "app"),
                    owner("zalando.org/v2", "AWSIAMRole", "other"),
                ]),
                ..ObjectMeta::default()
            },
            _phantom: std::marker::PhantomData,
        };
        let refs = owners(&secret);
        assert_eq!(refs, vec![role_ref(Some("team"), "app")]);
        assert_eq!(refs[0].namespace.as_deref(), Some("team"));
        assert!(refs[0].extra.uid.is_none() && refs[0].extra.resource_version.is_none());
    }

    #[test]
    fn a_secrets_metadata_is_condensed_and_given_back_byte_for_byte() {
        assert!(dictionary().len() <= 31, "one byte below 0x20 each");
        assert!(dictionary().iter().all(|e| e.first() == Some(&b'"')));
        let role = crate::controller::fixtures::role("app-0001", "app", 1);
        let mut secret =
            crate::controller::fixtures::stored_secret(&role, std::time::Duration::from_secs(3000));
        let meta = &mut secret.metadata;
        meta.annotations = Some(
            [
                (ISSUED_AT_ANNOTATION, "2026-12-03T10:00:00Z"),
                (OWNER_UID_ANNOTATION, "0b5e9a52-3d1f-4c6e-9a8b-7c2d1e0f4a3b"),
                (REQUEST_HASH_ANNOTATION, &"ab".repeat(32)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        let packed = CachedSecret::of(&PartialObjectMeta {
            types: None,
            metadata: meta.clone(),
            _phantom: std::marker::PhantomData,
        });
        let json = serde_json::to_vec(&ObjectMeta {
            name: None,
            namespace: None,
            resource_version: None,
            uid: None,
            creation_timestamp: None,
            ..meta.clone()
        })
        .expect("json");
        assert!(
            packed.rest.len() * 2 < json.len(),
            "{} bytes of {}",
            packed.rest.len(),
            json.len()
        );
        assert_eq!(packed.metadata().as_ref(), Some(&*meta));

        // Anything else anyone puts on a Secret round-trips too.
        let mut odd = meta.clone();
        let weird = "a\u{1}b\"c}\n\t ü \"name\":\"";
        odd.labels
            .get_or_insert_default()
            .insert("awsiamrole.zalando.org/x".into(), weird.into());
        odd.annotations
            .get_or_insert_default()
            .insert(weird.into(), "\"uid\":\"".into());
        odd.finalizers = Some(vec!["x/y".into()]);
        let packed = CachedSecret::of(&PartialObjectMeta {
            types: None,
            metadata: odd.clone(),
            _phantom: std::marker::PhantomData,
        });
        assert_eq!(packed.metadata(), Some(odd));

        assert_eq!(expand(&[b'{', 0, b'}']), None, "no entry for 0");
        assert_eq!(expand(&[31]), None, "nor past the dictionary");
        assert_eq!(condense(b"{}"), b"{}".to_vec());
    }

    fn packed_event(s: &PartialObjectMeta<Secret>) -> watcher::Event<CachedSecret> {
        packed(&watcher::Event::Apply(s.clone()))
    }
}
