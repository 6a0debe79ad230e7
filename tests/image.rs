//! The image scripts/build-image.sh assembles: checked file by file (static binary, CA roots,
//! user 65532, no shell, no libc), reproducible, in agreement with the Dockerfile, and run from
//! its own extracted root (`chroot`, nothing from the host) as the chart's bootstrap-mode
//! Deployment: it reads its own mounted credentials.json and keeps renewing it past the seed's
//! expiry against the STS double, which rejects expired keys.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kube::api::PostParams;

use support::helm::{CHART, template};
use support::kubelet::{SecretVolume, VolumeSpec};
use support::pod::{Entrypoint, Pod, container, deployment, wait_for_probes};
use support::sts_double::StsDouble;
use support::{binary_path, data, role, scene, wait_for_within};

const NAME: &str = "kube-aws-iam-controller";

fn build_image(out: &Path) -> PathBuf {
    // The environment of a shell, not of `cargo test` (whose variables would change the
    // release build's fingerprints and rebuild it from zero).
    let keep = ["PATH", "HOME", "KAIC_CACHE", "CARGO_HOME", "RUSTUP_HOME"];
    let status = Command::new(support::repo().join("scripts/build-image.sh"))
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| keep.contains(&k.as_str())))
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .expect("scripts/build-image.sh runs");
    assert!(status.success(), "scripts/build-image.sh failed");
    out.to_path_buf()
}

/// The image directory (test.sh builds it and passes KAIC_IMAGE_DIR; else built here).
fn image_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| match std::env::var_os("KAIC_IMAGE_DIR") {
        Some(d) => PathBuf::from(d),
        None => build_image(&support::repo().join("target/image")),
    })
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    std::fs::read(layout.join("blobs/sha256").join(hex)).expect("blob")
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("json")
}

/// (manifest, config) of the image in the OCI layout.
fn manifest_and_config() -> (serde_json::Value, serde_json::Value) {
    let layout = image_dir().join("oci");
    let index = json(&std::fs::read(layout.join("index.json")).expect("index.json"));
    let digest = index["manifests"][0]["digest"].as_str().expect("digest");
    let manifest = json(&blob(&layout, digest));
    let config = json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().expect("config"),
    ));
    (manifest, config)
}

/// The image's filesystem, extracted layer by layer into a fresh directory.
fn extract_root() -> tempfile::TempDir {
    let (manifest, _) = manifest_and_config();
    let root = tempfile::tempdir().expect("root");
    let layout = image_dir().join("oci");
    for layer in manifest["layers"].as_array().expect("layers") {
        let digest = layer["digest"].as_str().expect("digest");
        let path = layout.join("blobs/sha256").join(&digest[7..]);
        let status = Command::new("tar")
            .arg("-xf")
            .arg(&path)
            .arg("-C")
            .arg(root.path())
            .status()
            .expect("tar");
        assert!(status.success(), "extract {digest}");
    }
    root
}

fn files(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).expect("dir").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("rel").display().to_string();
            if p.is_dir() && !p.is_symlink() {
                walk(&p, root, out);
            } else {
                out.insert(rel);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// Whether an ELF file asks for a program interpreter (a dynamic loader, i.e. libc).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "an ELF file");
    assert_eq!(elf[4], 2, "64-bit");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().expect("phoff")) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(elf[o..o + 4].try_into().expect("p_type")) == 3 // PT_INTERP
    })
}

#[test]
fn the_image_holds_a_static_binary_ca_roots_and_a_user_and_no_shell() {
    let (manifest, config) = manifest_and_config();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/kube-aws-iam-controller"])
    );
    assert!(c["Cmd"].is_null(), "no Cmd: {}", c["Cmd"]);
    let labels = &c["Labels"];
    for key in ["source", "version", "revision", "licenses", "created"] {
        let v = labels[format!("org.opencontainers.image.{key}")]
            .as_str()
            .unwrap_or_default();
        assert!(!v.is_empty(), "label org.opencontainers.image.{key}");
    }
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.licenses"], "MIT");

    let root = extract_root();
    let expected: BTreeSet<String> = [
        "kube-aws-iam-controller",
        "etc/group",
        "etc/passwd",
        "etc/ssl/certs/ca-certificates.crt",
    ]
    .map(String::from)
    .into();
    assert_eq!(
        files(root.path()),
        expected,
        "nothing else: no shell, no libc"
    );
    let bin = std::fs::read(root.path().join("kube-aws-iam-controller")).expect("binary");
    assert!(!has_interpreter(&bin), "the binary is statically linked");
    let host = std::fs::read(binary_path()).expect("host binary");
    assert!(
        has_interpreter(&host),
        "the check can tell a dynamic binary"
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).expect("passwd");
    assert!(passwd.contains(":65532:65532:"), "{passwd}");
    let roots =
        std::fs::read_to_string(root.path().join("etc/ssl/certs/ca-certificates.crt")).expect("ca");
    assert!(
        roots.matches("-----BEGIN CERTIFICATE-----").count() > 100,
        "a full set of CA roots"
    );
    assert_eq!(
        c["Env"]
            .as_array()
            .expect("env")
            .iter()
            .filter(|e| e.as_str().is_some_and(|e| e.starts_with("SSL_CERT_FILE=")))
            .count(),
        1
    );
}

#[test]
fn the_same_commit_builds_the_same_digest() {
    let again = tempfile::tempdir().expect("out");
    build_image(again.path());
    let first = std::fs::read_to_string(image_dir().join("digest")).expect("digest");
    let second = std::fs::read_to_string(again.path().join("digest")).expect("digest");
    assert!(first.starts_with("sha256:"), "{first}");
    assert_eq!(first, second);
}

/// The copy of the sources build-image.sh builds from, after another tree was built there: a
/// changed file must be newer than that build (else Cargo keeps the other tree's binary) even
/// when it is older in this clone, an unchanged one must keep its time (else every build
/// recompiles the crate), and a file gone from the tree must go from the copy.
#[test]
fn the_build_copy_of_the_sources_follows_their_content_not_their_times() {
    use std::time::SystemTime;
    let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let set_time = |path: &Path, time: SystemTime| {
        std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open")
            .set_modified(time)
            .expect("set mtime");
    };
    let mtime = |path: &Path| {
        std::fs::metadata(path)
            .expect("metadata")
            .modified()
            .expect("mtime")
    };
    let sync = |repo: &Path, copy: &Path, files: &[&str]| {
        let status = Command::new(support::repo().join("scripts/sync-tree.sh"))
            .arg(repo)
            .arg(copy)
            .args(files)
            .status()
            .expect("scripts/sync-tree.sh runs");
        assert!(status.success(), "scripts/sync-tree.sh failed");
    };
    let (repo, copy) = (
        tempfile::tempdir().expect("repo"),
        tempfile::tempdir().expect("copy"),
    );
    let (repo, copy) = (repo.path(), copy.path().join("src"));
    std::fs::create_dir_all(repo.join("src/aws")).expect("mkdir");
    for (file, text) in [
        ("Cargo.toml", "[package]"),
        ("src/main.rs", "fn main() {}"),
        ("src/aws/old.rs", "// gone next"),
    ] {
        std::fs::write(repo.join(file), text).expect("write");
    }
    sync(
        repo,
        &copy,
        &["Cargo.toml", "src/main.rs", "src/aws/old.rs"],
    );
    // Another tree was built from the copy: its files are older than that build's outputs.
    let (written, built) = (at(1_600_000_000), at(1_600_001_000));
    for file in ["Cargo.toml", "src/main.rs", "src/aws/old.rs"] {
        set_time(&copy.join(file), written);
    }
    // This clone: main.rs differs, with a time older than that build; old.rs is gone; new.rs
    // is new, also old; Cargo.toml is the same bytes with another time.
    std::fs::write(repo.join("src/main.rs"), "fn main() { run() }").expect("write");
    std::fs::write(repo.join("src/new.rs"), "pub fn run() {}").expect("write");
    std::fs::remove_file(repo.join("src/aws/old.rs")).expect("rm");
    for file in ["Cargo.toml", "src/main.rs", "src/new.rs"] {
        set_time(&repo.join(file), at(1_500_000_000));
    }
    sync(repo, &copy, &["Cargo.toml", "src/main.rs", "src/new.rs"]);
    for file in ["src/main.rs", "src/new.rs"] {
        assert_eq!(
            std::fs::read(copy.join(file)).expect("copied"),
            std::fs::read(repo.join(file)).expect("source"),
            "{file}"
        );
        assert!(
            mtime(&copy.join(file)) > built,
            "{file} changed but is not newer than the last build: Cargo would keep its binary"
        );
    }
    assert_eq!(
        mtime(&copy.join("Cargo.toml")),
        written,
        "an unchanged file keeps its time"
    );
    assert!(
        !copy.join("src/aws/old.rs").exists(),
        "a removed file stays"
    );
    assert!(!copy.join("src/aws").exists(), "an emptied directory stays");
}

/// The value of `NAME=value` (a Dockerfile ENV pair or a shell assignment) in `text`.
fn assignment(text: &str, name: &str) -> String {
    let at = text
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("{name} not set"));
    let rest = &text[at + name.len() + 1..];
    let value = if let Some(quoted) = rest.strip_prefix('"') {
        &quoted[..quoted.find('"').expect("closing quote")]
    } else {
        rest.split_whitespace().next().expect("value")
    };
    value.to_string()
}

#[test]
fn the_dockerfile_agrees_with_the_build_script() {
    let dockerfile =
        std::fs::read_to_string(support::repo().join("Dockerfile")).expect("Dockerfile");
    let script = std::fs::read_to_string(support::repo().join("scripts/build-image.sh"))
        .expect("build-image.sh");
    // The same cargo invocation and build settings.
    let cargo = |text: &str| {
        text.lines()
            .find_map(|l| l.find("cargo build").map(|i| l[i..].to_string()))
            .expect("cargo build")
            .replace("\"$TARGET\"", "x86_64-unknown-linux-musl")
            .replace(" >&2)", "")
    };
    assert_eq!(cargo(&dockerfile), cargo(&script));
    for name in [
        "CARGO_PROFILE_RELEASE_STRIP",
        "CARGO_PROFILE_RELEASE_CODEGEN_UNITS",
        "CC_x86_64_unknown_linux_musl",
    ] {
        assert_eq!(
            assignment(&dockerfile, name),
            assignment(&script, name),
            "{name}"
        );
    }
    let flags = assignment(&dockerfile, "RUSTFLAGS");
    assert!(
        flags.starts_with("-C target-feature=+crt-static "),
        "{flags}"
    );
    assert!(assignment(&script, "RUSTFLAGS").starts_with("-C target-feature=+crt-static "));

    // The final stage: from scratch, no RUN (there is no shell), the image config of the script.
    let last = &dockerfile[dockerfile.rfind("\nFROM ").expect("FROM")..];
    assert!(last.starts_with("\nFROM scratch"), "{last}");
    assert!(!last.lines().any(|l| l.starts_with("RUN")), "{last}");
    let (_, config) = manifest_and_config();
    let c = &config["config"];
    let instruction = |word: &str| {
        last.lines()
            .find_map(|l| l.strip_prefix(&format!("{word} ")))
            .unwrap_or_else(|| panic!("{word} in the final stage"))
            .to_string()
    };
    assert_eq!(instruction("USER"), c["User"].as_str().expect("user"));
    let entrypoint: serde_json::Value =
        serde_json::from_str(&instruction("ENTRYPOINT")).expect("exec form");
    assert_eq!(entrypoint, c["Entrypoint"]);
    assert_eq!(
        instruction("WORKDIR"),
        c["WorkingDir"].as_str().expect("workdir")
    );
    let env = instruction("ENV");
    assert!(
        c["Env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e.as_str() == Some(env.as_str())),
        "{env}"
    );
    for key in ["title", "source", "licenses"] {
        let label = format!("org.opencontainers.image.{key}");
        let value = assignment(last, &label);
        assert_eq!(
            c["Labels"][&label].as_str(),
            Some(value.as_str()),
            "{label}"
        );
    }
    // The same files: the script's `install` lines and the Dockerfile's name the same targets.
    let targets = |text: &str| -> BTreeSet<String> {
        text.split_whitespace()
            .filter_map(|w| {
                let w = w.trim_matches('"');
                [
                    "/kube-aws-iam-controller",
                    "/etc/passwd",
                    "/etc/group",
                    "/etc/ssl/certs/ca-certificates.crt",
                ]
                .into_iter()
                .find(|t| w.ends_with(t) && (w.starts_with("/rootfs") || w.starts_with("$root")))
                .map(String::from)
            })
            .collect()
    };
    assert_eq!(targets(&dockerfile), targets(&script));
    assert_eq!(targets(&script).len(), 4);
}

/// `kube-aws-iam-controller bootstrap`, the operator's side, with the operator's credentials.
/// Runs off the runtime's thread: the STS double is served by this test's runtime.
async fn seed(kubeconfig: &Path, ns: &str, sts: &str) {
    let (kubeconfig, ns, sts) = (kubeconfig.to_path_buf(), ns.to_string(), sts.to_string());
    tokio::task::spawn_blocking(move || seed_blocking(&kubeconfig, &ns, &sts))
        .await
        .expect("join");
}

fn seed_blocking(kubeconfig: &Path, ns: &str, sts: &str) {
    let out = Command::new(binary_path())
        .arg("bootstrap")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--namespace={ns}"))
        .arg(format!("--name={NAME}"))
        .arg("--role=kaic-controller")
        .arg(format!("--sts-endpoint={sts}"))
        .arg("--sts-region=us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDOPERATOR00000000")
        .env("AWS_SECRET_ACCESS_KEY", "operator-secret")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("bootstrap runs");
    assert!(
        out.status.success(),
        "bootstrap failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_image_runs_the_bootstrap_deployment_past_the_seed_expiry() {
    let s = scene("image").await;
    let root = extract_root();
    let (_, config) = manifest_and_config();
    let entrypoint: Vec<String> =
        serde_json::from_value(config["config"]["Entrypoint"].clone()).expect("entrypoint");

    let sts = StsDouble::start().await;
    let prefix = support::BASE_ROLE_ARN;
    let controller_arn = format!("{prefix}kaic-controller");
    let app_arn = format!("{prefix}app");
    sts.lifetime(&controller_arn, Duration::from_secs(30));
    sts.lifetime(&app_arn, Duration::from_secs(20));

    // The chart in bootstrap mode, as the README installs it off AWS.
    let port = support::free_port().to_string();
    let rendered = template(
        NAME,
        &s.ns,
        &[
            "--values",
            &format!("{CHART}/ci/bootstrap-values.yaml"),
            "--set",
            &format!("adminPort={port}"),
            "--set",
            &format!("sts.endpoint={}", sts.endpoint),
            "--set",
            "sts.region=us-east-1",
            "--set",
            "refreshLimit=12s",
        ],
    );
    support::apply_yaml(
        &s.client,
        &rendered,
        "chart (bootstrap)",
        Some(&s.ns),
        false,
    )
    .await;
    seed(&s.env.kubeconfig, &s.ns, &sts.endpoint).await;
    let seed_secret = s.secrets.get(NAME).await.expect("seed");
    let seed_expiry = chrono::DateTime::parse_from_rfc3339(&data(&seed_secret, "expire"))
        .expect("expire")
        .with_timezone(&chrono::Utc);

    // The chart sets neither defaultMode nor fsGroup: the API's 0644, root-owned, as the kubelet
    // lays it out.
    let volume = SecretVolume::start(
        s.env,
        &s.ns,
        NAME,
        &VolumeSpec {
            default_mode: 0o644,
            fs_group: None,
            ..VolumeSpec::default()
        },
    )
    .await;
    let d = deployment(&rendered);
    let pod = Pod {
        env: s.env,
        client: &s.client,
        namespace: &s.ns,
        name: "image-0",
        deployment: &d,
        volumes: BTreeMap::from([("aws-iam-credentials".to_string(), volume.dir.clone())]),
        entrypoint: Entrypoint::Image {
            root: root.path().to_path_buf(),
            entrypoint,
        },
    };
    let bin = pod.run().await;
    wait_for_probes(container(&d)).await;
    s.roles
        .create(&PostParams::default(), &role("app", "app", 3600))
        .await
        .expect("create app");

    wait_for_within("the seed to expire", Duration::from_secs(60), || async {
        (chrono::Utc::now() > seed_expiry + chrono::Duration::seconds(2)).then_some(())
    })
    .await;
    let after_seed = Instant::now();
    wait_for_within(
        "an app issue after the seed expired",
        Duration::from_secs(60),
        || async {
            sts.requests()
                .into_iter()
                .any(|r| {
                    r.role_arn.as_deref() == Some(app_arn.as_str())
                        && r.received_at > after_seed
                        && r.status == 200
                })
                .then_some(())
        },
    )
    .await;
    // Two renewals of its own: the second signed with the first's keys, read back from the file.
    let keys = wait_for_within(
        "two renewals of the controller's own credentials",
        Duration::from_secs(60),
        || async {
            let keys = sts.issued_keys(&controller_arn);
            (keys.len() >= 3).then_some(keys)
        },
    )
    .await;
    let renewals: Vec<_> = sts
        .requests()
        .into_iter()
        .filter(|r| r.role_arn.as_deref() == Some(controller_arn.as_str()) && r.status == 200)
        .skip(1)
        .collect();
    assert_eq!(renewals[1].caller_access_key, Some(keys[1].clone()));
    let failed: Vec<_> = sts
        .requests()
        .into_iter()
        .filter(|r| r.status != 200)
        .collect();
    assert!(failed.is_empty(), "failed STS requests: {failed:?}");
    let logs = bin.logs();
    assert!(!logs.contains("forbidden"), "{logs}");
    let json: serde_json::Value =
        serde_json::from_str(&data(&seed_secret, "credentials.json")).expect("json");
    assert!(!logs.contains(json["SecretAccessKey"].as_str().expect("key")));
    drop(volume);
    bin.kill();
}

/// crane (scripts/build-crane.sh; test.sh builds it first).
fn crane() -> PathBuf {
    let out = Command::new(support::repo().join("scripts/build-crane.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/build-crane.sh runs");
    assert!(out.status.success(), "scripts/build-crane.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn the_readmes_push_command_publishes_the_same_digest() {
    let crane = crane();
    let port = support::free_port();
    let log = tempfile::NamedTempFile::new().expect("log");
    let registry = support::spawn_watched(
        &crane,
        &[
            "registry".into(),
            "serve".into(),
            format!("--address=127.0.0.1:{port}"),
        ],
        log.path(),
        &[],
    );
    let registry = Registry(registry);
    let reference = format!(
        "127.0.0.1:{port}/kube-aws-iam-controller:{}",
        env!("CARGO_PKG_VERSION")
    );
    let mut pushed = false;
    for _ in 0..100 {
        // `crane push target/image/oci REGISTRY/kube-aws-iam-controller:VERSION` (README).
        let status = Command::new(&crane)
            .arg("push")
            .arg(image_dir().join("oci"))
            .arg(&reference)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("crane push");
        if status.success() {
            pushed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(pushed, "crane push to the local registry");
    let digest = Command::new(&crane)
        .arg("digest")
        .arg(&reference)
        .output()
        .expect("crane digest");
    let built = std::fs::read_to_string(image_dir().join("digest")).expect("digest");
    assert_eq!(String::from_utf8_lossy(&digest.stdout).trim(), built.trim());
    drop(registry);
}

/// Stops the registry's watchdog (and so the registry) when dropped.
struct Registry(std::process::Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}
