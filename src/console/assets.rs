//! The console's static files, embedded in the binary and served under fingerprinted names
//! (`/console/assets/<name>.<hash>.<ext>`) with a year-long immutable cache lifetime: a new
//! build changes the hash, so a browser never runs an old script against new pages.
//!
//! Vendored from npm (never fetched at build or run time): uPlot 1.6.32 (MIT, `uPlot.LICENSE`),
//! `npm pack uplot@1.6.32`, files `dist/uPlot.iife.min.js` and `dist/uPlot.min.css`.

use std::sync::OnceLock;

/// One embedded file.
pub(crate) struct Asset {
    /// The name pages link to, with the content's hash.
    pub path: String,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

const FILES: [(&str, &str, &str, &[u8]); 4] = [
    (
        "console",
        "css",
        "text/css; charset=utf-8",
        include_bytes!("assets/console.css"),
    ),
    (
        "console",
        "js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/console.js"),
    ),
    (
        "uPlot",
        "css",
        "text/css; charset=utf-8",
        include_bytes!("assets/uPlot.min.css"),
    ),
    (
        "uPlot",
        "js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/uPlot.iife.min.js"),
    ),
];

/// Every asset, in [`FILES`] order.
pub(crate) fn all() -> &'static [Asset] {
    static ASSETS: OnceLock<Vec<Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        FILES
            .iter()
            .map(|(name, ext, content_type, bytes)| Asset {
                path: format!(
                    "/console/assets/{name}.{:012x}.{ext}",
                    xxhash_rust::xxh3::xxh3_64(bytes) >> 16
                ),
                content_type,
                bytes,
            })
            .collect()
    })
}

/// The asset served at `path`.
pub(crate) fn find(path: &str) -> Option<&'static Asset> {
    all().iter().find(|a| a.path == path)
}

/// The URLs pages link to.
pub(crate) struct Links {
    pub css: &'static str,
    pub js: &'static str,
    pub uplot_css: &'static str,
    pub uplot_js: &'static str,
}

pub(crate) fn links() -> Links {
    let a = all();
    Links {
        css: &a[0].path,
        js: &a[1].path,
        uplot_css: &a[2].path,
        uplot_js: &a[3].path,
    }
}
