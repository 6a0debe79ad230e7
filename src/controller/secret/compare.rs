//! Comparing a Secret with the one desired: the merge patch that turns one into the other,
//! and whether the stored one needs a repair (values equal in meaning count as equal). Pure.

use super::*;

/// The JSON merge patch that turns `existing` into `desired` (both whole Secrets): our data
/// keys, labels and annotations set, the ones to drop `null`, the owner references replaced,
/// and `existing`'s resourceVersion as the precondition. When `desired` withdraws the
/// credentials ([`is_withdrawal`]) every one of [`WITHDRAWN_KEYS`] is `null`ed, so a patch
/// computed from a Secret observed without its data (metadata from the watch cache) still
/// removes them; a `desired` that leaves the data as it is ([`Content::Unchanged`]) patches no
/// data at all. Pure.
pub fn merge_patch(existing: &Secret, desired: &Secret) -> serde_json::Value {
    use serde_json::{Map, Value};
    fn diff<V: Serialize>(
        have: Option<&BTreeMap<String, V>>,
        want: Option<&BTreeMap<String, V>>,
    ) -> Value {
        let mut out = Map::new();
        for k in have.into_iter().flat_map(|m| m.keys()) {
            if !want.is_some_and(|w| w.contains_key(k)) {
                out.insert(k.clone(), Value::Null);
            }
        }
        for (k, v) in want.into_iter().flatten() {
            out.insert(k.clone(), serde_json::to_value(v).unwrap_or(Value::Null));
        }
        Value::Object(out)
    }
    let mut data = diff(existing.data.as_ref(), desired.data.as_ref());
    if is_withdrawal(desired)
        && let Value::Object(map) = &mut data
    {
        for key in WITHDRAWN_KEYS {
            map.insert(key.to_string(), Value::Null);
        }
    }
    serde_json::json!({
        "metadata": {
            "resourceVersion": existing.metadata.resource_version,
            "labels": diff(existing.metadata.labels.as_ref(), desired.metadata.labels.as_ref()),
            "annotations": diff(
                existing.metadata.annotations.as_ref(),
                desired.metadata.annotations.as_ref(),
            ),
            "ownerReferences": desired.metadata.owner_references,
        },
        "data": data,
    })
}

pub(super) fn is_role_reference(r: &OwnerReference) -> bool {
    r.kind == "AWSIAMRole" && r.api_version.starts_with("zalando.org/")
}

/// True when writing `desired` would change what `existing` means: a data key we write holds
/// different credentials, times, ARN or content; a label, annotation or owner we set differs.
/// Byte differences that mean the same (a fraction of a second the Go controller keeps,
/// spacing) are not a reason to write.
pub fn needs_repair(existing: &Secret, desired: &Secret) -> bool {
    // `desired` is built on `existing`: any difference is one we make. The list of copied
    // label keys is bookkeeping, written along with the next write, never a reason for one.
    let bookkeeping = |s: &Secret| {
        let mut a = s.annotations().clone();
        a.remove(COPIED_LABELS_ANNOTATION);
        a
    };
    let uids = |s: &Secret| -> Vec<String> {
        let mut v: Vec<String> = s.owner_references().iter().map(|o| o.uid.clone()).collect();
        v.sort();
        v
    };
    let empty = BTreeMap::new();
    let have = existing.data.as_ref().unwrap_or(&empty);
    let want = desired.data.as_ref().unwrap_or(&empty);
    let data_same = have.len() == want.len()
        && want
            .iter()
            .all(|(k, v)| have.get(k).is_some_and(|h| same_meaning(k, h, v)));
    existing.labels() != desired.labels()
        || bookkeeping(existing) != bookkeeping(desired)
        || uids(existing) != uids(desired)
        || !data_same
}

fn same_meaning(key: &str, have: &ByteString, want: &ByteString) -> bool {
    let (Ok(h), Ok(w)) = (std::str::from_utf8(&have.0), std::str::from_utf8(&want.0)) else {
        return have == want;
    };
    match key {
        EXPIRE_KEY => same_instant(h.trim(), w.trim(), Precision::Seconds),
        CREDENTIALS_JSON_KEY => {
            match (
                serde_json::from_str::<ProcessCredentials>(h),
                serde_json::from_str::<ProcessCredentials>(w),
            ) {
                (Ok(h), Ok(w)) => {
                    h.version == w.version
                        && h.access_key_id == w.access_key_id
                        && h.secret_access_key == w.secret_access_key
                        && h.session_token == w.session_token
                        && same_instant(&h.expiration, &w.expiration, Precision::Exact)
                }
                _ => false,
            }
        }
        CREDENTIALS_KEY => {
            let (h, w) = (ini(h), ini(w));
            h.len() == w.len()
                && w.iter().all(|(k, v)| match h.get(k) {
                    Some(hv) if *k == "aws_expiration" => same_instant(hv, v, Precision::Seconds),
                    Some(hv) => hv == v,
                    None => false,
                })
        }
        _ => h.trim() == w.trim(),
    }
}

#[derive(Clone, Copy)]
enum Precision {
    Seconds,
    Exact,
}

fn same_instant(a: &str, b: &str, precision: Precision) -> bool {
    match (
        DateTime::parse_from_rfc3339(a),
        DateTime::parse_from_rfc3339(b),
    ) {
        (Ok(a), Ok(b)) => match precision {
            Precision::Seconds => a.timestamp() == b.timestamp(),
            Precision::Exact => a == b,
        },
        _ => false,
    }
}

/// `key = value` lines of an INI file (sections ignored: the file has one).
fn ini(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}
