//! Sorted sets of workload indexes, merged in linear time. A rule's sides are
//! held as these (not hash sets) because resolving a rule is mostly unions and
//! intersections of label member lists.

/// Sorted, deduplicated workload indexes.
pub(super) type Members = Vec<u32>;

/// `a ∪ b`.
pub(super) fn union(a: &[u32], b: &[u32]) -> Members {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// `a ∩ b`.
pub(super) fn intersect(a: &[u32], b: &[u32]) -> Members {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Adds `x`, keeping `v` sorted and deduplicated.
pub(super) fn insert_sorted(v: &mut Members, x: u32) {
    if let Err(pos) = v.binary_search(&x) {
        v.insert(pos, x);
    }
}

/// Removes `x` if present.
pub(super) fn remove_sorted(v: &mut Members, x: u32) {
    if let Ok(pos) = v.binary_search(&x) {
        v.remove(pos);
    }
}

/// The indexes in exactly one of `a` and `b`.
pub(super) fn symmetric_difference(a: &[u32], b: &[u32]) -> Vec<u32> {
    let both = intersect(a, b);
    union(a, b)
        .into_iter()
        .filter(|x| both.binary_search(x).is_err())
        .collect()
}
