//! Attribute: leads on the first human tap (opened by the batcher, see [`crate::stream::batcher`]),
//! partner chains, campaigns, and conversions with their referral commissions.

pub mod model;

use self::model::{ChainLevel, Partner, commission};
use crate::store::{Store, StoreError};

/// Levels paid on a conversion: the owner and up to two ancestors.
pub const MAX_LEVELS: usize = 3;
/// How far up a partner tree the cycle check walks before giving up (a tree deeper than this is
/// refused, which also bounds the work of one `POST /v1/partners`).
pub const MAX_TREE_DEPTH: usize = 1000;

/// `id` and up to two ancestors, itself first. An id that is not a registered partner is a chain
/// of one: a salesperson who owns codes is paid at level 1 without being in the partner tree.
pub async fn chain(store: &dyn Store, id: &str) -> Result<Vec<String>, StoreError> {
    let mut out = vec![id.to_string()];
    let mut next = store.get_partner(id).await?.and_then(|p| p.parent_id);
    while let Some(parent) = next.filter(|_| out.len() < MAX_LEVELS) {
        next = store.get_partner(&parent).await?.and_then(|p| p.parent_id);
        out.push(parent);
    }
    Ok(out)
}

/// Why a partner cannot be saved.
#[derive(Debug, PartialEq, Eq)]
pub enum TreeError {
    ParentMissing,
    Cycle,
    TooDeep,
}

/// Checks that `partner.parent_id` exists and that saving `partner` keeps the tree a tree.
pub async fn check_parent(store: &dyn Store, partner: &Partner) -> Result<Result<(), TreeError>, StoreError> {
    let Some(parent) = partner.parent_id.as_deref() else {
        return Ok(Ok(()));
    };
    if parent == partner.id {
        return Ok(Err(TreeError::Cycle));
    }
    let Some(mut at) = store.get_partner(parent).await? else {
        return Ok(Err(TreeError::ParentMissing));
    };
    for _ in 0..MAX_TREE_DEPTH {
        match at.parent_id {
            None => return Ok(Ok(())),
            Some(p) if p == partner.id => return Ok(Err(TreeError::Cycle)),
            Some(p) => match store.get_partner(&p).await? {
                Some(next) => at = next,
                None => return Ok(Ok(())),
            },
        }
    }
    Ok(Err(TreeError::TooDeep))
}

/// The commission of each level of `chain` for `amount` at the campaign's rates.
pub fn commissions(chain: &[String], amount: i64, bps: &[u32]) -> Vec<ChainLevel> {
    chain
        .iter()
        .enumerate()
        .map(|(i, id)| ChainLevel {
            partner_id: id.clone(),
            level: i as u8 + 1,
            commission: commission(amount, bps.get(i).copied().unwrap_or(0)),
        })
        .collect()
}
