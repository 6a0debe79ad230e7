//! The one key of per-role state (backoff, status writes, what is known of its Secret, the
//! metrics): an AWSIAMRole's namespace and name, built in one place and never parsed back.

use std::fmt;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::crd::AWSIAMRole;

/// An AWSIAMRole by namespace and name (its Secret has the same ones).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleKey {
    namespace: Box<str>,
    name: Box<str>,
}

impl RoleKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        RoleKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of `role` (or of a Secret's AWSIAMRole: the same namespace and name).
    pub fn of<K: ResourceExt>(object: &K) -> Self {
        RoleKey::new(&object.namespace().unwrap_or_default(), &object.name_any())
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The reference the watch caches are looked up by.
    pub fn to_ref(&self) -> ObjectRef<AWSIAMRole> {
        ObjectRef::new(&self.name).within(&self.namespace)
    }
}

impl fmt::Display for RoleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
