//! The Secret volume the other tests mount is the kubelet's: laid out by its own code
//! (tests/kubelet-volume) with `defaultMode`, per-key modes and the pod's fsGroup, mounted
//! read-only, read by a non-root user; a change reaches it only after the configured delay.

mod support;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};

use support::kubelet::{FS_GROUP, PodUser, SecretVolume, VolumeSpec, container};
use support::{Scene, scene, wait_for};

fn secret(name: &str, value: &str) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.data = Some(
        [
            ("credentials.json", value),
            ("credentials.process", "[default]\n"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect(),
    );
    s
}

#[tokio::test]
async fn the_volume_has_the_kubelets_layout_modes_and_group_and_is_read_only_for_the_pod() {
    let Scene {
        env, ns, secrets, ..
    } = scene("kubelet-volume").await;
    secrets
        .create(&PostParams::default(), &secret("app", "one"))
        .await
        .expect("create Secret");
    let spec = VolumeSpec {
        default_mode: 0o440,
        items: vec![
            ("credentials.json".into(), "credentials.json".into(), None),
            (
                "credentials.process".into(),
                "credentials.process".into(),
                Some(0o644),
            ),
        ],
        fs_group: Some(FS_GROUP),
        delay: Duration::from_secs(2),
        jitter: Duration::from_secs(1),
    };
    let volume = SecretVolume::start(env, &ns, "app", &spec).await;

    // The AtomicWriter's layout: keys are symlinks into ..data, itself a symlink to a
    // timestamped directory.
    let data_link = std::fs::read_link(volume.dir.join("..data")).expect("..data symlink");
    assert!(
        data_link.to_string_lossy().starts_with(".."),
        "{data_link:?}"
    );
    assert_eq!(
        std::fs::read_link(volume.dir.join("credentials.json")).expect("key symlink"),
        std::path::Path::new("..data/credentials.json")
    );
    // Modes: defaultMode 0440, or the item's own 0644 (the fsGroup's read-only mask adds group
    // read to either); the group is the fsGroup.
    let json = std::fs::metadata(volume.dir.join("credentials.json")).expect("stat");
    let process = std::fs::metadata(volume.dir.join("credentials.process")).expect("stat");
    assert_eq!(json.mode() & 0o7777, 0o440);
    assert_eq!(process.mode() & 0o7777, 0o644);
    assert_eq!((json.uid(), json.gid()), (0, FS_GROUP));
    let ts_dir = std::fs::metadata(volume.dir.join(&data_link)).expect("stat");
    assert_eq!(ts_dir.gid(), FS_GROUP);
    assert!(ts_dir.mode() & 0o2000 != 0, "setgid on the directory");
    assert_eq!(volume.read("credentials.json"), "one");

    // The pod's non-root user reads it, cannot write it, and is not root.
    let out = container(&volume.dir, PodUser::default(), None, "sh")
        .args([
            "-c",
            "id -u; cat /meta/aws-iam/credentials.json; echo; \
         if touch /meta/aws-iam/x 2>/dev/null; then echo writable; else echo read-only; fi",
        ])
        .output()
        .expect("run the container");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["1000", "one", "read-only"]
    );
    // Without the fsGroup, the pod's user cannot read the 0440 root-owned file.
    let out = container(
        &volume.dir,
        PodUser {
            fs_group: None,
            ..PodUser::default()
        },
        None,
        "cat",
    )
    .arg("/meta/aws-iam/credentials.json")
    .output()
    .expect("run the container");
    assert!(!out.status.success(), "read without the fsGroup");

    // A change arrives after the delay, not at once.
    secrets
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"credentials.json": "dHdv"}})),
        )
        .await
        .expect("update Secret");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        volume.read("credentials.json"),
        "one",
        "propagated before the delay"
    );
    wait_for("the change in the volume", || async {
        (volume.read("credentials.json") == "two").then_some(())
    })
    .await;
    let projections = volume.projections();
    assert_eq!(projections.len(), 2, "{projections:?}");
    assert!(
        projections[1].delay >= Duration::from_secs(2),
        "{projections:?}"
    );
}
