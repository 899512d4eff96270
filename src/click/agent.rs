//! Agent classes from the User-Agent and the method.
//!
//! - `preview`: link expanders of SMS and chat apps and mail/carrier security scanners; they fetch a
//!   link the moment it is sent, before any person taps it.
//! - `bot`: crawlers, HTTP libraries, monitoring, empty user agents, and every `HEAD`.
//! - `human`: everything else, including the in-app browsers of WeChat, QQ, Alipay, Douyin, Weibo,
//!   Facebook, Instagram and LINE, which are people reading a message inside the app.
//!
//! Matching is on lower-cased substrings, in-app browser markers first (their user agents often
//! contain a previewer's name too, e.g. `FBAN/FBIOS` versus `facebookexternalhit`).

use std::sync::LazyLock;

use aho_corasick::AhoCorasick;

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

/// In-app browsers: people, even though the app's name appears in the user agent.
const IN_APP: &[&str] = &[
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
    "snapchat",
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
pub const MAX_UA_SCAN: usize = 512;

struct Matchers {
    in_app: AhoCorasick,
    preview: AhoCorasick,
    bot: AhoCorasick,
}

static MATCHERS: LazyLock<Matchers> = LazyLock::new(|| {
    let build = |pats: &[&str]| {
        AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(pats)
            .expect("static patterns compile")
    };
    Matchers {
        in_app: build(IN_APP),
        preview: build(PREVIEW),
        bot: build(BOT),
    }
});

/// Classifies a request from its method and User-Agent (case-insensitive, no allocation).
pub fn classify(is_head: bool, user_agent: Option<&[u8]>) -> Agent {
    if is_head {
        return Agent::Bot;
    }
    let Some(ua) = user_agent.filter(|u| !u.iter().all(u8::is_ascii_whitespace)) else {
        return Agent::Bot;
    };
    let ua = &ua[..ua.len().min(MAX_UA_SCAN)];
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

    #[test]
    fn classifies_common_agents() {
        let cases = [
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
                Agent::Human,
            ),
            (
                "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36 MicroMessenger/8.0.43",
                Agent::Human,
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 16_0 like Mac OS X) [FBAN/FBIOS;FBAV/400.0]",
                Agent::Human,
            ),
            (
                "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
                Agent::Preview,
            ),
            ("WhatsApp/2.23.20.0 A", Agent::Preview),
            ("TelegramBot (like TwitterBot)", Agent::Preview),
            (
                "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
                Agent::Preview,
            ),
            (
                "Googlebot/2.1 (+http://www.google.com/bot.html)",
                Agent::Bot,
            ),
            ("curl/8.4.0", Agent::Bot),
            ("python-requests/2.31.0", Agent::Bot),
        ];
        for (ua, want) in cases {
            assert_eq!(classify(false, Some(ua.as_bytes())), want, "{ua}");
        }
        assert_eq!(classify(false, None), Agent::Bot);
        assert_eq!(classify(false, Some(b"  ")), Agent::Bot);
        assert_eq!(classify(true, Some(b"Mozilla/5.0 (iPhone)")), Agent::Bot);
    }
}
