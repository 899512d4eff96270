//! IP address → province, city and ISP, from an ip2region database (`LINKGATE_GEO_DB`), loaded
//! once at start and looked up by the batcher, never on the redirect path.
//!
//! Two forms are read, told apart by their first bytes:
//! - **xdb**, ip2region's binary form: a 256-byte header (structure version 2 = IPv4 only, 3 =
//!   IPv4 or IPv6 as the header's IP version says), a 512 KiB vector index, the region strings,
//!   and the sorted segment index (`start`, `end`, region length `u16`, region offset `u32`; IPv4
//!   addresses little-endian, IPv6 ones as their 16 bytes);
//! - its **text source**, one range per line: `start_ip|end_ip|region…`.
//!
//! Both become the same in-memory table: sorted ranges with the index of their region, regions
//! stored once (a full China database has about 700,000 ranges and 13,000 regions: about 10 MiB).
//! A lookup is a binary search.
//!
//! Region strings come in two layouts: the classic `country|region|province|city|isp` (the
//! second field always `0`) and the newer `country|province|city|isp|CC` (ending in a two-letter
//! country code). `0` or an empty field means unknown.

use std::net::IpAddr;

/// Where an address is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub(crate) struct Region {
    pub province: String,
    pub city: String,
    pub isp: String,
}

/// The value of an unknown province, city or ISP.
pub(crate) const UNKNOWN: &str = "unknown";

#[derive(Debug, thiserror::Error)]
pub(crate) enum GeoError {
    #[error("cannot read {0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} is not an ip2region database: {1}")]
    Format(String, String),
}

/// The loaded database.
#[derive(Debug, Default)]
pub(crate) struct Geo {
    v4: Vec<(u32, u32, u32)>,
    v6: Vec<(u128, u128, u32)>,
    regions: Vec<std::sync::Arc<Region>>,
}

impl Geo {
    pub(crate) fn load(path: &std::path::Path) -> Result<Geo, GeoError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| GeoError::Io(name.clone(), e))?;
        let geo = if looks_like_xdb(&bytes) {
            Geo::from_xdb(&bytes)
        } else {
            Geo::from_text(&String::from_utf8_lossy(&bytes))
        };
        let geo = geo.map_err(|e| GeoError::Format(name, e))?;
        if geo.v4.is_empty() && geo.v6.is_empty() {
            return Err(GeoError::Format(path.display().to_string(), "no ranges".into()));
        }
        Ok(geo)
    }

    /// The text form: `start_ip|end_ip|region…` per line; blank lines and `#` comments skipped.
    pub(crate) fn from_text(text: &str) -> Result<Geo, String> {
        let mut b = Builder::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(3, '|');
            let (Some(s), Some(e), Some(region)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("line {}: expected start_ip|end_ip|region", n + 1));
            };
            let bad = || format!("line {}: bad address range", n + 1);
            match (s.trim().parse::<IpAddr>(), e.trim().parse::<IpAddr>()) {
                (Ok(IpAddr::V4(s)), Ok(IpAddr::V4(e))) if s <= e => b.v4(s.into(), e.into(), region),
                (Ok(IpAddr::V6(s)), Ok(IpAddr::V6(e))) if s <= e => b.v6(s.into(), e.into(), region),
                _ => return Err(bad()),
            }
        }
        Ok(b.finish())
    }

    /// The binary xdb form (structure 2 or 3).
    pub(crate) fn from_xdb(bytes: &[u8]) -> Result<Geo, String> {
        let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |at: usize| {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let version = u16_at(0).ok_or("short header")?;
        let ip_bytes = match (version, u16_at(16)) {
            (2, _) | (3, Some(4)) => 4,
            (3, Some(6)) => 16,
            (v, ipv) => return Err(format!("unsupported structure {v} (IP version {ipv:?})")),
        };
        let (start, end) = (
            u32_at(8).ok_or("short header")? as usize,
            u32_at(12).ok_or("short header")? as usize,
        );
        let block = 2 * ip_bytes + 6;
        if start < HEADER + VECTOR || end < start || end + block > bytes.len() {
            return Err("segment index out of bounds".into());
        }
        let mut b = Builder::default();
        let mut at = start;
        while at <= end {
            let seg = &bytes[at..at + block];
            let len = u16::from_le_bytes([seg[2 * ip_bytes], seg[2 * ip_bytes + 1]]) as usize;
            let ptr = u32::from_le_bytes(seg[2 * ip_bytes + 2..block].try_into().expect("4 bytes")) as usize;
            let region = bytes.get(ptr..ptr + len).ok_or("region out of bounds")?;
            let region = std::str::from_utf8(region).map_err(|_| "region is not UTF-8")?;
            if ip_bytes == 4 {
                let s = u32::from_le_bytes(seg[0..4].try_into().expect("4 bytes"));
                let e = u32::from_le_bytes(seg[4..8].try_into().expect("4 bytes"));
                b.v4(s, e, region);
            } else {
                let s = u128::from_be_bytes(seg[0..16].try_into().expect("16 bytes"));
                let e = u128::from_be_bytes(seg[16..32].try_into().expect("16 bytes"));
                b.v6(s, e, region);
            }
            at += block;
        }
        Ok(b.finish())
    }

    /// The region of `ip` (an IPv4-mapped IPv6 address is looked up as IPv4).
    pub(crate) fn lookup(&self, ip: IpAddr) -> Option<&std::sync::Arc<Region>> {
        let i = match ip {
            IpAddr::V4(v4) => find(&self.v4, u32::from(v4))?,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => find(&self.v4, u32::from(v4))?,
                None => find(&self.v6, u128::from(v6))?,
            },
        };
        self.regions.get(i as usize)
    }
}

const HEADER: usize = 256;
const VECTOR: usize = 256 * 256 * 8;

fn looks_like_xdb(bytes: &[u8]) -> bool {
    bytes.len() > HEADER + VECTOR && matches!(bytes.get(0..2), Some([2 | 3, 0]))
}

fn find<T: Ord + Copy>(ranges: &[(T, T, u32)], ip: T) -> Option<u32> {
    let i = ranges.partition_point(|r| r.0 <= ip).checked_sub(1)?;
    let (_, end, region) = ranges[i];
    (ip <= end).then_some(region)
}

#[derive(Default)]
struct Builder {
    geo: Geo,
    index: std::collections::HashMap<String, u32>,
}

impl Builder {
    fn region(&mut self, text: &str) -> u32 {
        if let Some(i) = self.index.get(text) {
            return *i;
        }
        let i = self.geo.regions.len() as u32;
        self.geo.regions.push(std::sync::Arc::new(parse_region(text)));
        self.index.insert(text.to_string(), i);
        i
    }
    fn v4(&mut self, s: u32, e: u32, region: &str) {
        let r = self.region(region);
        self.geo.v4.push((s, e, r));
    }
    fn v6(&mut self, s: u128, e: u128, region: &str) {
        let r = self.region(region);
        self.geo.v6.push((s, e, r));
    }
    fn finish(mut self) -> Geo {
        self.geo.v4.sort_unstable();
        self.geo.v6.sort_unstable();
        self.geo
    }
}

/// Province, city and ISP of a region string, in either layout.
pub(crate) fn parse_region(text: &str) -> Region {
    let f: Vec<&str> = text.split('|').map(str::trim).collect();
    let known = |s: Option<&&str>| match s {
        Some(s) if !s.is_empty() && *s != "0" => s.to_string(),
        _ => UNKNOWN.to_string(),
    };
    let newer = f.len() == 4
        || f.last()
            .is_some_and(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()));
    let (p, c, i) = if newer || f.len() < 5 { (1, 2, 3) } else { (2, 3, 4) };
    Region {
        province: known(f.get(p)),
        city: known(f.get(c)),
        isp: known(f.get(i)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds an xdb file (structure 3, IPv4) of `ranges`, the way ip2region's maker lays it out:
    /// header, vector index, regions, segment index.
    pub(crate) fn xdb_v4(ranges: &[(&str, &str, &str)]) -> Vec<u8> {
        let mut out = vec![0u8; HEADER + VECTOR];
        let mut ptrs = Vec::new();
        for (_, _, region) in ranges {
            ptrs.push((out.len() as u32, region.len() as u16));
            out.extend_from_slice(region.as_bytes());
        }
        let start = out.len() as u32;
        let mut vector: Vec<Option<(u32, u32)>> = vec![None; 65_536];
        for ((s, e, _), (ptr, len)) in ranges.iter().zip(&ptrs) {
            let (s, e): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (s.parse().unwrap(), e.parse().unwrap());
            let at = out.len() as u32;
            out.extend_from_slice(&u32::from(s).to_le_bytes());
            out.extend_from_slice(&u32::from(e).to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&ptr.to_le_bytes());
            let (so, eo) = (s.octets(), e.octets());
            let (first, last) = (
                (so[0] as usize) << 8 | so[1] as usize,
                (eo[0] as usize) << 8 | eo[1] as usize,
            );
            for v in &mut vector[first..=last] {
                let entry = v.get_or_insert((at, at + 14));
                entry.1 = at + 14;
            }
        }
        let end = out.len() as u32 - 14;
        for (i, v) in vector.iter().enumerate() {
            if let Some((s, e)) = v {
                out[HEADER + i * 8..HEADER + i * 8 + 4].copy_from_slice(&s.to_le_bytes());
                out[HEADER + i * 8 + 4..HEADER + i * 8 + 8].copy_from_slice(&e.to_le_bytes());
            }
        }
        out[0..2].copy_from_slice(&3u16.to_le_bytes());
        out[2..4].copy_from_slice(&1u16.to_le_bytes());
        out[8..12].copy_from_slice(&start.to_le_bytes());
        out[12..16].copy_from_slice(&end.to_le_bytes());
        out[16..18].copy_from_slice(&4u16.to_le_bytes());
        out[18..20].copy_from_slice(&4u16.to_le_bytes());
        out
    }

    const RANGES: &[(&str, &str, &str)] = &[
        ("1.0.0.0", "1.0.0.255", "澳大利亚|0|0|0|0"),
        ("36.96.0.0", "36.127.255.255", "中国|0|广东省|深圳市|电信"),
        ("58.246.0.0", "58.247.255.255", "中国|上海|上海市|联通|CN"),
        ("203.0.113.0", "203.0.113.255", "中国|0|浙江省|杭州市|移动"),
    ];

    #[test]
    fn xdb_and_text_forms_answer_the_same() {
        let xdb = Geo::from_xdb(&xdb_v4(RANGES)).unwrap();
        let text: String = RANGES.iter().map(|(s, e, r)| format!("{s}|{e}|{r}\n")).collect();
        let text = Geo::from_text(&text).unwrap();
        for geo in [&xdb, &text] {
            let at = |ip: &str| geo.lookup(ip.parse().unwrap()).map(|r| Region::clone(r));
            assert_eq!(at("36.100.1.2").unwrap().province, "广东省");
            assert_eq!(at("36.100.1.2").unwrap().city, "深圳市");
            assert_eq!(at("58.246.9.9").unwrap().province, "上海");
            assert_eq!(at("58.246.9.9").unwrap().isp, "联通");
            assert_eq!(at("203.0.113.7").unwrap().city, "杭州市");
            assert_eq!(at("1.0.0.1").unwrap().province, UNKNOWN);
            assert_eq!(at("::ffff:36.96.0.0").unwrap().province, "广东省");
            assert_eq!(at("36.95.255.255"), None);
            assert_eq!(at("8.8.8.8"), None);
        }
    }

    #[test]
    fn broken_files_are_refused_with_a_reason() {
        assert!(Geo::from_text("1.2.3.4|1.2.3.0|x|y|z|w").is_err(), "end before start");
        assert!(Geo::from_text("1.2.3.4").is_err());
        let mut xdb = xdb_v4(RANGES);
        xdb[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Geo::from_xdb(&xdb).is_err());
        xdb[0] = 9;
        assert!(Geo::from_xdb(&xdb).is_err());
    }

    proptest::proptest! {
        /// Any bytes at all: an error or a table, never a panic.
        #[test]
        fn any_file_loads_or_is_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048), v in 2u8..4) {
            let mut xdb = xdb_v4(RANGES);
            let n = bytes.len().min(xdb.len() - HEADER - VECTOR);
            xdb[HEADER + VECTOR..HEADER + VECTOR + n].copy_from_slice(&bytes[..n]);
            xdb[0] = v;
            let _ = Geo::from_xdb(&xdb);
            let _ = Geo::from_text(&String::from_utf8_lossy(&bytes));
        }
    }
}
