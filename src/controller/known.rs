//! What this process knows of the Secrets it manages, so that a reconcile reads a Secret from
//! the API server only when a decision needs what the watch cache does not hold.
//!
//! The Secrets are watched metadata only (no credentials in the cache). For each AWSIAMRole the
//! controller remembers a [`Known`] summary of the Secret version it last wrote or read in
//! full: while the cache shows the Secret at that very resourceVersion, the data is as
//! summarised (any change to a Secret, by anyone, changes its resourceVersion), so the
//! reconcile decides from the cached metadata and the summary. Otherwise, and after a restart,
//! it reads the Secret live, once, and remembers what it read.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;

use super::cache::CachedSecret;
use super::key::RoleKey;
use super::secret::Known;

/// How a reconcile observes the Secret of an AWSIAMRole.
#[derive(Debug)]
pub enum Observation {
    /// The cached metadata, at the version `known` describes.
    Cached {
        metadata: Box<Secret>,
        known: Box<Known>,
    },
    /// Read the Secret from the API server.
    ReadLive,
}

/// A write of this process in flight: the watch may deliver its event before the write's
/// response, so events of the Secret are held back until the response says whose they were.
#[derive(Default)]
struct Writing {
    /// The resourceVersion of the last event held back meanwhile.
    held_back: Option<String>,
}

/// A write of one Secret in flight (see [`SecretKnowledge::begin_write`]).
pub struct Write<'a> {
    knowledge: &'a SecretKnowledge,
    namespace: &'a str,
    name: &'a str,
    finished: bool,
}

impl Write<'_> {
    /// Ends the write: remembers the written Secret (`None`: the write failed, read it live
    /// next time). True when an event held back during the write was not this write's own
    /// (someone else changed the Secret right after): the caller must reconcile again.
    pub fn finish(mut self, written: Option<&Secret>) -> bool {
        self.finished = true;
        self.knowledge.end_write(self.namespace, self.name, written)
    }
}

impl Drop for Write<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.knowledge.end_write(self.namespace, self.name, None);
        }
    }
}

#[derive(Default)]
pub struct SecretKnowledge {
    entries: Mutex<HashMap<RoleKey, Known>>,
    writing: Mutex<HashMap<RoleKey, Writing>>,
    cache: OnceLock<(Store<CachedSecret>, watch::Receiver<bool>)>,
}

impl SecretKnowledge {
    /// The metadata cache of the labelled Secrets, trusted once `synced` turns true. Without
    /// it (the fast test tier) every reconcile reads its Secret live.
    pub fn attach(&self, store: Store<CachedSecret>, synced: watch::Receiver<bool>) {
        let _ = self.cache.set((store, synced));
    }

    /// How to observe the Secret `namespace/name`.
    pub fn observe(&self, namespace: &str, name: &str) -> Observation {
        let Some((store, synced)) = self.cache.get() else {
            return Observation::ReadLive;
        };
        if !*synced.borrow() {
            return Observation::ReadLive;
        }
        let cached = store.get(&ObjectRef::new(name).within(namespace));
        let Ok(entries) = self.entries.lock() else {
            return Observation::ReadLive;
        };
        // NOTE: a Secret missing from the cache is read live too: the cache holds only the
        // labelled Secrets, and a foreign Secret of the same name must be found before STS is
        // asked for credentials that could not be written.
        match (cached, entries.get(&key(namespace, name))) {
            (Some(cached), Some(known)) if cached.resource_version() == known.resource_version => {
                match cached.metadata() {
                    Some(metadata) => Observation::Cached {
                        metadata: Box::new(Secret {
                            metadata,
                            ..Secret::default()
                        }),
                        known: Box::new(known.clone()),
                    },
                    None => Observation::ReadLive,
                }
            }
            _ => Observation::ReadLive,
        }
    }

    /// Remembers `secret`, just written or read in full; `None` (there is none), or a Secret
    /// whose data cannot be summarised, is forgotten: the next reconcile reads it live.
    pub fn record(&self, namespace: &str, name: &str, secret: Option<&Secret>) {
        match secret.and_then(Known::of) {
            Some(known) => {
                if let Ok(mut entries) = self.entries.lock() {
                    entries.insert(key(namespace, name), known);
                }
            }
            None => self.forget(namespace, name),
        }
    }

    /// Forgets what this process knew of the Secret `namespace/name` (a write of it failed,
    /// whatever the reason): the next reconcile reads it live.
    pub fn forget(&self, namespace: &str, name: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&key(namespace, name));
        }
    }

    /// Marks a write of `namespace/name` in flight until [`Write::finish`]; a write abandoned
    /// (its reconcile cancelled at shutdown) ends as a failed one when the guard drops, so no
    /// Secret's events stay held back.
    pub fn begin_write<'a>(&'a self, namespace: &'a str, name: &'a str) -> Write<'a> {
        if let Ok(mut writing) = self.writing.lock() {
            writing.insert(key(namespace, name), Writing::default());
        }
        Write {
            knowledge: self,
            namespace,
            name,
            finished: false,
        }
    }

    fn end_write(&self, namespace: &str, name: &str, written: Option<&Secret>) -> bool {
        // NOTE: what was written is recorded before the write stops holding events back, under
        // the `writing` lock: an event of this very write arriving in between is then either
        // held back or found current, never taken for someone else's change. (Lock order:
        // `writing`, then `entries`; nothing takes them the other way round.)
        let writing = self.writing.lock().ok();
        match written {
            Some(secret) => self.record(namespace, name, Some(secret)),
            None => self.forget(namespace, name),
        }
        let held_back = writing
            .and_then(|mut w| w.remove(&key(namespace, name)))
            .and_then(|w| w.held_back);
        held_back.is_some_and(|rv| {
            written.and_then(|s| s.metadata.resource_version.as_ref()) != Some(&rv)
        })
    }

    /// Whether the watch event of `secret` may trigger a reconcile: not when it is the version
    /// this process last wrote or read (its own write, or a relist of what it knows), and not
    /// while a write of it is in flight (held back: see [`Write::finish`]).
    pub fn triggers(&self, secret: &PartialObjectMeta<Secret>) -> bool {
        let key = key(&secret.namespace().unwrap_or_default(), &secret.name_any());
        if let Ok(mut writing) = self.writing.lock()
            && let Some(w) = writing.get_mut(&key)
        {
            w.held_back = secret.metadata.resource_version.clone();
            return false;
        }
        !self.is_current(secret)
    }

    /// True when `secret` is the version this process last wrote or read.
    pub fn is_current(&self, secret: &PartialObjectMeta<Secret>) -> bool {
        let Ok(entries) = self.entries.lock() else {
            return false;
        };
        let key = key(&secret.namespace().unwrap_or_default(), &secret.name_any());
        matches!(
            entries.get(&key),
            Some(known)
                if secret.metadata.resource_version.as_ref() == Some(&known.resource_version)
        )
    }

    /// Forgets every Secret whose AWSIAMRole `keep` rejects (AWSIAMRoles gone).
    pub fn retain(&self, keep: impl Fn(&RoleKey) -> bool) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|k, _| keep(k));
        }
    }

    /// Secrets remembered.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn key(namespace: &str, name: &str) -> RoleKey {
    RoleKey::new(namespace, name)
}

/// The resourceVersion each AWSIAMRole got from this process's last status write, kept until
/// the watch delivers it: a cached object at another version may be behind that write, and a
/// status patch on it would conflict.
#[derive(Debug, Default)]
pub struct StatusWrites(Mutex<HashMap<RoleKey, String>>);

impl StatusWrites {
    /// This process wrote `key`'s status, which is now at `version`.
    pub fn wrote(&self, key: RoleKey, version: String) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(key, version);
        }
    }

    /// Whether the cached object (at resourceVersion `cached`) may be behind this process's
    /// last status write of it: then the reconcile reads it live. A cache that shows the write
    /// makes it forgotten.
    pub fn behind(&self, key: &RoleKey, cached: Option<&str>) -> bool {
        let Ok(mut written) = self.0.lock() else {
            return false;
        };
        match written.get(key) {
            Some(rv) if Some(rv.as_str()) == cached => {
                written.remove(key);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// The watch delivered `key` at `version` (already in the cache): a status write of this
    /// process it shows is forgotten, so the written versions are kept only while the watch is
    /// behind.
    pub fn seen(&self, key: &RoleKey, version: Option<&str>) {
        self.behind(key, version);
    }

    /// Forgets the roles that no longer exist.
    pub fn retain(&self, exists: impl Fn(&RoleKey) -> bool) {
        if let Ok(mut m) = self.0.lock() {
            m.retain(|key, _| exists(key));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().is_ok_and(|m| m.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::watcher;

    #[test]
    fn a_status_write_is_remembered_only_until_the_watch_shows_it() {
        let statuses = StatusWrites::default();
        let key = &RoleKey::new("testns", "app");
        statuses.wrote(key.clone(), "101".into());
        assert!(statuses.behind(key, Some("100")), "the cache predates it");
        assert!(statuses.behind(key, Some("100")), "still, until it is seen");
        statuses.seen(key, Some("101"));
        assert!(statuses.is_empty(), "forgotten");
        assert!(
            !statuses.behind(key, Some("102")),
            "a later version (someone else's) is not behind this process's write"
        );
        // The reconcile finds the cache caught up before the watch event is handled.
        statuses.wrote(key.clone(), "103".into());
        assert!(!statuses.behind(key, Some("103")));
        assert!(statuses.is_empty());
    }

    fn secret(rv: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("app".into()),
                namespace: Some("team".into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            data: Some(
                [("credentials.process".to_string(), ByteString(b"x".to_vec()))]
                    .into_iter()
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn meta(rv: &str) -> PartialObjectMeta<Secret> {
        PartialObjectMeta {
            types: None,
            metadata: secret(rv).metadata,
            _phantom: std::marker::PhantomData,
        }
    }

    fn knowledge(cached: Option<&str>) -> SecretKnowledge {
        let (store, mut writer) = kube::runtime::reflector::store();
        if let Some(rv) = cached {
            writer.apply_watcher_event(&watcher::Event::Apply(CachedSecret::of(&meta(rv))));
        }
        let (_tx, synced) = watch::channel(true);
        let k = SecretKnowledge::default();
        k.attach(store, synced);
        k
    }

    #[test]
    fn the_cache_answers_only_for_the_version_this_process_knows() {
        let k = knowledge(None);
        // Not in the (label-selected) cache: read live, a foreign Secret may hold the name.
        assert!(matches!(k.observe("team", "app"), Observation::ReadLive));
        // Written but not yet in the cache: read live (never assume it is gone).
        k.record("team", "app", Some(&secret("5")));
        assert!(matches!(k.observe("team", "app"), Observation::ReadLive));

        let k = knowledge(Some("5"));
        assert!(
            matches!(k.observe("team", "app"), Observation::ReadLive),
            "never read"
        );
        k.record("team", "app", Some(&secret("5")));
        let Observation::Cached { metadata, known } = k.observe("team", "app") else {
            panic!("cached")
        };
        assert_eq!(metadata.data, None, "no data from the cache");
        assert_eq!(known.resource_version, "5");
        assert!(k.is_current(&meta("5")));
        assert!(!k.is_current(&meta("6")), "someone else's change");
        k.record("team", "app", Some(&secret("4")));
        assert!(matches!(k.observe("team", "app"), Observation::ReadLive));
        k.retain(|_| false);
        assert!(k.is_empty());
    }

    #[test]
    fn events_during_a_write_are_held_back_and_someone_elses_are_reported() {
        let k = knowledge(None);
        // The watch delivers the write's own event before its response: nothing to do.
        let w = k.begin_write("team", "app");
        assert!(!k.triggers(&meta("5")));
        assert!(!w.finish(Some(&secret("5"))));
        assert!(!k.triggers(&meta("5")), "its own write triggers nothing");
        // Someone else's change lands right after the write, before its response.
        let w = k.begin_write("team", "app");
        assert!(!k.triggers(&meta("6")));
        assert!(!k.triggers(&meta("7")));
        assert!(w.finish(Some(&secret("6"))), "7 was not ours");
        assert!(k.triggers(&meta("8")), "no write in flight: events trigger");
        // A failed write: read live next time.
        let w = k.begin_write("team", "app");
        assert!(!w.finish(None));
        assert!(matches!(k.observe("team", "app"), Observation::ReadLive));
        // An abandoned write (its reconcile cancelled) holds nothing back once dropped.
        k.record("team", "app", Some(&secret("8")));
        drop(k.begin_write("team", "app"));
        assert!(k.triggers(&meta("9")));
        assert!(matches!(k.observe("team", "app"), Observation::ReadLive));
    }

    /// The end of a write must never leave a moment in which the written version is neither
    /// held back nor known: the watch event of the write itself would then trigger a needless
    /// reconcile. The test holds `entries`, so the ending write cannot record what it wrote,
    /// and watches whether it meanwhile stops holding events back.
    #[test]
    fn a_write_stops_holding_events_back_only_once_what_it_wrote_is_known() {
        use std::sync::TryLockError;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};
        let k = knowledge(None);
        let begun = AtomicBool::new(false);
        let entries = k.entries.lock().expect("lock");
        std::thread::scope(|threads| {
            let ending = threads.spawn(|| {
                let write = k.begin_write("team", "app");
                begun.store(true, Ordering::SeqCst);
                write.finish(Some(&secret("5")))
            });
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline {
                // Read first: a write begun before the look must show in it.
                let was_begun = begun.load(Ordering::SeqCst);
                let held_back = match k.writing.try_lock() {
                    Ok(writing) => writing.contains_key(&key("team", "app")),
                    // The ending write holds it while it waits to record.
                    Err(TryLockError::WouldBlock) => true,
                    Err(TryLockError::Poisoned(_)) => panic!("poisoned"),
                };
                assert!(
                    held_back || !was_begun,
                    "events of the Secret are no longer held back, but its write is not recorded"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(entries);
            assert!(!ending.join().expect("join"), "nothing else was held back");
        });
        assert!(!k.triggers(&meta("5")), "its own write triggers nothing");
    }

    #[test]
    fn a_failed_write_makes_the_next_reconcile_read_live() {
        // Known and cached at the same version: decided from the cache.
        let k = knowledge(Some("5"));
        k.record("team", "app", Some(&secret("5")));
        assert!(matches!(
            k.observe("team", "app"),
            Observation::Cached { .. }
        ));
        // A write of it fails (a conflict, a timeout): what was known is no longer trusted,
        // though the cache still shows the same version.
        let w = k.begin_write("team", "app");
        assert!(!w.finish(None));
        assert!(matches!(k.observe("team", "app"), Observation::ReadLive));
        // Read live and found: cached again.
        k.record("team", "app", Some(&secret("5")));
        assert!(matches!(
            k.observe("team", "app"),
            Observation::Cached { .. }
        ));
        // Read live and found gone: read live again next time.
        k.record("team", "app", None);
        assert!(matches!(k.observe("team", "app"), Observation::ReadLive));
    }

    #[test]
    fn without_a_synced_cache_every_secret_is_read_live() {
        let k = SecretKnowledge::default();
        assert!(matches!(k.observe("team", "app"), Observation::ReadLive));
        let (store, _writer) = kube::runtime::reflector::store::<CachedSecret>();
        let (_tx, synced) = watch::channel(false);
        k.attach(store, synced);
        assert!(matches!(k.observe("team", "app"), Observation::ReadLive));
    }
}
