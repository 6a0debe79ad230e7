//! The namespace role policy at run time: the mode, the controller's own identities once learned,
//! and the watched Namespaces' annotations. The decision itself is `crate::policy::evaluate`.

use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::watch;

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
    /// The Namespace cache and whether it has been filled.
    namespaces: OnceLock<(NamespaceStore, watch::Receiver<bool>)>,
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

    /// Gives the reconciler the Namespace cache (once, from the watch in `controller::run`) and
    /// the flag that turns true once its initial list is in.
    pub fn attach(&self, store: NamespaceStore, synced: watch::Receiver<bool>) {
        let _ = self.namespaces.set((store, synced));
    }

    /// Resolves once the policy can judge every namespace: at once without a namespace policy
    /// or before the cache is attached (then [`Self::judge`] answers `Pending`), else when the
    /// Namespace cache is filled. A reconcile at start waits for it instead of finding its
    /// Namespace missing and looking again `--backoff-base` later.
    pub async fn namespaces_synced(&self) {
        if !self.watches_namespaces() {
            return;
        }
        if let Some((_, synced)) = self.namespaces.get() {
            let _ = synced.clone().wait_for(|s| *s).await;
        }
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
            let Some((store, _)) = self.namespaces.get() else {
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

/// Whether a watched Namespace's event reconciles the AWSIAMRoles in it, judged against the
/// cache's copy (`None`: not cached) before the event is applied: when its annotations (the
/// policy's input) changed, or when it is new to a cache that was already filled (a Namespace
/// created since, or during a watch outage: AWSIAMRoles in it may be waiting for it). The
/// initial list triggers nothing: every AWSIAMRole is reconciled by its own initial list, after
/// the Namespace cache is filled (`PolicyContext::namespaces_synced`); triggering them again
/// cost a second reconcile, and for a denied role a second AssumeRole call, at every start.
pub fn namespace_triggers(
    cached: Option<&PartialObjectMeta<Namespace>>,
    new: &PartialObjectMeta<Namespace>,
    synced: bool,
) -> bool {
    match cached {
        Some(old) => old.metadata.annotations != new.metadata.annotations,
        None => synced,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(annotations: &[(&str, &str)]) -> PartialObjectMeta<Namespace> {
        let mut ns = PartialObjectMeta::<Namespace>::default();
        ns.metadata.name = Some("team".into());
        ns.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        ns
    }

    #[test]
    fn a_namespace_triggers_its_roles_on_an_annotation_change_or_when_new_after_the_start() {
        let permitted = namespace(&[("iam.amazonaws.com/permitted", ".*")]);
        let narrowed = namespace(&[("iam.amazonaws.com/permitted", "app-.*")]);
        let mut relabelled = permitted.clone();
        relabelled.metadata.labels = Some([("team".into(), "a".into())].into());
        // The initial list: every role is reconciled by its own list.
        assert!(!namespace_triggers(None, &permitted, false));
        // Created after the start (or during an outage): its roles may be waiting for it.
        assert!(namespace_triggers(None, &permitted, true));
        assert!(namespace_triggers(Some(&permitted), &narrowed, true));
        // A relist after a 410 compares against the copy from before it.
        assert!(namespace_triggers(Some(&permitted), &narrowed, false));
        assert!(!namespace_triggers(Some(&permitted), &permitted, true));
        assert!(!namespace_triggers(Some(&permitted), &relabelled, true));
    }
}
