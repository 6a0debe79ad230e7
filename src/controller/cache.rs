//! What the watch caches keep of each object: the fields no decision reads are dropped as
//! objects arrive, so the controller's memory per AWSIAMRole stays small.

use kube::Resource;

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

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
        trim(&mut s);
        assert!(s.metadata.managed_fields.is_none());
        let annotations = s.metadata.annotations.expect("annotations");
        assert_eq!(annotations.len(), 1);
        assert_eq!(annotations.get("keep").map(String::as_str), Some("me"));
    }
}
