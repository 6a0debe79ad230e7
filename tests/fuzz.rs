//! Fuzzing of every parser that reads what others write (issue 24), with proptest inside
//! `cargo test`: ARNs and role references, the namespace policy annotations, the lenient
//! AWSIAMRole spec, the Secrets (data, annotations, the packed metadata cache), the webhook's
//! AdmissionReview and `mutate`, the `--credentials-file` reader, and the `serve-credentials`
//! sidecar's request handling.
//!
//! Each target replays its committed corpus (`tests/fuzz/corpus/<target>/`, one input a file)
//! and the failures proptest recorded (`tests/fuzz/regressions/<target>.txt`), then tries
//! generated inputs: structured ones (near-valid objects), corpus entries with random byte
//! edits, and plain random text. Every input must be handled without a panic and within
//! [`budget`] (a generous bound against regular-expression or JSON blow-ups, not a measure of
//! speed), and the target's own properties must hold. Each target prints how many inputs it
//! tried. `KAIC_FUZZ_CASES` sets the generated inputs per target (default 4,000; the README's
//! longer run uses 200,000), `KAIC_FUZZ_SEED` replays one run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::PartialObjectMeta;
use kube::core::admission::{AdmissionResponse, Operation};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{
    Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestRng, TestRunner,
};
use serde_json::{Value, json};

use kube_aws_iam_controller::aws::IssuedCredentials;
use kube_aws_iam_controller::aws::arn::{self, BaseRoleArn, RoleArn};
use kube_aws_iam_controller::aws::file_credentials::FileCredentials;
use kube_aws_iam_controller::controller::cache::CachedSecret;
use kube_aws_iam_controller::controller::secret::{self, Content};
use kube_aws_iam_controller::crd::{AWSIAMRole, AWSIAMRoleSpec, ROLE_REFERENCE_MAX};
use kube_aws_iam_controller::policy::{
    ALLOWED_ROLES_ANNOTATION, Guard, NamespacePolicy, PERMITTED_ANNOTATION,
};
use kube_aws_iam_controller::webhook::mutate::{self, Injection, MAX_WARNINGS};
use kube_aws_iam_controller::webhook::review::{self, Facts, RoleState};

// ---------------------------------------------------------------------------------------------
// The harness

/// Generated inputs per target.
fn cases() -> u32 {
    std::env::var("KAIC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000)
}

/// The most one input may take (debug build, two busy cores): far above what any input
/// needs (the slowest, 256 allowed-roles patterns compiled, takes 0.25 s alone and took 11 s
/// once beside two builds, so 30 s leaves room for a loaded CI machine), far below what a
/// blow-up (a backtracking regular expression, quadratic JSON on 16 KiB) takes.
/// `KAIC_FUZZ_BUDGET_MS` changes it.
fn budget() -> Duration {
    Duration::from_millis(
        std::env::var("KAIC_FUZZ_BUDGET_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30_000),
    )
}

/// How many inputs a target tried and the slowest one.
struct Stats {
    inputs: AtomicU64,
    slowest_us: AtomicU64,
}

impl Stats {
    const fn new() -> Self {
        Stats {
            inputs: AtomicU64::new(0),
            slowest_us: AtomicU64::new(0),
        }
    }

    /// Runs `f` on one input, counts it and asserts the time budget.
    fn time<T>(&self, what: &str, f: impl FnOnce() -> T) -> T {
        quiet_panics();
        let start = Instant::now();
        IN_CHECK.set(true);
        let out = f();
        IN_CHECK.set(false);
        let took = start.elapsed();
        self.inputs.fetch_add(1, Ordering::Relaxed);
        self.slowest_us
            .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        assert!(
            took <= budget(),
            "{what}: one input took {took:?}, over the budget of {:?}",
            budget()
        );
        out
    }
}

thread_local! {
    /// An input is being checked on this thread: its panic is a finding proptest reports
    /// (once, shrunk), not something to print at every shrinking step.
    static IN_CHECK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Keeps the panics of inputs under check quiet; every other panic prints as usual.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CHECK.get() {
                IN_CHECK.set(false);
            } else {
                default(info);
            }
        }));
    });
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target)
}

/// The committed corpus of `target`, sorted by file name.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("corpus of {target}: {e}"))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    let inputs: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).expect("corpus file"))
        .collect();
    assert!(!inputs.is_empty(), "corpus of {target} is empty");
    inputs
}

/// A random byte edit of a corpus entry, as libFuzzer's mutators make them.
#[derive(Clone, Debug)]
enum Edit {
    Insert(Index, u8),
    Replace(Index, u8),
    Delete(Index, Index),
    Duplicate(Index, Index),
    Truncate(Index),
}

/// Bytes that matter to the formats fuzzed here.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(
            b"\"\\{}[]:,0123456789*/.-+ZT:\n\t aAz@=_".to_vec()
        ),
        1 => any::<u8>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, n)| Edit::Duplicate(i, n)),
        any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn apply_edits(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len();
        match e {
            Edit::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
            Edit::Replace(i, b) if len > 0 => bytes[i.index(len)] = *b,
            Edit::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                let n = n.index(len - at).min(16) + 1;
                bytes.drain(at..(at + n).min(len));
            }
            Edit::Duplicate(i, n) if len > 0 => {
                let at = i.index(len);
                let n = n.index(len - at).min(64) + 1;
                let copy: Vec<u8> = bytes[at..(at + n).min(len)].to_vec();
                bytes.splice(at..at, copy);
            }
            Edit::Truncate(i) if len > 0 => bytes.truncate(i.index(len)),
            _ => {}
        }
    }
    bytes
}

/// Corpus entries with up to 8 random edits each.
fn mutated(corpus: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(corpus),
        prop::collection::vec(edit(), 0..8),
    )
        .prop_map(|(seed, edits)| apply_edits(seed, &edits))
}

/// The stack of the thread each fuzz test runs on. A debug build's frames are many times a
/// release build's, and proptest shrinks a failing input of a recursive strategy recursively: on
/// the test harness's 2 MiB a run once aborted with a stack overflow (the policy target, on a
/// loaded machine) instead of reporting its input. Reserved, not committed: untouched pages
/// cost nothing.
const FUZZ_STACK: usize = 512 << 20;

/// Runs `test` on a thread with a [`FUZZ_STACK`] stack; its panic is the caller's.
fn on_a_large_stack(test: fn()) {
    let run = std::thread::Builder::new()
        .stack_size(FUZZ_STACK)
        .spawn(test)
        .expect("spawn the fuzz thread");
    if let Err(panic) = run.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Runs one target: the corpus first, then `strategy`'s inputs through the same `check`.
fn fuzz<S>(target: &'static str, stats: &Stats, strategy: S, check: impl Fn(&[u8]))
where
    S: Strategy<Value = Vec<u8>>,
{
    let started = Instant::now();
    let corpus = corpus(target);
    for (i, input) in corpus.iter().enumerate() {
        stats.time(target, || check(input));
        assert!(i < 100_000);
    }
    let seed: [u8; 32] = match std::env::var("KAIC_FUZZ_SEED") {
        Ok(hex) => {
            let bytes = hex::decode(hex.trim()).expect("KAIC_FUZZ_SEED: 64 hex digits");
            bytes
                .try_into()
                .expect("KAIC_FUZZ_SEED: 64 hex digits (32 bytes)")
        }
        Err(_) => rand::random(),
    };
    let regressions: &'static str =
        Box::leak(format!("tests/fuzz/regressions/{target}.txt").into_boxed_str());
    let config = Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let result = runner.run(&strategy.prop_map(Input), |input| {
        stats.time(target, || check(&input.0));
        Ok::<(), TestCaseError>(())
    });
    let inputs = stats.inputs.load(Ordering::Relaxed);
    println!(
        "fuzz {target}: {inputs} inputs ({} corpus, {} generated) in {:.1} s, slowest {:.1} ms, seed {}",
        corpus.len(),
        cases(),
        started.elapsed().as_secs_f64(),
        stats.slowest_us.load(Ordering::Relaxed) as f64 / 1000.0,
        hex::encode(seed),
    );
    if let Err(e) = result {
        panic!(
            "fuzz {target} (seed {}, KAIC_FUZZ_SEED replays it; the input is in {regressions}): {e}",
            hex::encode(seed)
        );
    }
}

/// One input, shown as (lossy, shortened) text when proptest reports it.
#[derive(Clone)]
struct Input(Vec<u8>);

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(&self.0);
        match text.char_indices().nth(400) {
            Some((i, _)) => write!(f, "{:?}... ({} bytes)", &text[..i], self.0.len()),
            None => write!(f, "{text:?}"),
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn bytes(text: impl Into<String>) -> Vec<u8> {
    text.into().into_bytes()
}

fn role_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[A-Za-z0-9+=,.@_-]{1,12}",
        1 => "[A-Za-z0-9+=,.@_-]{60,66}",
        1 => "\\PC{0,6}",
    ]
}

fn role_path() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(role_segment(), 1..4).prop_map(|v| v.join("/")),
        1 => prop::collection::vec("[A-Za-z0-9+=,.@_-]{60,64}", 7..10)
            .prop_map(|v| v.join("/")),
    ]
}

fn account() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just("123456789012".to_string()),
        2 => "[0-9]{12}",
        1 => "[0-9]{11,13}",
        1 => "\\PC{0,13}",
    ]
}

fn partition() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("aws".to_string()),
        1 => Just("aws-cn".to_string()),
        1 => Just("aws-us-gov".to_string()),
        1 => prop::sample::select(vec!["aws-iso", "AWS", "", "aws-cn-", "aw"])
            .prop_map(str::to_string),
    ]
}

/// Role references as tenants write them: bare names, paths, ARNs (some malformed).
fn reference() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => role_path(),
        3 => (partition(), account(), role_path())
            .prop_map(|(p, a, n)| format!("arn:{p}:iam::{a}:role/{n}")),
        1 => (
            prop::sample::select(vec!["arn", "ARN", "arn "]),
            partition(),
            prop::sample::select(vec!["iam", "sts", "s3", ""]),
            prop::sample::select(vec!["", "us-east-1"]),
            account(),
            prop::sample::select(vec!["role/", "user/", "assumed-role/", "role", "instance-profile/"]),
            role_path(),
        )
            .prop_map(|(a, p, s, r, acct, kind, n)| format!("{a}:{p}:{s}:{r}:{acct}:{kind}{n}")),
        1 => "\\PC{0,40}",
        1 => any::<String>(),
    ]
}

// ---------------------------------------------------------------------------------------------
// ARNs and role references (src/aws/arn.rs)

fn base() -> BaseRoleArn {
    "arn:aws:iam::123456789012:role/".parse().expect("base")
}

fn check_arn(input: &[u8]) {
    let s = text(input);
    if let Ok(a) = s.parse::<RoleArn>() {
        assert_eq!(a.to_string(), s, "a parsed ARN prints as it was written");
        assert!(
            s.len() <= ROLE_REFERENCE_MAX,
            "{s:?} is longer than the CRD allows"
        );
        assert!(!a.name().is_empty());
    }
    if let Ok(b) = s.parse::<BaseRoleArn>() {
        assert_eq!(b.to_string().parse::<BaseRoleArn>(), Ok(b.clone()));
        // Any bare name either resolves to an ARN that parses back, or is refused.
        for name in ["app", s.rsplit('/').next().unwrap_or_default()] {
            if let Ok(a) = arn::resolve(name, Some(&b)) {
                assert_eq!(
                    a.to_string().parse::<RoleArn>(),
                    Ok(a.clone()),
                    "{name:?} under base {b}"
                );
            }
        }
    }
    // The reference under every kind of base.
    let long_base: BaseRoleArn = format!(
        "arn:aws-us-gov:iam::123456789012:role/{}",
        vec!["p".repeat(60); 7].join("/")
    )
    .parse()
    .expect("long base");
    for b in [None, Some(base()), Some(long_base)] {
        if let Ok(a) = arn::resolve(&s, b.as_ref()) {
            assert_eq!(
                a.to_string().parse::<RoleArn>(),
                Ok(a.clone()),
                "{s:?} resolved under {b:?} to an ARN that does not parse back"
            );
            assert!(arn::PARTITIONS.contains(&a.partition.as_str()));
            assert!(a.account.len() == 12 && a.account.bytes().all(|c| c.is_ascii_digit()));
        }
    }
    if let Ok(b) = arn::base_from_identity(&s) {
        assert_eq!(b.to_string().parse::<BaseRoleArn>(), Ok(b));
    }
    let mut guard = Guard::default();
    guard.protect_identity(&s, "fuzz");
    let (ns, name) = s.split_at(
        s.char_indices()
            .nth(s.chars().count() / 2)
            .map_or(0, |(i, _)| i),
    );
    let session = arn::session_name(ns, name);
    assert!(session.len() <= arn::MAX_SESSION_NAME, "{session:?}");
    assert!(
        session
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)),
        "{session:?}"
    );
    assert_eq!(session, arn::session_name(ns, name));
}

#[test]
fn fuzz_arn_and_role_reference_parsing() {
    on_a_large_stack(fuzz_arn_and_role_reference_parsing_run);
}

fn fuzz_arn_and_role_reference_parsing_run() {
    static STATS: Stats = Stats::new();
    fuzz(
        "arn",
        &STATS,
        prop_oneof![
            4 => reference().prop_map(bytes),
            2 => mutated(corpus("arn")),
            1 => prop::collection::vec(any::<u8>(), 0..80),
        ],
        check_arn,
    );
}

// ---------------------------------------------------------------------------------------------
// The namespace policy annotations (src/policy.rs)

/// One namespace's annotations and a role, as a JSON document (the corpus format).
fn policy_input(permitted: Option<String>, allowed: Option<String>, reference: String) -> Vec<u8> {
    let mut doc = serde_json::Map::new();
    if let Some(p) = permitted {
        doc.insert("permitted".into(), Value::String(p));
    }
    if let Some(a) = allowed {
        doc.insert("allowedRoles".into(), Value::String(a));
    }
    doc.insert("reference".into(), Value::String(reference));
    serde_json::to_vec(&doc).expect("json")
}

/// kiam's regular expressions: pieces of role names, classes, groups and repetitions, and
/// the known blow-ups (nested repetitions, huge counts, huge alternations).
fn kiam_regex() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        4 => role_segment().prop_map(|s| regex::escape(&s)),
        1 => prop::sample::select(vec![
            ".", ".*", ".+", "[a-z]", "[^/]+", "\\d", "\\w+", "/", "(?i)", "arn:aws:iam::123456789012:role/",
            "\\pL", "$", "^", "[", ")", "\\", "a{1000}", "(a|aa)*", "x{2,}", "\\b", "(?s)", "[[:alpha:]]",
        ])
        .prop_map(str::to_string),
    ];
    let leaf = prop::collection::vec(atom, 1..4).prop_map(|v| v.concat());
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(|v| v.join("|")),
            inner.clone().prop_map(|r| format!("({r})")),
            (
                inner.clone(),
                prop::sample::select(vec!["*", "+", "?", "{2}", "{0,3}", "{100}{100}"])
            )
                .prop_map(|(r, q)| format!("(?:{r}){q}")),
            prop::collection::vec(inner, 1..3).prop_map(|v| v.concat()),
        ]
    })
}

/// kube2iam's JSON lists of globs, and things that are almost such lists.
fn allowed_roles() -> impl Strategy<Value = String> {
    let glob = prop_oneof![
        6 => prop::collection::vec(
            prop_oneof![3 => role_segment(), 1 => Just("*".to_string()), 1 => Just("/".to_string())],
            1..5,
        )
        .prop_map(|v| v.concat()),
        2 => (partition(), account(), role_path())
            .prop_map(|(p, a, n)| format!("arn:{p}:iam::{a}:role/{n}")),
        1 => Just("*".to_string()),
        1 => "\\PC{0,12}",
    ];
    prop_oneof![
        40 => prop::collection::vec(glob.clone(), 0..6)
            .prop_map(|v| serde_json::to_string(&v).expect("json")),
        1 => prop::collection::vec(glob, 250..262)
            .prop_map(|v| serde_json::to_string(&v).expect("json")),
        1 => "\\PC{0,30}",
    ]
}

/// kube2iam's glob, matched independently of the controller (no regular expression):
/// `*` any run of characters, everything else literal.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // m[j]: the pattern so far matches t[..j].
    let mut m = vec![false; t.len() + 1];
    m[0] = true;
    for c in &p {
        let mut next = vec![false; t.len() + 1];
        if *c == '*' {
            let mut any = false;
            for j in 0..=t.len() {
                any |= m[j];
                next[j] = any;
            }
        } else {
            for j in 1..=t.len() {
                next[j] = m[j - 1] && t[j - 1] == *c;
            }
        }
        m = next;
    }
    m[t.len()]
}

/// The longest denial message: the role's ARN and the namespace's name (both bounded by
/// their schemas) and the rule; never the annotation's whole value.
const MAX_DENIAL: usize = 1024 + ROLE_REFERENCE_MAX;

fn check_policy(input: &[u8]) {
    let Ok(doc) = serde_json::from_slice::<BTreeMap<String, String>>(input) else {
        return check_policy_raw(input);
    };
    let mut annotations = BTreeMap::new();
    if let Some(p) = doc.get("permitted") {
        annotations.insert(PERMITTED_ANNOTATION.to_string(), p.clone());
    }
    if let Some(a) = doc.get("allowedRoles") {
        annotations.insert(ALLOWED_ROLES_ANNOTATION.to_string(), a.clone());
    }
    let reference = doc.get("reference").cloned().unwrap_or_default();
    judge(&annotations, &reference);
}

/// Input that is not a corpus document: the whole text as either annotation.
fn check_policy_raw(input: &[u8]) {
    let value = text(input);
    for key in [PERMITTED_ANNOTATION, ALLOWED_ROLES_ANNOTATION] {
        judge(&[(key.to_string(), value.clone())].into(), "team/app");
    }
}

fn judge(annotations: &BTreeMap<String, String>, reference: &str) {
    let base = base();
    let Ok(arn) = arn::resolve(reference, Some(&base)) else {
        return;
    };
    let policy = NamespacePolicy::from_annotations(annotations);
    let verdict = policy.permits("team", &arn, Some(&base));
    if let Err(d) = &verdict {
        assert!(
            d.message.len() <= MAX_DENIAL,
            "denial of {} bytes: {:.300}...",
            d.message.len(),
            d.message
        );
    }
    // kube2iam's globs alone: the controller agrees with an independent glob matcher.
    if annotations.len() == 1
        && let Some(list) = annotations.get(ALLOWED_ROLES_ANNOTATION)
        && list.len() <= 16 * 1024
        && let Ok(patterns) = serde_json::from_str::<Vec<String>>(list)
        && patterns.len() <= 256
    {
        let full = arn.to_string();
        let rel = full.strip_prefix(&base.to_string());
        // An ARN pattern matches the ARN; a bare one the name and path under the base ARN.
        let expected = patterns.iter().any(|p| {
            let p = p.trim();
            if p.starts_with("arn:") {
                glob_matches(p, &full)
            } else {
                rel.is_some_and(|r| glob_matches(p, r))
            }
        });
        assert_eq!(
            verdict.is_ok(),
            expected,
            "allowed-roles {list} for {full}: {verdict:?}"
        );
    }
    // A regular expression naming exactly the role's path permits it.
    let exact: BTreeMap<String, String> = [(
        PERMITTED_ANNOTATION.to_string(),
        regex::escape(&arn.path_and_name),
    )]
    .into();
    assert!(
        NamespacePolicy::from_annotations(&exact)
            .permits("team", &arn, Some(&base))
            .is_ok()
    );
}

#[test]
fn fuzz_namespace_policy_annotations() {
    on_a_large_stack(fuzz_namespace_policy_annotations_run);
}

fn fuzz_namespace_policy_annotations_run() {
    static STATS: Stats = Stats::new();
    let structured = (
        prop::option::of(kiam_regex()),
        prop::option::of(allowed_roles()),
        reference(),
    )
        .prop_map(|(p, a, r)| policy_input(p, a, r));
    let huge = (
        prop::sample::select(vec![16 * 1024 - 8, 16 * 1024, 16 * 1024 + 1, 40_000]),
        prop::sample::select(vec!["a", "(a*)*", ".*", "*", "\"a\",", "[", "\\"]),
        any::<bool>(),
    )
        .prop_map(|(len, unit, json)| {
            let body: String = unit
                .repeat(len / unit.len() + 1)
                .chars()
                .take(len)
                .collect();
            if json {
                policy_input(None, Some(format!("[\"{body}\"]")), "app".into())
            } else {
                policy_input(Some(body), None, "app".into())
            }
        });
    fuzz(
        "policy",
        &STATS,
        prop_oneof![
            6 => structured,
            3 => mutated(corpus("policy")),
            1 => huge,
        ],
        check_policy,
    );
}

// ---------------------------------------------------------------------------------------------
// The lenient AWSIAMRole spec (src/crd.rs)

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![900i64, 3600, 43200, 0, -1, i64::MAX]).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,20}".prop_map(Value::String),
        reference().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Specs: the four fields with values of any type, and others.
fn spec_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        4 => prop::sample::select(vec!["roleReference", "roleSessionDuration", "policy", "policyARNs"])
            .prop_map(str::to_string),
        1 => "\\PC{0,12}",
    ];
    prop_oneof![
        6 => prop::collection::btree_map(key, json_value(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => json_value(),
    ]
}

fn check_crd(input: &[u8]) {
    // A spec decoded leniently from whatever JSON is stored.
    if let Ok(value) = serde_json::from_slice::<Value>(input) {
        let spec = AWSIAMRoleSpec::lenient(Some(value.clone()));
        match &spec.invalid {
            Some(why) => assert!(why.len() <= 200, "reason of {} bytes", why.len()),
            None => {
                let again =
                    AWSIAMRoleSpec::lenient(Some(serde_json::to_value(&spec).expect("json")));
                assert_eq!(again, spec, "a valid spec reads back the same");
            }
        }
        // The same value as a whole object's spec, as the watch decodes it.
        let object = json!({
            "apiVersion": "zalando.org/v1", "kind": "AWSIAMRole",
            "metadata": {"name": "r", "namespace": "ns"}, "spec": value,
        });
        let role: AWSIAMRole = serde_json::from_value(object).expect("any spec decodes");
        assert_eq!(role.spec, spec);
    }
    // The input as a whole object: fails only outside the spec (metadata, types).
    let _ = serde_json::from_slice::<AWSIAMRole>(input);
}

#[test]
fn fuzz_lenient_awsiamrole_spec_decoding() {
    on_a_large_stack(fuzz_lenient_awsiamrole_spec_decoding_run);
}

fn fuzz_lenient_awsiamrole_spec_decoding_run() {
    static STATS: Stats = Stats::new();
    fuzz(
        "crd",
        &STATS,
        prop_oneof![
            5 => spec_value().prop_map(|v| serde_json::to_vec(&v).expect("json")),
            4 => mutated(corpus("crd")),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ],
        check_crd,
    );
}

// ---------------------------------------------------------------------------------------------
// The credentials Secret (src/controller/secret/, known.rs) and the metadata cache (cache.rs)

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    // 1970 to 9999: what RFC 3339 can write.
    (0i64..253_402_300_799, 0u32..1_000_000_000)
        .prop_map(|(s, n)| Utc.timestamp_opt(s, n).single().expect("in range"))
}

fn credentials() -> impl Strategy<Value = IssuedCredentials> {
    (
        prop_oneof![3 => "ASIA[A-Z0-9]{16}", 1 => any::<String>()],
        prop_oneof![3 => "[A-Za-z0-9/+]{40}", 1 => any::<String>()],
        prop_oneof![3 => "[A-Za-z0-9/+=]{100,400}", 1 => any::<String>()],
        instant(),
    )
        .prop_map(|(a, s, t, e)| IssuedCredentials {
            access_key_id: a,
            secret_access_key: s,
            session_token: t,
            expiration: e,
        })
}

/// Times as the Go controller, other writers and careless hands write them.
fn time_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => instant().prop_map(|t| secret::go_rfc3339(&t)),
        2 => instant().prop_map(|t| secret::go_rfc3339_nano(&t)),
        1 => instant().prop_map(|t| t.to_rfc3339()),
        1 => instant().prop_map(|t| t.with_timezone(&chrono::FixedOffset::east_opt(3600).expect("tz")).to_rfc3339()),
        1 => prop::sample::select(vec![
            "2026-11-26T16:30:60Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z",
            "2026-11-26t16:30:00z", "2026-11-26 16:30:00Z", "2026-02-30T00:00:00Z", "+10000-01-01T00:00:00Z",
            "2026-11-26T16:30:00.0000000000001Z", "2026-11-26T16:30:00+24:00", "",
        ])
        .prop_map(str::to_string),
        1 => "\\PC{0,30}",
    ]
}

/// `credentials.json` as the Go controller writes it, with variations, or anything.
fn credentials_json() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (credentials(), time_text(), prop::sample::select(vec![json!(1), json!(2), json!("1"), json!(null)]))
            .prop_map(|(c, t, v)| json!({
                "Version": v, "AccessKeyId": c.access_key_id, "SecretAccessKey": c.secret_access_key,
                "SessionToken": c.session_token, "Expiration": t,
            }).to_string()),
        1 => json_value().prop_map(|v| v.to_string()),
        1 => "\\PC{0,40}",
    ]
}

fn secret_value(key: String) -> BoxedStrategy<Vec<u8>> {
    let anything = prop::collection::vec(any::<u8>(), 0..40).boxed();
    let specific = match key.as_str() {
        secret::CREDENTIALS_JSON_KEY => credentials_json().prop_map(bytes).boxed(),
        secret::EXPIRE_KEY => time_text().prop_map(bytes).boxed(),
        secret::GENERATION_KEY => prop_oneof![
            any::<i64>().prop_map(|g| g.to_string()),
            Just(" 3\n".to_string()),
            Just("99999999999999999999".to_string()),
        ]
        .prop_map(bytes)
        .boxed(),
        secret::ROLE_ARN_KEY => reference().prop_map(bytes).boxed(),
        secret::CREDENTIALS_KEY => (credentials(), time_text())
            .prop_map(|(c, t)| {
                format!(
                    "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token={}\naws_expiration = {t}\n",
                    c.access_key_id, c.secret_access_key, c.session_token
                )
            })
            .prop_map(bytes)
            .boxed(),
        _ => anything.clone(),
    };
    prop_oneof![4 => specific, 1 => anything].boxed()
}

fn secret_json() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        6 => prop::sample::select(vec![
            secret::CREDENTIALS_KEY, secret::CREDENTIALS_PROCESS_KEY, secret::CREDENTIALS_JSON_KEY,
            secret::ROLE_ARN_KEY, secret::EXPIRE_KEY, secret::GENERATION_KEY,
        ])
        .prop_map(str::to_string),
        1 => "[a-z.]{1,10}",
    ];
    let data = prop::collection::vec(
        key.prop_flat_map(|k| (Just(k.clone()), secret_value(k))),
        0..8,
    );
    let annotation = prop_oneof![
        prop::sample::select(vec![
            secret::OWNER_UID_ANNOTATION,
            secret::REQUEST_HASH_ANNOTATION,
            secret::ISSUED_AT_ANNOTATION,
            secret::WITHDRAWN_ANNOTATION,
            secret::COPIED_LABELS_ANNOTATION,
        ])
        .prop_map(str::to_string),
        "[a-z./]{1,12}",
    ];
    let annotations =
        prop::collection::btree_map(annotation, prop_oneof![time_text(), "\\PC{0,20}"], 0..6);
    let owners = prop::collection::vec(
        (
            prop::sample::select(vec!["zalando.org/v1", "zalando.org/v2", "apps/v1"]),
            prop::sample::select(vec!["AWSIAMRole", "Deployment"]),
            prop::sample::select(vec!["app", "other"]),
            prop::sample::select(vec!["uid-1", "uid-0"]),
            prop::option::of(any::<bool>()),
        ),
        0..3,
    );
    let labels = prop::collection::btree_map(
        prop::sample::select(vec!["heritage", "type", "application", "x"]),
        prop::sample::select(vec!["kube-aws-iam-controller", "awsiamrole", "x"]),
        0..4,
    );
    (data, annotations, owners, labels).prop_map(|(data, annotations, owners, labels)| {
        use base64::Engine;
        let data: serde_json::Map<String, Value> = data
            .into_iter()
            .map(|(k, v)| (k, Value::String(base64::engine::general_purpose::STANDARD.encode(v))))
            .collect();
        let owners: Vec<Value> = owners
            .into_iter()
            .map(|(api, kind, name, uid, controller)| {
                json!({"apiVersion": api, "kind": kind, "name": name, "uid": uid, "controller": controller})
            })
            .collect();
        serde_json::to_vec(&json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": "app", "namespace": "team", "resourceVersion": "7",
                "annotations": annotations, "labels": labels, "ownerReferences": owners,
            },
            "data": data,
        }))
        .expect("json")
    })
}

fn role() -> AWSIAMRole {
    let mut r = AWSIAMRole::new(
        "app",
        AWSIAMRoleSpec {
            role_reference: "app".into(),
            role_session_duration: 3600,
            policy: None,
            policy_arns: Vec::new(),
            service_account_names: None,
            invalid: None,
        },
    );
    r.metadata.namespace = Some("team".into());
    r.metadata.uid = Some("uid-1".into());
    r.metadata.generation = Some(3);
    r.metadata.labels = Some([("application".to_string(), "x".to_string())].into());
    r
}

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/app";

fn check_secret(input: &[u8]) {
    let Ok(existing) = serde_json::from_slice::<Secret>(input) else {
        return;
    };
    let role = role();
    // Reading whatever is there.
    if let Some(stored) = secret::read(&existing) {
        let creds = stored
            .credentials
            .as_ref()
            .expect("read returns the credentials");
        assert_eq!(creds.expiration, stored.expiration);
        assert!(!creds.access_key_id.is_empty() && !creds.secret_access_key.is_empty());
    }
    let _ = secret::issuance(&existing);
    let _ = secret::withdrawn(&existing);
    let _ = secret::ownership(&existing, &role);
    let _ = secret::Known::of(&existing).map(|k| k.stored(&existing));
    // Writing over it: our keys hold exactly the new credentials, and once written nothing
    // more is to be written.
    let creds = IssuedCredentials {
        access_key_id: "ASIAEXAMPLEKEY000001".into(),
        secret_access_key: "secret".into(),
        session_token: "token".into(),
        expiration: Utc
            .timestamp_opt(1_795_000_000, 120_000_000)
            .single()
            .expect("t"),
    };
    let content = Content::Credentials {
        creds: &creds,
        issuance: None,
    };
    let want = secret::desired(Some(&existing), &role, ROLE_ARN, content);
    let _ = secret::needs_repair(&existing, &want);
    let _ = secret::merge_patch(&existing, &want);
    let stored = secret::read(&want).expect("what the controller writes reads back");
    assert_eq!(stored.credentials.as_ref(), Some(&creds));
    assert_eq!(stored.role_arn, ROLE_ARN);
    let again = secret::desired(Some(&want), &role, ROLE_ARN, content);
    assert!(
        !secret::needs_repair(&want, &again),
        "a Secret just written needs no repair"
    );
    let withdrawn = secret::desired(
        Some(&existing),
        &role,
        ROLE_ARN,
        Content::Withdrawn { issuance: None },
    );
    assert!(secret::is_withdrawal(&withdrawn) && !secret::holds_credentials(&withdrawn));
    assert!(secret::read(&withdrawn).is_none());
}

#[test]
fn fuzz_secret_parsers() {
    on_a_large_stack(fuzz_secret_parsers_run);
}

fn fuzz_secret_parsers_run() {
    static STATS: Stats = Stats::new();
    fuzz(
        "secret",
        &STATS,
        prop_oneof![
            5 => secret_json(),
            4 => mutated(corpus("secret")),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ],
        check_secret,
    );
}

#[test]
fn rendered_credentials_read_back_the_same() {
    on_a_large_stack(rendered_credentials_read_back_the_same_run);
}

fn rendered_credentials_read_back_the_same_run() {
    static STATS: Stats = Stats::new();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("credentials.json");
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/fuzz/regressions/roundtrip.txt",
        ))),
        ..Config::default()
    });
    let started = Instant::now();
    let result = runner.run(&credentials(), |creds| {
        STATS.time("roundtrip", || {
            let sec = secret::render(&role(), &creds, ROLE_ARN);
            let stored = secret::read(&sec);
            let readable = !creds.access_key_id.is_empty() && !creds.secret_access_key.is_empty();
            prop_assert_eq!(
                stored.as_ref().and_then(|s| s.credentials.as_ref()),
                readable.then_some(&creds)
            );
            let content = Content::Credentials {
                creds: &creds,
                issuance: None,
            };
            let again = secret::desired(Some(&sec), &role(), ROLE_ARN, content);
            prop_assert!(!secret::needs_repair(&sec, &again));
            // The same credentials.json through the `--credentials-file` reader.
            let data = sec.data.as_ref().expect("data");
            std::fs::write(&file, &data[secret::CREDENTIALS_JSON_KEY].0).expect("write");
            let read = FileCredentials::new(&file).read();
            if readable && creds.expiration > Utc::now() {
                let c = read.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                prop_assert_eq!(c.access_key_id(), creds.access_key_id.as_str());
                prop_assert_eq!(c.secret_access_key(), creds.secret_access_key.as_str());
                prop_assert_eq!(c.session_token(), Some(creds.session_token.as_str()));
                let expiry: DateTime<Utc> = c.expiry().expect("expiry").into();
                prop_assert_eq!(expiry, creds.expiration);
            } else {
                prop_assert!(read.is_err());
            }
            Ok(())
        })
    });
    println!(
        "fuzz roundtrip: {} inputs in {:.1} s, slowest {:.1} ms",
        STATS.inputs.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        STATS.slowest_us.load(Ordering::Relaxed) as f64 / 1000.0
    );
    if let Err(e) = result {
        panic!("render -> read round trip: {e}");
    }
}

fn metadata_json() -> impl Strategy<Value = Vec<u8>> {
    // Strings that collide with the cache's dictionary, quotes and escapes.
    let tricky = prop_oneof![
        3 => "\\PC{0,12}",
        1 => prop::sample::select(vec![
            "\"name\":\"", "\"uid\":\"", "heritage", "kube-aws-iam-controller", "awsiamrole.zalando.org/",
            "\"labels\":{", "\\\"", "\u{1}", "\u{1f}", "\"ownerReferences\":[{", "zalando.org/v1",
        ])
        .prop_map(str::to_string),
    ];
    let map = prop::collection::btree_map(tricky.clone(), tricky.clone(), 0..5);
    (map.clone(), map, prop::collection::vec((tricky.clone(), tricky), 0..3), any::<bool>())
        .prop_map(|(labels, annotations, owners, deleting)| {
            let owners: Vec<Value> = owners
                .into_iter()
                .map(|(name, uid)| json!({"apiVersion": "zalando.org/v1", "kind": "AWSIAMRole", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}))
                .collect();
            let mut meta = json!({
                "name": "app", "namespace": "team", "resourceVersion": "12", "uid": "u-1",
                "creationTimestamp": "2026-11-26T16:30:00Z",
                "labels": labels, "annotations": annotations, "ownerReferences": owners,
            });
            if deleting {
                meta["deletionTimestamp"] = json!("2026-11-27T00:00:00Z");
            }
            serde_json::to_vec(&json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": meta,
            }))
            .expect("json")
        })
}

fn check_cache(input: &[u8]) {
    let Ok(mut meta) = serde_json::from_slice::<PartialObjectMeta<Secret>>(input) else {
        return;
    };
    kube_aws_iam_controller::controller::cache::trim(&mut meta);
    let packed = CachedSecret::of(&meta);
    let mut want = meta.metadata.clone();
    // The cache keeps the creation time in whole seconds (the API server writes no more).
    want.creation_timestamp = want.creation_timestamp.map(|t| {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(t.0.as_second()).expect("t"),
        )
    });
    let fill = |v: Option<String>| Some(v.unwrap_or_default());
    want.name = fill(want.name);
    want.namespace = fill(want.namespace);
    want.resource_version = fill(want.resource_version);
    assert_eq!(
        packed.metadata(),
        Some(want),
        "the packed metadata unpacks as it was"
    );
}

#[test]
fn fuzz_secret_metadata_cache_packing() {
    on_a_large_stack(fuzz_secret_metadata_cache_packing_run);
}

fn fuzz_secret_metadata_cache_packing_run() {
    static STATS: Stats = Stats::new();
    fuzz(
        "cache",
        &STATS,
        prop_oneof![
            5 => metadata_json(),
            4 => mutated(corpus("cache")),
        ],
        check_cache,
    );
}

// ---------------------------------------------------------------------------------------------
// The webhook (src/webhook/review.rs, mutate.rs)

fn container() -> impl Strategy<Value = Value> {
    let env_name = prop_oneof![
        prop::sample::select(vec![
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_REGION",
            "AWS_PROFILE",
            "AWS_ACCESS_KEY_ID",
            "AWS_SDK_LOAD_CONFIG",
            "AWS_EC2_METADATA_DISABLED",
            "OTHER",
        ])
        .prop_map(str::to_string),
        "[A-Z_]{1,8}",
    ];
    let env = prop::collection::vec(
        (
            env_name,
            prop_oneof![
                Just(json!({"value": "/meta/aws-iam/credentials.process"})),
                Just(json!({"value": "1"})),
                Just(json!({"value": "true"})),
                Just(json!({"valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})),
                Just(json!({})),
                "\\PC{0,8}".prop_map(|v| json!({"value": v})),
            ],
        )
            .prop_map(|(n, mut v)| {
                v["name"] = json!(n);
                v
            }),
        0..6,
    );
    let mount = (
        prop::sample::select(vec!["aws-iam-credentials", "data", "app"]),
        prop::sample::select(vec![
            "/meta/aws-iam",
            "/meta/aws-iam/",
            "/meta/aws-iam//",
            "/data",
            "/meta",
        ]),
        prop::option::of(prop::sample::select(vec!["", "credentials.json"])),
    )
        .prop_map(|(n, p, s)| {
            let mut m = json!({"name": n, "mountPath": p});
            if let Some(s) = s {
                m["subPath"] = json!(s);
            }
            m
        });
    (
        "[a-z0-9-]{1,10}",
        prop_oneof![2 => prop::option::of(env), 1 => Just(Some(Vec::new()))],
        prop::option::of(prop::collection::vec(mount, 0..3)),
        any::<bool>(),
    )
        .prop_map(|(name, env, mounts, unknown)| {
            let mut c = json!({"name": name, "image": "busybox"});
            if let Some(env) = env {
                c["env"] = json!(env);
            }
            if let Some(m) = mounts {
                c["volumeMounts"] = json!(m);
            }
            if unknown {
                c["futureField"] = json!({"x": 1});
            }
            c
        })
}

fn pod_json() -> impl Strategy<Value = Value> {
    let volume = (
        prop::sample::select(vec!["aws-iam-credentials", "data", "x"]),
        prop::sample::select(vec!["app", "other", ""]),
        any::<bool>(),
    )
        .prop_map(|(n, s, secret)| {
            if secret {
                json!({"name": n, "secret": {"secretName": s}})
            } else {
                json!({"name": n, "emptyDir": {}})
            }
        });
    (
        prop::option::of(prop_oneof![
            3 => Just("app".to_string()),
            1 => Just(String::new()),
            1 => "\\PC{0,10}",
        ]),
        prop::collection::vec(container(), 0..6),
        prop::option::of(prop::collection::vec(container(), 0..3)),
        prop::option::of(prop::collection::vec(volume, 0..3)),
        any::<bool>(),
    )
        .prop_map(|(label, containers, inits, volumes, nulls)| {
            let mut spec = json!({"containers": containers});
            if let Some(i) = inits {
                spec["initContainers"] = json!(i);
            }
            if let Some(v) = volumes {
                spec["volumes"] = json!(v);
            } else if nulls {
                spec["volumes"] = Value::Null;
            }
            let mut pod =
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec});
            if let Some(l) = label {
                pod["metadata"]["labels"] = json!({mutate::ROLE_LABEL: l});
            }
            pod
        })
}

fn review_json() -> impl Strategy<Value = Vec<u8>> {
    (
        pod_json(),
        prop::sample::select(vec!["CREATE", "UPDATE", "DELETE", "CONNECT"]),
        prop::option::of(prop::sample::select(vec!["team", ""])),
    )
        .prop_map(|(pod, op, ns)| {
            let mut req = json!({
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "p", "operation": op,
                "userInfo": {"username": "admin"},
                "object": pod, "oldObject": null, "dryRun": false, "options": null,
            });
            if let Some(ns) = ns {
                req["namespace"] = json!(ns);
            }
            serde_json::to_vec(&json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req,
            }))
            .expect("json")
        })
}

fn check_webhook(input: &[u8]) {
    let req = match review::decode(input) {
        Ok(req) => req,
        Err(res) => {
            assert!(!res.allowed, "an undecodable review is not allowed");
            return;
        }
    };
    let pod_choice = req.object.as_ref().and_then(mutate::pod_role);
    for (choice, region) in [
        (
            mutate::choose(pod_choice, Some("app")),
            Some("eu-central-1"),
        ),
        (mutate::choose(pod_choice, None), None),
    ] {
        let facts = Facts {
            choice: choice.clone(),
            role: RoleState::Missing,
            not_permitted: Some("not permitted".into()),
            bindings: Default::default(),
        };
        let (res, label): (AdmissionResponse, &str) =
            review::respond(&req, &facts, region, &Default::default());
        assert!(
            res.warnings
                .as_ref()
                .is_none_or(|w| w.len() <= MAX_WARNINGS + 2)
        );
        let (Some(pod), Operation::Create, Some(role)) =
            (req.object.as_ref(), &req.operation, choice.role())
        else {
            assert_eq!(label, review::result::SKIPPED);
            continue;
        };
        if mutate::invalid_role_name(role).is_some() {
            assert!(!res.allowed);
            continue;
        }
        let injection = Injection {
            role: role.to_string(),
            region: region.map(str::to_string),
        };
        let m = mutate::mutate(pod, &injection);
        // The patch applies to the pod exactly as the API server sent it (unknown fields,
        // nulls and all), and a second admission of the result changes nothing.
        // The pod as sent. serde skips unknown fields without checking their bytes, so the
        // typed decoding accepts bodies that are not UTF-8 (found at 20,000 cases: a byte 0xff
        // in an unknown field's key); the API server sends none: patch the decoded pod then.
        let mut doc = serde_json::from_slice::<Value>(input)
            .map(|raw| raw["request"]["object"].clone())
            .unwrap_or_else(|_| serde_json::to_value(pod).expect("pod json"));
        json_patch::patch(&mut doc, &m.patch).unwrap_or_else(|e| {
            panic!(
                "the patch does not apply to the pod as sent: {e}: {:?}",
                m.patch
            )
        });
        let once: Pod = serde_json::from_value(doc).expect("the patched pod decodes");
        let twice = mutate::mutate(&once, &injection);
        assert!(twice.is_empty(), "not idempotent: {:?}", twice.patch);
        assert!(m.warnings.len() <= MAX_WARNINGS);
    }
}

#[test]
fn fuzz_webhook_admission_review_and_mutate() {
    on_a_large_stack(fuzz_webhook_admission_review_and_mutate_run);
}

fn fuzz_webhook_admission_review_and_mutate_run() {
    static STATS: Stats = Stats::new();
    fuzz(
        "webhook",
        &STATS,
        prop_oneof![
            5 => review_json(),
            4 => mutated(corpus("webhook")),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ],
        check_webhook,
    );
}

// ---------------------------------------------------------------------------------------------
// The `--credentials-file` reader (src/aws/file_credentials.rs)

/// A value no error may quote.
const SECRET: &str = "wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKEY";

fn file_json() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![
            json!(1),
            json!(2),
            json!("1"),
            json!(1.0),
            json!(-1),
            json!(4294967296u64),
        ]),
        prop::sample::select(vec![
            json!("AKID"),
            json!(""),
            json!(SECRET),
            json!(5),
            json!(null),
        ]),
        prop::sample::select(vec![
            json!(SECRET),
            json!(""),
            json!([SECRET]),
            json!({"v": SECRET}),
            json!(7),
        ]),
        prop::option::of(prop::sample::select(vec![
            json!(SECRET),
            json!("tok"),
            json!(null),
            json!(1),
        ])),
        prop::option::of(prop_oneof![
            time_text().prop_map(Value::String),
            Just(json!(SECRET)),
            Just(json!(0))
        ]),
    )
        .prop_map(|(v, a, s, t, e)| {
            let mut doc = json!({"Version": v, "AccessKeyId": a, "SecretAccessKey": s});
            if let Some(t) = t {
                doc["SessionToken"] = t;
            }
            if let Some(e) = e {
                doc["Expiration"] = e;
            }
            serde_json::to_vec(&doc).expect("json")
        })
}

#[test]
fn fuzz_credentials_file_reader() {
    on_a_large_stack(fuzz_credentials_file_reader_run);
}

fn fuzz_credentials_file_reader_run() {
    static STATS: Stats = Stats::new();
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("credentials.json");
    let reader = FileCredentials::new(&path);
    fuzz(
        "credentials-file",
        &STATS,
        prop_oneof![
            5 => file_json(),
            4 => mutated(corpus("credentials-file")),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ],
        |input| {
            std::fs::write(&path, input).expect("write");
            if let Err(e) = reader.read() {
                let shown = format!("{e} {e:?}");
                assert!(
                    !shown.contains(SECRET),
                    "an error quotes the secret: {shown}"
                );
                assert!(
                    !shown.contains("EXAMPLEKEY"),
                    "an error quotes part of the secret: {shown}"
                );
            }
        },
    );
}

// serve-credentials: the sidecar's request handling

/// The pod's token in the serve-credentials target.
const POD_TOKEN: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// One request to the sidecar: the Authorization header (first line; none when the line is
/// `-`) and the mounted `credentials.json` (the rest).
fn serve_input() -> impl Strategy<Value = Vec<u8>> {
    let header = prop_oneof![
        3 => Just(POD_TOKEN.to_string()),
        1 => Just("-".to_string()),
        1 => Just(String::new()),
        1 => Just(format!("Bearer {POD_TOKEN}")),
        1 => Just(POD_TOKEN[..POD_TOKEN.len() - 1].to_string()),
        2 => "[ -~]{0,80}",
    ];
    let file = prop_oneof![
        5 => file_json(),
        4 => mutated(corpus("credentials-file")),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];
    (header, file).prop_map(|(h, f)| {
        let mut input = bytes(h);
        input.push(b'\n');
        input.extend(f);
        input
    })
}

#[test]
fn fuzz_serve_credentials_requests() {
    on_a_large_stack(fuzz_serve_credentials_requests_run);
}

/// Whatever the header and the mounted file, the sidecar answers: 401 without a header, 403
/// with anything but the pod's token, else 200 with credentials valid beyond the margin or
/// 503; no answer and no error quotes the secret or the token.
fn fuzz_serve_credentials_requests_run() {
    use std::sync::Arc;
    use tower::ServiceExt;
    static STATS: Stats = Stats::new();
    let dir = tempfile::tempdir().expect("tmp");
    let margin = Duration::from_secs(5);
    let endpoint = Arc::new(kube_aws_iam_controller::serve::Endpoint::new(
        dir.path().to_path_buf(),
        POD_TOKEN.to_string(),
        margin,
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    fuzz("serve-credentials", &STATS, serve_input(), |input| {
        let (header, file) = match input.iter().position(|b| *b == b'\n') {
            Some(i) => (&input[..i], &input[i + 1..]),
            None => (input, &[][..]),
        };
        std::fs::write(dir.path().join("credentials.json"), file).expect("write");
        let mut request = http::Request::get(kube_aws_iam_controller::serve::CREDENTIALS_PATH);
        if header != b"-" {
            match http::HeaderValue::from_bytes(header) {
                Ok(v) => request = request.header(http::header::AUTHORIZATION, v),
                // Not a header value: no client can send it.
                Err(_) => return,
            }
        }
        let router = kube_aws_iam_controller::serve::router(Arc::clone(&endpoint));
        let request = request.body(axum::body::Body::empty()).expect("request");
        let (status, body) = runtime.block_on(async {
            let response = router.oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            (status, String::from_utf8_lossy(&body).into_owned())
        });
        match status.as_u16() {
            401 => assert_eq!(header, b"-", "401 only without a header"),
            403 => assert_ne!(header, POD_TOKEN.as_bytes(), "the pod's token refused"),
            200 => {
                assert_eq!(
                    header,
                    POD_TOKEN.as_bytes(),
                    "served without the pod's token"
                );
                let served: Value = serde_json::from_str(&body).expect("served JSON");
                let expiration = served["Expiration"].as_str().expect("Expiration");
                let expiration: DateTime<Utc> = expiration.parse().expect("RFC 3339");
                assert!(
                    expiration > Utc::now() + chrono::Duration::from_std(margin).expect("margin"),
                    "served credentials that expire at {expiration}"
                );
            }
            503 => {
                assert_eq!(header, POD_TOKEN.as_bytes(), "503 only after the token");
                assert!(!body.contains(SECRET), "an error quotes the secret: {body}");
                assert!(
                    !body.contains("EXAMPLEKEY"),
                    "an error quotes part of the secret: {body}"
                );
            }
            other => panic!("status {other}: {body}"),
        }
        assert!(
            !body.contains(POD_TOKEN),
            "an answer quotes the token: {body}"
        );
    });
}
