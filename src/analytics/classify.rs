//! What a tap's User-Agent and Referer say about where it came from: device type, operating
//! system, browser, and the app whose in-app browser opened the link (WeChat, Alipay, Douyin, …).
//!
//! One Aho-Corasick pass over the lower-cased user agent finds every marker at once; the answer
//! is then a few bit tests in a fixed order (an in-app browser's user agent names its engine's
//! browser too, WeCom's names WeChat, HarmonyOS's names Android). No maintained crate knows the
//! Chinese in-app browsers, so the markers are ours, checked against the real user agents in
//! `tests/fixtures/ua-*.txt`. The batcher memoizes the answer per distinct user agent
//! ([`UaMemo`]), so a campaign's repeated phones cost one hash lookup each.

use std::collections::HashMap;
use std::sync::LazyLock;

use aho_corasick::AhoCorasick;

use crate::hash::Xxh3State;

/// Closed value sets: each dimension's values are these names, so a breakdown has a known shape.
macro_rules! closed_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(clippy::enum_variant_names)]
        pub(crate) enum $name { $($variant),+ }
        impl $name {
            pub(crate) fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

closed_enum!(
    /// The kind of device.
    Device { Mobile => "mobile", Tablet => "tablet", Desktop => "desktop", Other => "other" }
);
closed_enum!(
    /// The operating system.
    Os {
        Ios => "ios", Android => "android", HarmonyOs => "harmonyos", Windows => "windows",
        MacOs => "macos", Linux => "linux", Other => "other",
    }
);
closed_enum!(
    /// The browser engine's brand (an in-app browser is usually `webview`).
    Browser {
        Chrome => "chrome", Safari => "safari", Edge => "edge", Firefox => "firefox",
        Samsung => "samsung", Uc => "uc", Quark => "quark", QqBrowser => "qq_browser",
        Huawei => "huawei", Xiaomi => "xiaomi", Opera => "opera", WebView => "webview", Other => "other",
    }
);
closed_enum!(
    /// The app whose in-app browser opened the link; `none` for a plain browser.
    App {
        WeChat => "wechat", WeCom => "wecom", Alipay => "alipay", Douyin => "douyin", Toutiao => "toutiao",
        DingTalk => "dingtalk", Qq => "qq", Weibo => "weibo", Xiaohongshu => "xiaohongshu",
        Kuaishou => "kuaishou", Baidu => "baidu", Taobao => "taobao", Facebook => "facebook",
        Instagram => "instagram", Line => "line", Snapchat => "snapchat", None => "none",
    }
);

/// What one user agent says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct UaClass {
    pub device: Device,
    pub os: Os,
    pub browser: Browser,
    pub app: App,
}

impl UaClass {
    pub(crate) const UNKNOWN: UaClass = UaClass {
        device: Device::Other,
        os: Os::Other,
        browser: Browser::Other,
        app: App::None,
    };
}

/// The markers, lower case; a marker's position is its bit in the match set.
#[derive(Clone, Copy)]
#[repr(u8)]
enum M {
    WxWork,
    MicroMessenger,
    AlipayClient,
    Aweme,
    NewsArticle,
    DingTalk,
    QqApp,
    Weibo,
    Xiaohongshu,
    XhsDiscover,
    Kwai,
    Kuaishou,
    BaiduBoxApp,
    AliAppTb,
    Fban,
    Fbav,
    Instagram,
    LineApp,
    Snapchat,
    HarmonyOs,
    OpenHarmony,
    Iphone,
    Ipad,
    Ipod,
    Android,
    WindowsPhone,
    Windows,
    Macintosh,
    X11,
    Linux,
    CrOs,
    Mobile,
    Tablet,
    Edge,
    EdgA,
    EdgIos,
    SamsungBrowser,
    UcBrowser,
    UcWeb,
    Quark,
    MqqBrowser,
    HuaweiBrowser,
    MiuiBrowser,
    Opr,
    Opera,
    Firefox,
    FxIos,
    CriOs,
    Chrome,
    Safari,
    Version,
    Wv,
    Mobile15,
}

const MARKERS: &[(M, &str)] = &[
    (M::WxWork, "wxwork/"),
    (M::MicroMessenger, "micromessenger"),
    (M::AlipayClient, "alipayclient"),
    (M::Aweme, "aweme"),
    (M::NewsArticle, "newsarticle"),
    (M::DingTalk, "dingtalk"),
    (M::QqApp, " qq/"),
    (M::Weibo, "weibo"),
    (M::Xiaohongshu, "xiaohongshu"),
    (M::XhsDiscover, " discover/"),
    (M::Kwai, "kwai"),
    (M::Kuaishou, "kuaishou"),
    (M::BaiduBoxApp, "baiduboxapp"),
    (M::AliAppTb, "aliapp(tb"),
    (M::Fban, "fban/"),
    (M::Fbav, "fbav/"),
    (M::Instagram, "instagram"),
    (M::LineApp, " line/"),
    (M::Snapchat, "snapchat"),
    (M::HarmonyOs, "harmonyos"),
    (M::OpenHarmony, "openharmony"),
    (M::Iphone, "iphone"),
    (M::Ipad, "ipad"),
    (M::Ipod, "ipod"),
    (M::Android, "android"),
    (M::WindowsPhone, "windows phone"),
    (M::Windows, "windows"),
    (M::Macintosh, "macintosh"),
    (M::X11, "x11"),
    (M::Linux, "linux"),
    (M::CrOs, "cros"),
    (M::Mobile, "mobile"),
    (M::Tablet, "tablet"),
    (M::Edge, "edg/"),
    (M::EdgA, "edga/"),
    (M::EdgIos, "edgios/"),
    (M::SamsungBrowser, "samsungbrowser"),
    (M::UcBrowser, "ucbrowser"),
    (M::UcWeb, "ucweb"),
    (M::Quark, "quark/"),
    (M::MqqBrowser, "mqqbrowser"),
    (M::HuaweiBrowser, "huaweibrowser"),
    (M::MiuiBrowser, "miuibrowser"),
    (M::Opr, "opr/"),
    (M::Opera, "opera"),
    (M::Firefox, "firefox/"),
    (M::FxIos, "fxios/"),
    (M::CriOs, "crios/"),
    (M::Chrome, "chrome/"),
    (M::Safari, "safari/"),
    (M::Version, "version/"),
    (M::Wv, "; wv)"),
    (M::Mobile15, "mobile/15"),
];

static MATCHER: LazyLock<AhoCorasick> = LazyLock::new(|| {
    debug_assert!(MARKERS.iter().enumerate().all(|(i, (m, _))| *m as usize == i));
    AhoCorasick::new(MARKERS.iter().map(|(_, s)| s)).expect("fixed markers build")
});

/// The markers found in a user agent, one bit each.
#[derive(Clone, Copy)]
struct Found(u64);

impl Found {
    fn has(self, m: M) -> bool {
        self.0 & (1 << m as u8) != 0
    }
    fn any(self, ms: &[M]) -> bool {
        ms.iter().any(|&m| self.has(m))
    }
}

/// Classifies a user agent (any bytes; matching is ASCII case-insensitive).
pub(crate) fn classify_ua(ua: &[u8]) -> UaClass {
    let lower: Vec<u8> = ua.iter().map(u8::to_ascii_lowercase).collect();
    let mut found = Found(0);
    for m in MATCHER.find_overlapping_iter(&lower) {
        found.0 |= 1 << m.pattern().as_u32();
    }
    let app = app_of(found);
    let os = os_of(found);
    UaClass {
        device: device_of(found, os),
        os,
        browser: browser_of(found, app),
        app,
    }
}

fn app_of(f: Found) -> App {
    // WeCom's user agent carries MicroMessenger too: it is checked first.
    let order: &[(&[M], App)] = &[
        (&[M::WxWork], App::WeCom),
        (&[M::MicroMessenger], App::WeChat),
        (&[M::AlipayClient], App::Alipay),
        (&[M::DingTalk], App::DingTalk),
        (&[M::Aweme], App::Douyin),
        (&[M::NewsArticle], App::Toutiao),
        (&[M::Xiaohongshu, M::XhsDiscover], App::Xiaohongshu),
        (&[M::Kwai, M::Kuaishou], App::Kuaishou),
        (&[M::BaiduBoxApp], App::Baidu),
        (&[M::Weibo], App::Weibo),
        (&[M::QqApp], App::Qq),
        (&[M::AliAppTb], App::Taobao),
        (&[M::Fban, M::Fbav], App::Facebook),
        (&[M::Instagram], App::Instagram),
        (&[M::LineApp], App::Line),
        (&[M::Snapchat], App::Snapchat),
    ];
    order
        .iter()
        .find(|(ms, _)| f.any(ms))
        .map_or(App::None, |(_, app)| *app)
}

fn os_of(f: Found) -> Os {
    if f.any(&[M::HarmonyOs, M::OpenHarmony]) {
        Os::HarmonyOs
    } else if f.any(&[M::Iphone, M::Ipad, M::Ipod]) {
        Os::Ios
    } else if f.has(M::Android) {
        Os::Android
    } else if f.has(M::Windows) {
        Os::Windows
    } else if f.has(M::Macintosh) {
        Os::MacOs
    } else if f.any(&[M::Linux, M::X11, M::CrOs]) {
        Os::Linux
    } else {
        Os::Other
    }
}

fn device_of(f: Found, os: Os) -> Device {
    if f.any(&[M::Ipad, M::Tablet]) {
        return Device::Tablet;
    }
    match os {
        Os::Ios | Os::HarmonyOs => Device::Mobile,
        // An Android user agent without "Mobile" is a tablet's (Google's own guidance).
        Os::Android if f.has(M::Mobile) => Device::Mobile,
        Os::Android => Device::Tablet,
        Os::Windows if f.has(M::WindowsPhone) => Device::Mobile,
        Os::Windows | Os::MacOs | Os::Linux => Device::Desktop,
        Os::Other if f.has(M::Mobile) => Device::Mobile,
        Os::Other => Device::Other,
    }
}

fn browser_of(f: Found, app: App) -> Browser {
    let order: &[(&[M], Browser)] = &[
        (&[M::Edge, M::EdgA, M::EdgIos], Browser::Edge),
        (&[M::SamsungBrowser], Browser::Samsung),
        (&[M::UcBrowser, M::UcWeb], Browser::Uc),
        (&[M::Quark], Browser::Quark),
        (&[M::HuaweiBrowser], Browser::Huawei),
        (&[M::MiuiBrowser], Browser::Xiaomi),
        (&[M::Opr, M::Opera], Browser::Opera),
        (&[M::Firefox, M::FxIos], Browser::Firefox),
    ];
    if let Some((_, b)) = order.iter().find(|(ms, _)| f.any(ms)) {
        return *b;
    }
    // An in-app browser (or Android's WebView) is a web view, whatever engine it names.
    if app != App::None || f.has(M::Wv) {
        return Browser::WebView;
    }
    if f.has(M::MqqBrowser) {
        Browser::QqBrowser
    } else if f.any(&[M::CriOs, M::Chrome]) {
        Browser::Chrome
    } else if f.has(M::Safari) && f.has(M::Version) {
        Browser::Safari
    } else if f.has(M::Mobile15) {
        // iOS without a Safari token: an app's WKWebView.
        Browser::WebView
    } else {
        Browser::Other
    }
}

/// The host of a Referer, lower case, without `www.`; `direct` when there is none or it does not
/// parse (a tap from an SMS app sends none).
pub(crate) fn referer_host(referer: Option<&str>) -> String {
    let Some(r) = referer else { return DIRECT.to_string() };
    match r.parse::<http::Uri>() {
        Ok(uri) => match uri.host() {
            Some(h) if !h.is_empty() => {
                let h = h.to_ascii_lowercase();
                h.strip_prefix("www.").map(str::to_string).unwrap_or(h)
            }
            _ => DIRECT.to_string(),
        },
        Err(_) => DIRECT.to_string(),
    }
}

/// The referer value of a tap without one.
pub(crate) const DIRECT: &str = "direct";

/// Most user agents remembered; past this the memo starts over.
const UA_MEMO_MAX: usize = 16_384;

/// Classified user agents by their xxh3 (a 64-bit collision between two user agents would put
/// one tap in the other's row: about one in 10^11 per pair at this size).
#[derive(Default)]
pub(crate) struct UaMemo {
    seen: HashMap<u64, UaClass, Xxh3State>,
}

impl UaMemo {
    pub(crate) fn classify(&mut self, ua: Option<&[u8]>) -> UaClass {
        let Some(ua) = ua.filter(|u| !u.is_empty()) else {
            return UaClass::UNKNOWN;
        };
        let h = xxhash_rust::xxh3::xxh3_64(ua);
        if let Some(c) = self.seen.get(&h) {
            return *c;
        }
        if self.seen.len() >= UA_MEMO_MAX {
            self.seen.clear();
        }
        let c = classify_ua(ua);
        self.seen.insert(h, c);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_in_app_browser_of_the_fixtures_is_named() {
        let apps: Vec<App> = fixture("ua-in-app.txt")
            .iter()
            .map(|u| classify_ua(u.as_bytes()).app)
            .collect();
        for want in [
            App::WeChat,
            App::WeCom,
            App::Alipay,
            App::Douyin,
            App::DingTalk,
            App::Qq,
            App::Weibo,
            App::Xiaohongshu,
            App::Facebook,
            App::Instagram,
            App::Line,
            App::Snapchat,
        ] {
            assert!(apps.contains(&want), "{want:?} not found in ua-in-app.txt");
        }
    }

    #[test]
    fn known_user_agents_classify_as_expected() {
        let cases: &[(&str, Device, Os, Browser, App)] = &[
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.44(0x18002c2d) NetType/WIFI Language/zh_CN",
                Device::Mobile,
                Os::Ios,
                Browser::WebView,
                App::WeChat,
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 wxwork/4.1.10 MicroMessenger/7.0.1 Language/zh",
                Device::Mobile,
                Os::Ios,
                Browser::WebView,
                App::WeCom,
            ),
            (
                "Mozilla/5.0 (Linux; Android 12; HarmonyOS; NOH-AN00; HMSCore 6.12.0.302) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/99.0.4844.88 HuaweiBrowser/14.0.1.303 Mobile Safari/537.36",
                Device::Mobile,
                Os::HarmonyOs,
                Browser::Huawei,
                App::None,
            ),
            (
                "Mozilla/5.0 (Linux; U; Android 13; zh-cn; PGKM10 Build/TP1A.220905.001) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/109.0.5414.86 MQQBrowser/13.9 Mobile Safari/537.36 COVC/046335",
                Device::Mobile,
                Os::Android,
                Browser::QqBrowser,
                App::None,
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
                Device::Mobile,
                Os::Ios,
                Browser::Safari,
                App::None,
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
                Device::Desktop,
                Os::Windows,
                Browser::Edge,
                App::None,
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
                Device::Desktop,
                Os::MacOs,
                Browser::Chrome,
                App::None,
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
                Device::Tablet,
                Os::Ios,
                Browser::Safari,
                App::None,
            ),
            (
                "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36",
                Device::Tablet,
                Os::Android,
                Browser::Chrome,
                App::None,
            ),
            ("curl/8.4.0", Device::Other, Os::Other, Browser::Other, App::None),
        ];
        for &(ua, device, os, browser, app) in cases {
            assert_eq!(
                classify_ua(ua.as_bytes()),
                UaClass {
                    device,
                    os,
                    browser,
                    app
                },
                "{ua}"
            );
        }
    }

    #[test]
    fn real_phones_and_browsers_get_a_known_os_and_device() {
        let all = fixture("ua-browsers.txt");
        let known = all
            .iter()
            .filter(|u| {
                let c = classify_ua(u.as_bytes());
                c.os != Os::Other && c.device != Device::Other && c.browser != Browser::Other
            })
            .count();
        // Every browser of the public sample is recognised, bar a handful of exotic ones.
        assert!(known * 100 >= all.len() * 98, "{known} of {} recognised", all.len());
    }

    #[test]
    fn referer_hosts_are_lower_case_without_www() {
        assert_eq!(referer_host(Some("https://WWW.Example.com:8443/a?b")), "example.com");
        assert_eq!(referer_host(Some("http://m.weibo.cn/")), "m.weibo.cn");
        assert_eq!(referer_host(None), "direct");
        assert_eq!(referer_host(Some("not a url")), "direct");
        assert_eq!(referer_host(Some("/relative")), "direct");
    }
}
