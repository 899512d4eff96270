//! Conversions: whether an order is attributed to the click that led to it, and the commission of
//! each level of the owner's referral chain.

use std::future::Future;

use super::model::{ChainLevel, Partner, commission};

/// Levels paid on a conversion: the owner and up to two ancestors.
pub(crate) const MAX_LEVELS: usize = 3;
/// How far up a partner tree the cycle check walks before giving up (a tree deeper than this is
/// refused, which also bounds the work of one `POST /v1/partners`).
pub(crate) const MAX_TREE_DEPTH: usize = 1000;
/// Clicks stamped this far in the future (clock skew between replicas) still count.
pub(crate) const CLOCK_SKEW_SECS: i64 = 300;

/// Whether a conversion at `now` is attributed to a click at `clicked_at` on a link that exists
/// (`link_known`), under an attribution window of `window_secs`.
pub(crate) fn is_attributed(link_known: bool, clicked_at: Option<i64>, now: i64, window_secs: u64) -> bool {
    let window = i64::try_from(window_secs).unwrap_or(i64::MAX);
    link_known
        && clicked_at.is_some_and(|t| now.saturating_sub(t) <= window && t.saturating_sub(now) <= CLOCK_SKEW_SECS)
}

/// `id` and up to two ancestors, itself first. An id that is not a registered partner is a chain
/// of one: a salesperson who owns codes is paid at level 1 without being in the partner tree.
/// `partner` looks a partner up by id.
pub(crate) async fn chain<F, Fut, E>(id: &str, mut partner: F) -> Result<Vec<String>, E>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Option<Partner>, E>>,
{
    let mut out = vec![id.to_string()];
    let mut next = partner(id.to_string()).await?.and_then(|p| p.parent_id);
    while let Some(parent) = next.filter(|_| out.len() < MAX_LEVELS) {
        next = partner(parent.clone()).await?.and_then(|p| p.parent_id);
        out.push(parent);
    }
    Ok(out)
}

/// Why a partner cannot be saved.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TreeError {
    ParentMissing,
    Cycle,
    TooDeep,
}

/// Checks that `new.parent_id` exists and that saving `new` keeps the tree a tree.
pub(crate) async fn check_parent<F, Fut, E>(new: &Partner, mut partner: F) -> Result<Result<(), TreeError>, E>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Option<Partner>, E>>,
{
    let Some(parent) = new.parent_id.as_deref() else {
        return Ok(Ok(()));
    };
    if parent == new.id {
        return Ok(Err(TreeError::Cycle));
    }
    let Some(mut at) = partner(parent.to_string()).await? else {
        return Ok(Err(TreeError::ParentMissing));
    };
    for _ in 0..MAX_TREE_DEPTH {
        match at.parent_id {
            None => return Ok(Ok(())),
            Some(p) if p == new.id => return Ok(Err(TreeError::Cycle)),
            Some(p) => match partner(p).await? {
                Some(next) => at = next,
                None => return Ok(Ok(())),
            },
        }
    }
    Ok(Err(TreeError::TooDeep))
}

/// The commission of each level of `chain` for `amount` at the campaign's rates.
pub(crate) fn commissions(chain: &[String], amount: i64, bps: &[u32]) -> Vec<ChainLevel> {
    chain
        .iter()
        .enumerate()
        .map(|(i, id)| ChainLevel {
            partner_id: id.clone(),
            level: i as u8 + 1,
            commission: commission(amount, bps.get(i).copied().unwrap_or(0)),
            commission_id: None,
            held: None,
            payable_at: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use super::*;

    fn tree(edges: &[(&str, Option<&str>)]) -> HashMap<String, Partner> {
        edges
            .iter()
            .map(|(id, parent)| {
                let p = Partner {
                    id: id.to_string(),
                    parent_id: parent.map(String::from),
                    name: None,
                };
                (id.to_string(), p)
            })
            .collect()
    }

    fn lookup(
        t: &HashMap<String, Partner>,
    ) -> impl FnMut(String) -> std::future::Ready<Result<Option<Partner>, Infallible>> + '_ {
        move |id| std::future::ready(Ok(t.get(&id).cloned()))
    }

    fn run<T>(f: impl Future<Output = Result<T, Infallible>>) -> T {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        match rt.block_on(f) {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    #[test]
    fn chains_stop_at_three_levels_and_unknown_owners_are_a_chain_of_one() {
        let t = tree(&[
            ("kid", Some("agent")),
            ("agent", Some("mgr")),
            ("mgr", Some("boss")),
            ("boss", None),
        ]);
        assert_eq!(run(chain("kid", lookup(&t))), ["kid", "agent", "mgr"]);
        assert_eq!(run(chain("mgr", lookup(&t))), ["mgr", "boss"]);
        assert_eq!(run(chain("salesperson", lookup(&t))), ["salesperson"]);
    }

    #[test]
    fn a_parent_must_exist_and_no_cycle_may_form() {
        let t = tree(&[("a", None), ("b", Some("a")), ("c", Some("b"))]);
        let new = |id: &str, parent: &str| Partner {
            id: id.into(),
            parent_id: Some(parent.into()),
            name: None,
        };
        assert_eq!(run(check_parent(&new("d", "c"), lookup(&t))), Ok(()));
        assert_eq!(
            run(check_parent(&new("d", "zz"), lookup(&t))),
            Err(TreeError::ParentMissing)
        );
        assert_eq!(run(check_parent(&new("a", "c"), lookup(&t))), Err(TreeError::Cycle));
        assert_eq!(run(check_parent(&new("a", "a"), lookup(&t))), Err(TreeError::Cycle));
    }

    #[test]
    fn the_window_counts_from_the_click_and_tolerates_clock_skew() {
        let day = 86_400;
        assert!(is_attributed(
            true,
            Some(1_000_000),
            1_000_000 + 30 * day,
            30 * day as u64
        ));
        assert!(!is_attributed(
            true,
            Some(1_000_000),
            1_000_001 + 30 * day,
            30 * day as u64
        ));
        assert!(is_attributed(true, Some(1_000_000 + CLOCK_SKEW_SECS), 1_000_000, 60));
        assert!(!is_attributed(true, Some(1_000_001 + CLOCK_SKEW_SECS), 1_000_000, 60));
        assert!(!is_attributed(false, Some(1_000_000), 1_000_000, 60), "an unknown link");
        assert!(!is_attributed(true, None, 1_000_000, 60), "a forged click id");
        assert!(is_attributed(true, Some(i64::MIN), i64::MAX, u64::MAX), "no overflow");
    }

    #[test]
    fn each_level_is_paid_its_own_rate_floored() {
        let chain = ["kid".to_string(), "agent".into(), "mgr".into()];
        let levels = commissions(&chain, 1_999_900, &[500, 200]);
        let paid: Vec<_> = levels.iter().map(|l| (l.level, l.commission)).collect();
        assert_eq!(paid, [(1, 99_995), (2, 39_998), (3, 0)]);
    }
}
