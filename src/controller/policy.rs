//! The namespace role policy at run time: the mode, the controller's own identities once learned,
//! and the watched Namespaces' annotations. The decision itself is `crate::policy::evaluate`.

use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::{info, warn};

use crate::aws::arn::{BaseRoleArn, RoleArn};
use crate::aws::sts::StsIssuer;
use crate::crd::AWSIAMRole;
use crate::policy::{self, Guard, PolicyInput, PolicyMode, Verdict};

/// Namespaces as the controller caches them: metadata only.
pub type NamespaceStore = Store<PartialObjectMeta<Namespace>>;

/// What a reconcile asks before it calls STS.
pub struct PolicyContext {
    pub mode: PolicyMode,
    /// The controller's own AWSIAMRole (namespace, name).
    own: Option<(String, String)>,
    /// `None` until the controller knows its own identity: nothing is issued before.
    guard: RwLock<Option<Guard>>,
    namespaces: OnceLock<NamespaceStore>,
}

/// The answer for one AWSIAMRole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// The policy's verdict.
    Verdict(Verdict),
    /// Not known yet (the controller's identity or the Namespace is not known yet): neither
    /// issue nor withdraw; look again soon.
    Pending(&'static str),
}

impl PolicyContext {
    /// `guard` is `None` while the controller's own identity is still to be learned
    /// ([`PolicyContext::set_guard`]).
    pub fn new(mode: PolicyMode, own: Option<(String, String)>, guard: Option<Guard>) -> Self {
        PolicyContext {
            mode,
            own,
            guard: RwLock::new(guard),
            namespaces: OnceLock::new(),
        }
    }

    /// No namespace policy and no identity to protect: what tests of other features use.
    pub fn permissive() -> Self {
        PolicyContext::new(PolicyMode::None, None, Some(Guard::default()))
    }

    pub fn set_guard(&self, guard: Guard) {
        if let Ok(mut g) = self.guard.write() {
            *g = Some(guard);
        }
    }

    /// Gives the reconciler the Namespace cache (once, from the watch in `controller::run`).
    pub fn attach(&self, store: NamespaceStore) {
        let _ = self.namespaces.set(store);
    }

    /// True when the mode needs the Namespaces' annotations.
    pub fn watches_namespaces(&self) -> bool {
        self.mode != PolicyMode::None
    }

    /// The judgement for `role`, which resolves to `arn`.
    pub fn judge(&self, role: &AWSIAMRole, arn: &RoleArn, base: Option<&BaseRoleArn>) -> Judgement {
        let ns = role.namespace().unwrap_or_default();
        let own = self
            .own
            .as_ref()
            .is_some_and(|(n, name)| *n == ns && *name == role.name_any());
        let Ok(guard) = self.guard.read() else {
            return Judgement::Pending("the controller's identity is not readable");
        };
        let Some(guard) = guard.as_ref() else {
            return Judgement::Pending("the controller's own identity is not known yet");
        };
        let namespace = if self.watches_namespaces() && !own {
            let Some(store) = self.namespaces.get() else {
                return Judgement::Pending("namespaces are not watched yet");
            };
            match store.get(&ObjectRef::new(&ns)) {
                Some(n) => Some(n),
                None => return Judgement::Pending("the namespace is not in the cache yet"),
            }
        } else {
            None
        };
        Judgement::Verdict(policy::evaluate(&PolicyInput {
            mode: self.mode,
            namespace: &ns,
            annotations: namespace.as_ref().map(|n| n.annotations()),
            arn,
            base,
            guard,
            own,
        }))
    }
}

/// Learns the controller's own identity from STS `GetCallerIdentity` (retrying while STS cannot
/// be asked), adds it to `guard`, and puts the guard in force. Until then nothing is issued.
pub async fn learn_identity(policy: &PolicyContext, sts: &StsIssuer, mut guard: Guard) {
    let mut delay = Duration::from_secs(1);
    loop {
        match sts.caller_arn().await {
            Ok(identity) => {
                if guard.protect_identity(&identity, "the controller's own role") {
                    info!(
                        identity,
                        "the controller's own role is never issued to an AWSIAMRole"
                    );
                } else {
                    info!(identity, "the controller's identity is not a role");
                }
                policy.set_guard(guard);
                return;
            }
            Err(e) => {
                warn!(error = %e, retry_in_s = delay.as_secs(), "GetCallerIdentity failed; nothing is issued until the controller knows its own identity");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}
