//! Agent classes from the User-Agent and the method.
//!
//! - `preview`: link expanders of SMS and chat apps and mail/carrier security scanners; they fetch a
//!   link the moment it is sent, before any person taps it.
//! - `bot`: crawlers, HTTP libraries, monitoring, empty user agents, and every `HEAD`.
//! - `human`: everything else, including the in-app browsers of WeChat, QQ, Alipay, Douyin, Weibo,
//!   Facebook, Instagram and LINE, which are people reading a message inside the app.
//!
//! Matching is on lower-cased substrings, in-app browser markers first (their user agents often
//! contain a previewer's name too, e.g. `FBAN/FBIOS` versus `facebookexternalhit`). The bot
//! markers are ours plus every pattern of the public `crawler-user-agents` list (`crawlers.txt`).
//!
//! Checked against real traffic (`tests/fixtures/ua-*.txt`, over 3,000 user agents from public
//! datasets and app documentation): every browser, phone and in-app browser is `human`, every
//! previewer `preview`, every crawler `bot` or `preview`, with two documented exceptions (see
//! `CRAWLERS_SEEN_AS_PEOPLE` in the tests). Not covered: WeChat's own link-preview fetcher, whose
//! user agent is not publicly documented.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::LazyLock;

use aho_corasick::AhoCorasick;

use super::event::{HeaderJson, header_json};

/// The class of a requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Agent {
    Human,
    Preview,
    Bot,
}

impl Agent {
    pub fn as_str(self) -> &'static str {
        match self {
            Agent::Human => "human",
            Agent::Preview => "preview",
            Agent::Bot => "bot",
        }
    }
}

/// People, whatever else their user agent says: in-app browsers (even though the app's name appears
/// in the user agent), and phones whose model names contain a bot marker (CUBOT).
const IN_APP: &[&str] = &[
    "snapchat/",
    "cubot",
    "micromessenger",
    "qq/",
    "mqqbrowser",
    "alipayclient",
    "aweme",
    "bytedancewebview",
    "weibo",
    "fban/",
    "fbav/",
    "instagram",
    " line/",
];

const PREVIEW: &[&str] = &[
    "facebookexternalhit",
    "facebookcatalog",
    "meta-externalagent",
    "whatsapp",
    "telegrambot",
    "slackbot",
    "slack-imgproxy",
    "twitterbot",
    "discordbot",
    "linkedinbot",
    "skypeuripreview",
    "teamsbot",
    "microsoftpreview",
    "applebot",
    "iframely",
    "embedly",
    "pinterestbot",
    "redditbot",
    "vkshare",
    "viber",
    "snap url preview",
    "line-poker",
    "linespider",
    "kakaotalk-scrap",
    "wechatbot",
    "mattermost",
    "zoombot",
    "google-pagerenderer",
    "googleimageproxy",
    "proofpoint",
    "mimecast",
    "barracuda",
    "safelinks",
    "symantec",
    "trendmicro",
    "forcepoint",
    "messagelabs",
    "outlook-iOS-preview",
    "yahoomailproxy",
    "bingpreview",
];

const BOT: &[&str] = &[
    "bot",
    "crawler",
    "spider",
    "slurp",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "httpx",
    "go-http-client",
    "java/",
    "okhttp",
    "apache-httpclient",
    "libwww-perl",
    "node-fetch",
    "axios",
    "undici",
    "headlesschrome",
    "phantomjs",
    "lighthouse",
    "pingdom",
    "uptimerobot",
    "statuscake",
    "datadog",
    "newrelic",
    "censys",
    "nmap",
    "masscan",
    "zgrab",
    "scanner",
    "ahrefs",
    "semrush",
    "yandex",
    "baiduspider",
    "bytespider",
    "petalbot",
    "sogou",
    "360spider",
    "wrk",
    "oha/",
    "hey/",
    "k6/",
    "jmeter",
    "gatling",
    "locust",
];

/// Longest user-agent prefix examined.
pub(crate) const MAX_UA_SCAN: usize = 512;

struct Matchers {
    in_app: AhoCorasick,
    preview: AhoCorasick,
    bot: AhoCorasick,
}

/// The markers of the public crawler list `crawler-user-agents` (see the file's header), matched
/// like [`BOT`]: a crawler nobody here has heard of is still a bot.
const CRAWLERS: &str = include_str!("crawlers.txt");

static MATCHERS: LazyLock<Matchers> = LazyLock::new(|| {
    let build = |pats: &[&str]| {
        AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(pats)
            .expect("static patterns compile")
    };
    let crawlers = CRAWLERS.lines().filter(|l| !l.is_empty() && !l.starts_with('#'));
    let bot: Vec<&str> = BOT.iter().copied().chain(crawlers).collect();
    Matchers {
        in_app: build(IN_APP),
        preview: build(PREVIEW),
        bot: build(&bot),
    }
});

/// Distinct user agents remembered per thread; the cache starts over when full.
pub(crate) const UA_CACHE_ENTRIES: usize = 4096;

/// A remembered user agent: its class and its JSON text for events.
struct Known {
    /// The scanned bytes, compared on a hit so a hash collision can never mix two user agents up.
    prefix: Box<[u8]>,
    agent: Agent,
    json: HeaderJson,
}

thread_local! {
    /// xxh3 of a user agent → what is known of it. Phones of one model send one user agent, so a
    /// small per-thread cache answers most taps without scanning or encoding (no lock, no sharing
    /// between threads).
    static UA_CACHE: RefCell<HashMap<u64, Known>> = RefCell::new(HashMap::with_capacity(UA_CACHE_ENTRIES));
}

/// Classifies a request from its method and User-Agent (case-insensitive, no allocation).
#[cfg(test)]
pub(crate) fn classify(is_head: bool, user_agent: Option<&[u8]>) -> Agent {
    classify_tap(is_head, user_agent).0
}

/// Classifies a request from its method and User-Agent (case-insensitive), with the user agent's JSON text for the click event (shared, not copied, when
/// the user agent was seen before).
pub(crate) fn classify_tap(is_head: bool, user_agent: Option<&[u8]>) -> (Agent, Option<HeaderJson>) {
    let Some(raw) = user_agent else {
        return (Agent::Bot, None);
    };
    if is_head {
        // A HEAD is never recorded: no text needed.
        return (Agent::Bot, None);
    }
    if raw.iter().all(u8::is_ascii_whitespace) {
        return (Agent::Bot, Some(header_json(raw)));
    }
    let ua = &raw[..raw.len().min(MAX_UA_SCAN)];
    let key = xxhash_rust::xxh3::xxh3_64(ua);
    let hit = UA_CACHE.with(|c| {
        c.borrow()
            .get(&key)
            .filter(|k| *k.prefix == *ua)
            .map(|k| (k.agent, k.json.clone()))
    });
    if let Some((agent, json)) = hit {
        return (agent, Some(json));
    }
    let agent = scan(ua);
    let json = header_json(raw);
    UA_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= UA_CACHE_ENTRIES {
            c.clear();
        }
        let known = Known {
            prefix: ua.into(),
            agent,
            json: json.clone(),
        };
        c.insert(key, known);
    });
    (agent, Some(json))
}

fn scan(ua: &[u8]) -> Agent {
    let m = &*MATCHERS;
    if m.in_app.is_match(ua) {
        Agent::Human
    } else if m.preview.is_match(ua) {
        Agent::Preview
    } else if m.bot.is_match(ua) {
        Agent::Bot
    } else {
        Agent::Human
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Agent::{Bot, Human, Preview};

    /// Real user agents, each with the class it must get.
    const TABLE: &[(&str, Agent)] = &[
        // Phones and desktops.
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
            Human,
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8 Pro) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36",
            Human,
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
            Human,
        ),
        (
            "Mozilla/5.0 (Linux; U; Android 12; zh-cn; 2201123C Build/SKQ1.211006.001) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/100.0.4896.127 Mobile Safari/537.36 XiaoMi/MiuiBrowser/17.1.80",
            Human,
        ),
        (
            "Mozilla/5.0 (Linux; Android 12; HarmonyOS; NOH-AN00) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/99.0.4844.88 HuaweiBrowser/14.0.2.311 Mobile Safari/537.36",
            Human,
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
            Human,
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
            Human,
        ),
        (
            "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
            Human,
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1",
            Human,
        ),
        (
            "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36 UCBrowser/13.4.0.1306",
            Human,
        ),
        // In-app browsers: people reading a message inside an app.
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.42(0x18002a2f) NetType/WIFI Language/zh_CN",
            Human,
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; V2227A Build/TP1A.220624.014; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/107.0.5304.141 Mobile Safari/537.36 XWEB/5235 MMWEBSDK/20230805 MMWEBID/2585 MicroMessenger/8.0.42.2460(0x28002A58) WeChat/arm64 Weixin NetType/WIFI Language/zh_CN ABI/arm64",
            Human,
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 16_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 QQ/8.9.68.622 V1_IPH_SQ_8.9.68_1_APP_A Pixel/1170 MiniAppEnable SimpleUISwitch/0 StudyMode/0 CurrentMode/0 CurrentFontScale/1.000000 QQTheme/1000 AppId/537165826 Core/WKWebView Device/Apple(iPhone 13) NetType/WIFI QBWebViewType/1 WKType/1",
            Human,
        ),
        (
            "Mozilla/5.0 (Linux; U; Android 12; zh-CN; M2102J2SC Build/SKQ1.211006.001) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/69.0.3497.100 UWS/3.22.2.59 Mobile Safari/537.36 AliApp(AP/10.5.36.8000) AlipayClient/10.5.36.8000 Language/zh-Hans useStatusBar/true isConcaveScreen/true Region/CN NebulaSDK/1.8.100112 Nebula AlipayDefined(nt:WIFI,ws:393|0|2.75) AliApp(AP/10.5.36.8000)",
            Human,
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; 22081212C Build/TKQ1.220829.002; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/110.0.5481.153 Mobile Safari/537.36 aweme_270200 JsSdk/1.0 NetType/WIFI Channel/xiaomi_1128_64 app_version/27.2.0 ByteLocale/zh-CN Region/CN AppSkin/white AppTheme/light BytedanceWebview/d8a21c6",
            Human,
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Weibo (iPhone14,2__weibo__13.8.2__iphone__os16.6)",
            Human,
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBDV/iPhone15,2;FBMD/iPhone;FBSN/iOS;FBSV/17.1;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]",
            Human,
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; SM-G991B Build/UP1A.231005.007; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/119.0.6045.193 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/443.0.0.35.117;]",
            Human,
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 307.0.0.34.111 (iPhone15,3; iOS 17_0; en_US; en; scale=3.00; 1290x2796; 532277345)",
            Human,
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 16_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Safari Line/13.19.0",
            Human,
        ),
        // Link previewers of SMS and chat apps, and mail security scanners.
        (
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            Preview,
        ),
        ("facebookexternalhit/1.1;line-poker/1.0", Preview),
        ("WhatsApp/2.23.24.76 A", Preview),
        ("WhatsApp/2.2348.50 i", Preview),
        ("TelegramBot (like TwitterBot)", Preview),
        ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", Preview),
        ("Twitterbot/1.0", Preview),
        (
            "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
            Preview,
        ),
        (
            "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
            Preview,
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, like Gecko) Version/9.0.1 Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0",
            Preview,
        ),
        (
            "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5 skype-url-preview@microsoft.com",
            Preview,
        ),
        (
            "Mozilla/5.0 (compatible; Applebot/0.1; +http://www.apple.com/go/applebot)",
            Preview,
        ),
        ("Viber/20.6.0 CFNetwork/1408.0.4 Darwin/22.5.0", Preview),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/96.0.4664.110 Safari/537.36 Proofpoint",
            Preview,
        ),
        (
            "Mozilla/5.0 (compatible; Google-PageRenderer Google (+https://developers.google.com/+/web/snippet/))",
            Preview,
        ),
        // Crawlers, libraries, monitors, scanners, load generators.
        (
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            Bot,
        ),
        (
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            Bot,
        ),
        (
            "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
            Bot,
        ),
        (
            "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)",
            Bot,
        ),
        (
            "Sogou web spider/4.0(+http://www.sogou.com/docs/help/webmasters.htm#07)",
            Bot,
        ),
        ("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", Bot),
        ("curl/8.4.0", Bot),
        ("Wget/1.21.3", Bot),
        ("python-requests/2.31.0", Bot),
        ("Go-http-client/1.1", Bot),
        ("okhttp/4.12.0", Bot),
        ("Apache-HttpClient/4.5.14 (Java/17.0.9)", Bot),
        ("axios/1.6.2", Bot),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.71 Safari/537.36",
            Bot,
        ),
        (
            "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
            Bot,
        ),
        ("Mozilla/5.0 zgrab/0.x", Bot),
        (
            "Mozilla/5.0 (compatible; CensysInspect/1.1; +https://about.censys.io/)",
            Bot,
        ),
        (
            "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
            Bot,
        ),
        ("oha/1.4.1", Bot),
    ];

    #[test]
    fn classifies_real_user_agents() {
        assert!(TABLE.len() >= 40);
        // Twice: the second round is answered from the per-thread cache.
        for _ in 0..2 {
            for (ua, want) in TABLE {
                assert_eq!(classify(false, Some(ua.as_bytes())), *want, "{ua}");
            }
        }
    }

    #[test]
    fn empty_agents_and_head_requests_are_bots() {
        assert_eq!(classify(false, None), Bot);
        assert_eq!(classify(false, Some(b"  ")), Bot);
        assert_eq!(classify(true, Some(TABLE[0].0.as_bytes())), Bot);
    }

    /// Crawler-list entries classified as people, on purpose:
    /// - a fetcher that sends Instagram's in-app user agent word for word (`NV/1` at the end) is
    ///   indistinguishable from a person in Instagram's browser, and in-app markers win;
    /// - `Silk/1.0` of slider.com: matching `silk/` would count Amazon's Silk browser as a bot.
    const CRAWLERS_SEEN_AS_PEOPLE: &[&str] = &[
        "Mozilla/5.0 (Linux; Android 15; CPH2557 Build/AP3A.240617.008; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/142.0.7444.142 Mobile Safari/537.36 Instagram 406.0.0.58.159 Android (35/15; 480dpi; 1080x2400; OPPO; CPH2557; OP573DL1; mt6833; en_MY; 822918295; IABMV/1) NV/1",
        "Silk/1.0 Also seen as: silk/1.0 (+http://www.slider.com/silk.htm)/3.7",
    ];

    /// The lines of a corpus file in `tests/fixtures/` (comments and blanks skipped).
    fn corpus(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
    }

    /// Classifies every line of `lines`, returning those not in `want`.
    fn misclassified<'a>(lines: &[&'a str], want: &[Agent]) -> Vec<(Agent, &'a str)> {
        lines
            .iter()
            .map(|ua| (classify(false, Some(ua.as_bytes())), *ua))
            .filter(|(got, _)| !want.contains(got))
            .collect()
    }

    #[test]
    fn a_public_corpus_of_real_user_agents_classifies_as_labelled() {
        let browsers = corpus(include_str!("../../tests/fixtures/ua-browsers.txt"));
        let in_app = corpus(include_str!("../../tests/fixtures/ua-in-app.txt"));
        let crawlers = corpus(include_str!("../../tests/fixtures/ua-crawlers.txt"));
        let previewers = corpus(include_str!("../../tests/fixtures/ua-previewers.txt"));
        assert!(browsers.len() + in_app.len() + crawlers.len() + previewers.len() >= 2000);
        let people = misclassified(&browsers, &[Human]);
        assert!(people.is_empty(), "{} browsers not human: {people:#?}", people.len());
        let people = misclassified(&in_app, &[Human]);
        assert!(
            people.is_empty(),
            "{} in-app browsers not human: {people:#?}",
            people.len()
        );
        let machines = misclassified(&crawlers, &[Bot, Preview]);
        let known: Vec<_> = machines
            .iter()
            .filter(|(_, ua)| !CRAWLERS_SEEN_AS_PEOPLE.contains(ua))
            .collect();
        assert!(known.is_empty(), "{} crawlers seen as people: {known:#?}", known.len());
        let previews = misclassified(&previewers, &[Preview]);
        assert!(
            previews.is_empty(),
            "{} previewers not previews: {previews:#?}",
            previews.len()
        );
    }
}
