//! A pod's Secret volume laid out by the kubelet's own code (tests/kubelet-volume, built by
//! scripts/build-kubelet-volume.sh), and the view a container of that pod has: the volume
//! mounted read-only at /meta/aws-iam in a private mount namespace, the process running as a
//! non-root user with the pod's fsGroup.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::{Env, cache_dir, spawn_watched, wait_for};

/// The Kubernetes version whose kubelet code lays out the volume.
pub const KUBE_VERSION: &str = "v1.37.2";
/// `securityContext.runAsUser` of the test pods.
pub const RUN_AS_USER: u32 = 1000;
/// `securityContext.runAsGroup`.
pub const RUN_AS_GROUP: u32 = 1000;
/// `securityContext.fsGroup`: the volume's files get this group.
pub const FS_GROUP: u32 = 2000;
/// Where the pods mount the Secret (`credentials.process` names this path).
pub const MOUNT: &str = "/meta/aws-iam";

/// Path of the kubelet-volume binary: `KAIC_KUBELET_VOLUME`, else what the build script
/// builds (or finds in its cache).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KAIC_KUBELET_VOLUME") {
        return PathBuf::from(p);
    }
    let out = Command::new(super::repo().join("scripts/build-kubelet-volume.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("scripts/build-kubelet-volume.sh runs");
    assert!(
        out.status.success(),
        "scripts/build-kubelet-volume.sh failed (see above); it needs Go and the Go module proxy \
         on a cold cache (under {})",
        cache_dir().display()
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The pod's `volumes[].secret` and the kubelet's pace.
#[derive(Clone, Debug)]
pub struct VolumeSpec {
    /// `defaultMode` (the API's default is 0644).
    pub default_mode: u32,
    /// `items`: (key, path, mode); empty projects every key under its own name.
    pub items: Vec<(String, String, Option<u32>)>,
    /// The pod's `fsGroup`.
    pub fs_group: Option<u32>,
    /// A change of the Secret reaches the files this long after the kubelet saw it ...
    pub delay: Duration,
    /// ... plus a uniformly random part of this (the pod sync period's jitter).
    pub jitter: Duration,
}

impl Default for VolumeSpec {
    /// A pod with `defaultMode: 0440` and `fsGroup`, updated promptly.
    fn default() -> Self {
        VolumeSpec {
            default_mode: 0o440,
            items: Vec::new(),
            fs_group: Some(FS_GROUP),
            delay: Duration::from_millis(200),
            jitter: Duration::ZERO,
        }
    }
}

/// One projection the kubelet code made.
#[derive(Clone, Debug)]
pub struct Projection {
    pub resource_version: String,
    /// From seeing the change to the files being in place.
    pub delay: Duration,
}

/// A Secret volume kept up to date by the kubelet's code until dropped.
pub struct SecretVolume {
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Drop for SecretVolume {
    fn drop(&mut self) {
        // SIGTERM to the watchdog: its trap stops the program.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl SecretVolume {
    /// Starts laying out Secret `ns/name` and waits for the first projection (the kubelet
    /// starts no container before its Secret volumes are set up).
    pub async fn start(env: &Env, ns: &str, name: &str, spec: &VolumeSpec) -> SecretVolume {
        let bin = binary();
        let dir = env
            .dir
            .join(format!("volume-{ns}-{name}-{}", super::rand_suffix()));
        std::fs::create_dir_all(&dir).expect("volume dir");
        let log = dir.with_extension("log");
        let mut args = vec![
            format!("--kubeconfig={}", env.kubeconfig.display()),
            format!("--namespace={ns}"),
            format!("--secret={name}"),
            format!("--dir={}", dir.display()),
            format!("--default-mode={:o}", spec.default_mode),
            format!("--delay={}ms", spec.delay.as_millis()),
            format!("--jitter={}ms", spec.jitter.as_millis()),
        ];
        if let Some(g) = spec.fs_group {
            args.push(format!("--fs-group={g}"));
        }
        for (key, path, mode) in &spec.items {
            args.push(match mode {
                Some(m) => format!("--item={key}:{path}:{m:o}"),
                None => format!("--item={key}:{path}"),
            });
        }
        let child = spawn_watched(&bin, &args, &log, &[]);
        let v = SecretVolume { dir, log, child };
        wait_for(
            "the kubelet code's first projection of the Secret",
            || async { (!v.projections().is_empty()).then_some(()) },
        )
        .await;
        v
    }

    /// Every projection so far, in order.
    pub fn projections(&self) -> Vec<Projection> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "projected")
            .map(|v| Projection {
                resource_version: v["resourceVersion"].as_str().unwrap_or_default().to_owned(),
                delay: Duration::from_millis(v["delayMs"].as_u64().unwrap_or_default()),
            })
            .collect()
    }

    /// The file a container reads as `/meta/aws-iam/<name>`, read from the host.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

/// Who a container runs as.
#[derive(Clone, Copy, Debug)]
pub struct PodUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary group (the pod's fsGroup).
    pub fs_group: Option<u32>,
}

impl Default for PodUser {
    /// `runAsUser: 1000`, `runAsGroup: 1000`, `fsGroup: 2000`.
    fn default() -> Self {
        PodUser {
            uid: RUN_AS_USER,
            gid: RUN_AS_GROUP,
            fs_group: Some(FS_GROUP),
        }
    }
}

/// The container's view set up by `sh` as root before it drops to the pod's user: the volume
/// read-only at /meta/aws-iam, and (as in an image, whose tools any user may run) the tool
/// caches under the 0700 /root visible through a 0755 tmpfs.
const CONTAINER: &str = r#"
set -e
vol=$0; uid=$1; gid=$2; groups=$3; shift 3
mount --bind "$vol" /meta/aws-iam
mount -o remount,bind,ro /meta/aws-iam
if [ "$uid" != 0 ]; then
  mount --rbind /root /meta/.root
  mount -t tmpfs -o mode=0755 tmpfs /root
  for d in .cache .m2 .cargo .rustup .pyenv .npm go; do
    if [ -d "/meta/.root/$d" ]; then mkdir "/root/$d"; mount --rbind "/meta/.root/$d" "/root/$d"; fi
  done
  exec setpriv --reuid="$uid" --regid="$gid" --groups="$groups" -- "$@"
fi
exec "$@"
"#;

/// Runs `program` as a container of the pod: `volume` read-only at /meta/aws-iam in a private
/// mount namespace, as `user`. `home` (if given) is made the user's.
pub fn container(volume: &Path, user: PodUser, home: Option<&Path>, program: &str) -> Command {
    std::fs::create_dir_all(MOUNT).expect("create /meta/aws-iam mount point (run as root)");
    std::fs::create_dir_all("/meta/.root").expect("create /meta/.root");
    if let Some(home) = home {
        std::os::unix::fs::chown(home, Some(user.uid), Some(user.gid)).expect("chown home");
    }
    let groups = user
        .fs_group
        .map_or_else(|| user.gid.to_string(), |g| g.to_string());
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", CONTAINER])
        .arg(volume)
        .arg(user.uid.to_string())
        .arg(user.gid.to_string())
        .arg(groups)
        .arg(program);
    cmd
}
