//! Link templates: what the links of one mint call share (destination, kind, campaign, owner,
//! options, creation time) stored once, under a key named by its content (`lg:tpl:{<id>}`, the
//! id being 96 bits of its SHA-256), and each link's record holding only its own fields and the
//! template's id: `{"p":"<id>","r":"<recipient>","s":<seq>}`.
//!
//! A bulk call of 100,000 personalised links to one destination stores the destination once
//! instead of 100,000 times: about 70 bytes less per link (`loadtest/redis-memory`). Templates
//! are immutable (a `PATCH` writes the link's whole record, which then no longer refers to one),
//! so each replica keeps the ones it has read in memory and a link read costs one `GET` as before.
//! A link that shares nothing with the rest of its call (a single mint, say) is stored whole.

use std::sync::Arc;

use base64::Engine;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{StoreError, decode_link, encode_link};
use crate::link::Link;

/// Links of one mint call that must share a template before it is stored: one link alone gains
/// nothing from it.
const TEMPLATE_MIN_LINKS: usize = 2;

/// Templates a replica keeps in memory; past that it forgets them all and reads again what it
/// needs (each is a few hundred bytes, and there is one per bulk call, so this bounds the cache to
/// a few tens of megabytes).
const TEMPLATE_CACHE_MAX: usize = 100_000;

/// A link record that refers to a template: only the link's own fields.
#[derive(Serialize, Deserialize)]
struct Templated {
    #[serde(rename = "p")]
    template: String,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    recipient_id: Option<String>,
    #[serde(rename = "s", default)]
    seq: u64,
}

/// The templates this replica has read (immutable, so never stale).
#[derive(Default)]
pub(crate) struct Templates {
    cache: DashMap<String, Arc<Link>>,
}

/// What a mint call writes: each template once, then each link's record.
pub(crate) struct Records {
    /// `(key, template)` for every template the records refer to.
    pub templates: Vec<(String, Vec<u8>)>,
    pub records: Vec<Vec<u8>>,
}

/// The part of `link` its call's other links may share: all but its code, recipient and number.
fn shared(link: &Link) -> Vec<u8> {
    encode_link(&Link {
        code: String::new(),
        recipient_id: None,
        seq: 0,
        ..link.clone()
    })
}

fn template_id(shared: &[u8]) -> String {
    let digest = Sha256::digest(shared);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..12])
}

pub(crate) fn template_key(id: &str) -> String {
    format!("lg:tpl:{{{id}}}")
}

/// The records of `links` (minted together): those sharing their template with another link of
/// the call refer to it, the others are stored whole.
pub(crate) fn records(links: &[&Link]) -> Records {
    let shared: Vec<Vec<u8>> = links.iter().map(|l| shared(l)).collect();
    let mut count: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    for s in &shared {
        *count.entry(s.as_slice()).or_default() += 1;
    }
    let mut ids: std::collections::HashMap<&[u8], String> = std::collections::HashMap::new();
    let mut templates = Vec::new();
    let records = links
        .iter()
        .zip(&shared)
        .map(|(link, s)| {
            if count[s.as_slice()] < TEMPLATE_MIN_LINKS {
                return encode_link(link);
            }
            let id = ids.entry(s.as_slice()).or_insert_with(|| {
                let id = template_id(s);
                templates.push((template_key(&id), s.clone()));
                id
            });
            serde_json::to_vec(&Templated {
                template: id.clone(),
                recipient_id: link.recipient_id.clone(),
                seq: link.seq,
            })
            .expect("records always serialise")
        })
        .collect();
    Records { templates, records }
}

/// Whether a stored record refers to a template.
fn template_of(bytes: &[u8]) -> Option<Result<Templated, StoreError>> {
    bytes
        .starts_with(br#"{"p":"#)
        .then(|| serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt("link record".into(), e)))
}

impl Templates {
    /// The template ids among `records` that this replica has not read yet.
    pub(crate) fn missing<'a>(&self, records: impl IntoIterator<Item = &'a [u8]>) -> Vec<String> {
        let mut out: Vec<String> = records
            .into_iter()
            .filter_map(|b| template_of(b)?.ok())
            .map(|t| t.template)
            .filter(|id| !self.cache.contains_key(id))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Remembers a template read from the store and returns it (`None`: it is missing, and so is
    /// every link that refers to it).
    pub(crate) fn learn(&self, id: &str, bytes: Option<&[u8]>) -> Result<Option<Arc<Link>>, StoreError> {
        let Some(b) = bytes else { return Ok(None) };
        let template = Arc::new(decode_link("", b)?);
        if self.cache.len() >= TEMPLATE_CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(id.to_string(), template.clone());
        Ok(Some(template))
    }

    /// The link stored under `code` as `bytes`: whole, or its own fields over its template (from
    /// `fetched`, what [`Templates::learn`] returned for the ids [`Templates::missing`] named, or
    /// from this replica's cache).
    pub(crate) fn link(
        &self,
        code: &str,
        bytes: &[u8],
        fetched: &std::collections::HashMap<String, Arc<Link>>,
    ) -> Result<Link, StoreError> {
        let Some(own) = template_of(bytes) else {
            return decode_link(code, bytes);
        };
        let own = own?;
        let cached = || self.cache.get(&own.template).map(|t| t.clone());
        let template = fetched.get(&own.template).cloned().or_else(cached).ok_or_else(|| {
            StoreError::Corrupt(
                code.to_string(),
                serde::de::Error::custom(format!("its template {} is missing", own.template)),
            )
        })?;
        Ok(Link {
            code: code.to_string(),
            recipient_id: own.recipient_id,
            seq: own.seq,
            ..(*template).clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(code: &str, recipient: &str, seq: u64, destination: &str) -> Link {
        let mut l = Link::new(code.into(), destination.to_string(), 1_795_507_200);
        l.recipient_id = Some(recipient.into());
        l.campaign_id = Some("spring".into());
        l.seq = seq;
        l
    }

    #[test]
    fn links_minted_together_share_a_template_and_read_back_whole() {
        let links = [
            link("aaaaaaaa", "r1", 1, "https://shop.example/a"),
            link("bbbbbbbb", "r2", 2, "https://shop.example/a"),
            link("cccccccc", "r3", 3, "https://other.example/"),
        ];
        let refs: Vec<&Link> = links.iter().collect();
        let out = records(&refs);
        assert_eq!(
            out.templates.len(),
            1,
            "the two alike share one; the third is stored whole"
        );
        assert!(
            out.records[0].len() < 60,
            "{}",
            String::from_utf8_lossy(&out.records[0])
        );
        assert_eq!(out.records[2], encode_link(&links[2]));
        let templates = Templates::default();
        let ids = templates.missing(out.records.iter().map(Vec::as_slice));
        assert_eq!(ids.len(), 1);
        assert_eq!(template_key(&ids[0]), out.templates[0].0);
        let none = std::collections::HashMap::new();
        assert!(
            templates.link("aaaaaaaa", &out.records[0], &none).is_err(),
            "unread template"
        );
        let learnt = templates.learn(&ids[0], Some(&out.templates[0].1)).unwrap().unwrap();
        let fetched = std::collections::HashMap::from([(ids[0].clone(), learnt)]);
        for (l, r) in links.iter().zip(&out.records) {
            assert_eq!(&templates.link(&l.code, r, &fetched).unwrap(), l);
            assert_eq!(&templates.link(&l.code, r, &none).unwrap(), l, "and from the cache");
        }
    }
}
