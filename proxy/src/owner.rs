//! Which backends to try, in which order.

/// Order in which to try `n` backends: the remembered owner first (when it
/// is up), then the others in configured order. Backends marked down are
/// skipped, unless every backend is down, in which case all are tried.
pub fn backend_order(
    n: usize,
    owner: Option<usize>,
    is_down: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let owner = owner.filter(|&o| o < n);
    let mut order = Vec::with_capacity(n);
    if let Some(o) = owner
        && !is_down(o)
    {
        order.push(o);
    }
    for i in 0..n {
        if Some(i) != owner && !is_down(i) {
            order.push(i);
        }
    }
    if order.is_empty() {
        if let Some(o) = owner {
            order.push(o);
        }
        order.extend((0..n).filter(|&i| Some(i) != owner));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn owner_first_then_config_order() {
        assert_eq!(backend_order(4, None, |_| false), vec![0, 1, 2, 3]);
        assert_eq!(backend_order(4, Some(2), |_| false), vec![2, 0, 1, 3]);
        assert_eq!(backend_order(4, Some(9), |_| false), vec![0, 1, 2, 3]);
    }

    #[test]
    fn down_backends_skipped_unless_all_down() {
        assert_eq!(backend_order(3, Some(1), |i| i == 1), vec![0, 2]);
        assert_eq!(backend_order(3, None, |i| i == 0), vec![1, 2]);
        assert_eq!(backend_order(3, Some(2), |_| true), vec![2, 0, 1]);
    }

    proptest! {
        #[test]
        fn order_is_a_permutation_of_live_backends(n in 1usize..16, owner in proptest::option::of(0usize..20), down in proptest::collection::vec(any::<bool>(), 16)) {
            let order = backend_order(n, owner, |i| down[i]);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), order.len());
            let live = (0..n).filter(|&i| !down[i]).count();
            prop_assert_eq!(order.len(), if live == 0 { n } else { live });
            if let Some(o) = owner.filter(|&o| o < n && !down[o]) {
                prop_assert_eq!(order[0], o);
            }
        }
    }
}
