//! The webhook's endpoint mode as a pod runs it: the real `serve-credentials` binary as the
//! sidecar container (the Secret volume read-only at /meta/aws-iam, the pod's in-memory token
//! volume at /meta/aws-iam-token, as the image's user 65532 with the pod's fsGroup), and app
//! containers that see the same token volume read-only.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube_aws_iam_controller::webhook::endpoint::{SIDECAR_USER, TOKEN_DIR, TOKEN_FILE};

use super::kubelet::{FS_GROUP, MOUNT, PodUser, container};

/// The controller binary, as the sidecar image runs it.
fn binary() -> String {
    super::binary_path().to_string_lossy().into_owned()
}

/// Binds the token volume (`ro`: read-only) at /meta/aws-iam-token in a private mount
/// namespace, then execs the rest (a `container` command, which keeps that mount).
const WITH_TOKEN_VOLUME: &str = r#"
set -e
tok=$0; ro=$1; shift
mount --bind "$tok" /meta/aws-iam-token
if [ "$ro" = ro ]; then mount -o remount,bind,ro /meta/aws-iam-token; fi
exec "$@"
"#;

fn with_token_volume(token_dir: &Path, read_only: bool, inner: &Command) -> Command {
    std::fs::create_dir_all(TOKEN_DIR)
        .expect("create the token volume's mount point (run as root)");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        WITH_TOKEN_VOLUME,
    ])
    .arg(token_dir)
    .arg(if read_only { "ro" } else { "rw" })
    .arg(inner.get_program())
    .args(inner.get_args());
    cmd
}

/// A running sidecar, under the harness's watchdog (it also ends when the test process dies);
/// stopped when dropped.
pub struct Sidecar {
    pub port: u16,
    /// The pod's emptyDir holding the token.
    pub token_dir: tempfile::TempDir,
    log: tempfile::TempDir,
    watchdog: Child,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        // SIGTERM to the watchdog: its trap stops the sidecar.
        let _ = Command::new("kill")
            .arg(self.watchdog.id().to_string())
            .status();
        let _ = self.watchdog.wait();
    }
}

impl Sidecar {
    /// Starts `serve-credentials` on `volume` (a kubelet-laid-out Secret volume) and waits
    /// until its startup probe passes, as the kubelet does before it starts the app containers.
    pub async fn start(volume: &Path) -> Sidecar {
        use std::os::unix::fs::PermissionsExt;
        let token_dir = tempfile::tempdir().expect("token dir");
        // An emptyDir is world-writable.
        std::fs::set_permissions(token_dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod token dir");
        let log = tempfile::tempdir().expect("log dir");
        let port = super::free_port();
        let mut inner = container(
            volume,
            PodUser {
                uid: SIDECAR_USER as u32,
                gid: SIDECAR_USER as u32,
                fs_group: Some(FS_GROUP),
            },
            None,
            &binary(),
        );
        inner.args([
            "serve-credentials".to_string(),
            format!("--dir={MOUNT}"),
            format!("--listen=127.0.0.1:{port}"),
            format!("--token-file={TOKEN_FILE}"),
        ]);
        let cmd = with_token_volume(token_dir.path(), false, &inner);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let watchdog = super::spawn_watched(
            Path::new(cmd.get_program()),
            &args,
            &log.path().join("sidecar.log"),
            &[],
        );
        let mut sidecar = Sidecar {
            port,
            token_dir,
            log,
            watchdog,
        };
        for _ in 0..150 {
            if let Ok(Some(status)) = sidecar.watchdog.try_wait() {
                panic!("the sidecar exited with {status}:\n{}", sidecar.log());
            }
            if sidecar.probe() {
                return sidecar;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "the sidecar's startup probe did not pass within 30 s:\n{}",
            sidecar.log()
        );
    }

    /// The startup probe the webhook injects: `serve-credentials --probe`.
    pub fn probe(&self) -> bool {
        Command::new(binary())
            .args([
                "serve-credentials",
                "--probe",
                &format!("--listen=127.0.0.1:{}", self.port),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` for this sidecar: the webhook's, on this port.
    pub fn full_uri(&self) -> String {
        format!(
            "http://127.0.0.1:{}{}",
            self.port,
            kube_aws_iam_controller::serve::CREDENTIALS_PATH
        )
    }

    /// An app container of the pod: `inner` (a `container` command) with the token volume
    /// mounted read-only.
    pub fn app(&self, inner: &Command) -> Command {
        with_token_volume(self.token_dir.path(), true, inner)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path().join("sidecar.log")).unwrap_or_default()
    }
}
