//! What the watch caches keep of each object: the fields no decision reads are dropped as
//! objects arrive, and a Secret's metadata is kept packed ([`CachedSecret`]), so the
//! controller's memory per AWSIAMRole stays small.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::Lookup;
use kube::runtime::watcher;

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
    /// The metadata without name, namespace and resourceVersion, as JSON.
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
            rest: serde_json::to_vec(&rest)
                .unwrap_or_default()
                .into_boxed_slice(),
        }
    }

    /// The metadata as it arrived (less what [`trim`] dropped); `None` if it cannot be
    /// decoded, which the caller treats as not cached.
    pub fn metadata(&self) -> Option<ObjectMeta> {
        let mut meta: ObjectMeta = serde_json::from_slice(&self.rest).ok()?;
        meta.name = Some(self.name.to_string());
        meta.namespace = Some(self.namespace.to_string());
        meta.resource_version = Some(self.resource_version.to_string());
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

    fn packed_event(s: &PartialObjectMeta<Secret>) -> watcher::Event<CachedSecret> {
        packed(&watcher::Event::Apply(s.clone()))
    }
}
