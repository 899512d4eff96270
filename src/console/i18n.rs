//! The console's two languages: Simplified Chinese and English.
//!
//! The language comes from `?lang=` (remembered in a cookie), else the cookie, else the first of
//! `zh*`/`en*` in `Accept-Language` by quality, else English. Every string is in [`STRINGS`]; a test
//! checks that each key a template asks for is there.

use http::HeaderMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    En,
    Zh,
}

/// The cookie remembering a chosen language.
pub(crate) const LANG_COOKIE: &str = "lg_lang";

impl Lang {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "en" => Some(Self::En),
            "zh" | "zh-CN" | "zh-Hans" => Some(Self::Zh),
            _ => None,
        }
    }

    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Zh => "zh-CN",
        }
    }

    /// The language a request asks for: `?lang=`, the cookie, then `Accept-Language`.
    pub(crate) fn of(query_lang: Option<&str>, headers: &HeaderMap) -> Self {
        if let Some(l) = query_lang.and_then(Self::parse) {
            return l;
        }
        if let Some(l) = super::cookie(headers, LANG_COOKIE).and_then(Self::parse) {
            return l;
        }
        let accept = headers
            .get(http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        Self::from_accept_language(accept)
    }

    /// The best of zh and en in an `Accept-Language` value (RFC 9110 §12.5.4); English when neither.
    pub(crate) fn from_accept_language(value: &str) -> Self {
        let mut best: Option<(f32, usize, Self)> = None;
        for (i, item) in value.split(',').enumerate() {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let lang = if tag == "zh" || tag.starts_with("zh-") {
                Self::Zh
            } else if tag == "en" || tag.starts_with("en-") {
                Self::En
            } else {
                continue;
            };
            // Higher quality wins; among equals, the earlier.
            if q > 0.0 && best.is_none_or(|(bq, _, _)| q > bq) {
                best = Some((q, i, lang));
            }
        }
        best.map_or(Self::En, |(_, _, l)| l)
    }
}

/// Strings of one language, for the templates (`t.s` with a key of [`STRINGS`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tr(pub Lang);

impl Tr {
    /// The string `key` in this language (`?` when missing; a test keeps none missing).
    pub(crate) fn s(&self, key: &str) -> &'static str {
        for (k, en, zh) in STRINGS {
            if *k == key {
                return if self.0 == Lang::Zh { zh } else { en };
            }
        }
        "?"
    }

    pub(crate) fn code(&self) -> &'static str {
        self.0.code()
    }
}

/// Every string: key, English, Simplified Chinese.
pub(crate) const STRINGS: &[(&str, &str, &str)] = &[
    ("app", "linkgate console", "linkgate 控制台"),
    ("campaigns", "Campaigns", "营销活动"),
    ("campaign", "Campaign", "活动"),
    ("leads", "Leads", "线索"),
    ("links", "Links", "链接"),
    ("link", "Link", "链接"),
    ("partners", "Partners", "合作伙伴"),
    ("webhooks", "Webhooks", "Webhook"),
    ("sign_in", "Sign in", "登录"),
    ("sign_out", "Sign out", "退出"),
    ("api_key", "API key", "API 密钥"),
    (
        "sign_in_help",
        "Sign in with an API key. The console keeps it in a cookie-signed session, never in the page.",
        "使用 API 密钥登录。控制台仅保存签名会话，页面中不含密钥。",
    ),
    ("bad_key", "That key is not valid.", "密钥无效。"),
    ("other_lang", "中文", "English"),
    ("sent", "Sent", "已发送"),
    ("delivered", "Delivered", "已送达"),
    ("failed", "Failed", "失败"),
    ("pending", "Pending", "待回执"),
    ("tapped", "Tapped", "已点击"),
    ("orders", "Orders", "订单"),
    ("revenue", "Revenue", "销售额"),
    ("clicks", "Clicks", "点击"),
    ("human_clicks", "Human clicks", "真人点击"),
    ("visitors", "Visitors", "访客"),
    ("name", "Name", "名称"),
    ("funnel", "Funnel", "转化漏斗"),
    ("rate", "Rate", "比率"),
    ("of_sent", "of sent", "占发送"),
    ("of_delivered", "of delivered", "占送达"),
    ("first_tap", "First tap after delivery", "送达后首次点击"),
    ("median", "median", "中位数"),
    ("p90", "90th percentile", "90 分位"),
    ("seconds", "s", "秒"),
    ("taps_over_time", "Taps over time", "点击趋势"),
    ("hourly", "hourly", "按小时"),
    ("daily", "daily", "按天"),
    ("time", "Time", "时间"),
    ("by_app", "By app", "按应用"),
    ("by_device", "By device", "按设备"),
    ("by_province", "By province", "按省份"),
    ("by_kind", "By kind", "按类型"),
    ("leaderboard", "Owners' leaderboard", "负责人排行榜"),
    ("owner", "Owner", "负责人"),
    ("export_csv", "Export CSV", "导出 CSV"),
    ("export_sms_csv", "Export CSV for the SMS platform", "导出短信平台 CSV"),
    ("code", "Code", "短码"),
    ("recipient", "Recipient", "接收人"),
    ("destination", "Destination", "目标地址"),
    ("state", "State", "状态"),
    ("active", "active", "启用"),
    ("disabled", "disabled", "已停用"),
    ("created", "Created", "创建时间"),
    ("tapped_at", "Tapped at", "点击时间"),
    ("converted", "Converted", "已成交"),
    ("yes", "yes", "是"),
    ("no", "no", "否"),
    ("filter", "Filter", "筛选"),
    ("from", "From", "从"),
    ("to", "To", "至"),
    ("next_page", "Next page", "下一页"),
    ("search", "Search", "搜索"),
    (
        "search_help",
        "A code, or a campaign and a recipient.",
        "输入短码，或活动与接收人。",
    ),
    ("qr_code", "QR code", "二维码"),
    ("download_png", "Download PNG", "下载 PNG"),
    ("edit", "Edit", "编辑"),
    ("save", "Save", "保存"),
    ("disable", "Disable", "停用"),
    ("enable", "Enable", "启用"),
    ("kind", "Kind", "类型"),
    ("parent", "Parent", "上级"),
    ("partner", "Partner", "合作伙伴"),
    ("level", "Level", "层级"),
    (
        "commission_later",
        "Commission per partner comes with the commission ledger; orders and revenue credited to each partner are shown.",
        "佣金明细将随佣金台账提供；此处显示计入各合作伙伴的订单与销售额。",
    ),
    ("url", "URL", "地址"),
    ("events", "Events", "事件"),
    ("deliveries", "Recent deliveries", "最近投递"),
    ("status", "Status", "状态"),
    ("attempts", "Attempts", "尝试次数"),
    ("latency", "Latency", "耗时"),
    ("retry", "Retry", "重试"),
    (
        "retry_help",
        "Retrying a delivery also re-enables a disabled webhook.",
        "重试投递也会重新启用已停用的 Webhook。",
    ),
    ("none_yet", "Nothing yet.", "暂无数据。"),
    ("not_for_key", "Not available with this key", "此密钥无权查看"),
    ("not_found", "Not found", "未找到"),
    ("error", "Something went wrong", "出错了"),
    ("last_30d", "Last 30 days", "最近 30 天"),
    ("total", "Total", "合计"),
    ("saved", "Saved.", "已保存。"),
    ("queued", "Queued again.", "已重新排队。"),
    ("read_only", "This key can only read.", "此密钥为只读。"),
    ("store_key", "Limited to owner", "仅限负责人"),
    ("range", "Range", "时间范围"),
    ("skip", "Skip to content", "跳到正文"),
    ("main_nav", "Main", "主导航"),
    ("language", "Language", "语言"),
    ("chart_label", "Chart of the table below", "下表的图表"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_the_best_of_zh_and_en() {
        assert_eq!(Lang::from_accept_language("zh-CN,zh;q=0.9,en;q=0.8"), Lang::Zh);
        assert_eq!(Lang::from_accept_language("en-US,en;q=0.9,zh-CN;q=0.8"), Lang::En);
        assert_eq!(Lang::from_accept_language("fr-FR, zh-TW;q=0.5, en;q=0.7"), Lang::En);
        assert_eq!(Lang::from_accept_language("de, zh;q=0.3"), Lang::Zh);
        assert_eq!(Lang::from_accept_language("zh;q=0, en;q=0.1"), Lang::En);
        assert_eq!(Lang::from_accept_language(""), Lang::En);
        assert_eq!(Lang::from_accept_language("ja;q=abc,,;;=,"), Lang::En);
    }

    #[test]
    fn every_key_is_unique_and_every_key_asked_for_exists() {
        let mut keys: Vec<&str> = STRINGS.iter().map(|(k, _, _)| *k).collect();
        keys.sort_unstable();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n, "a key is listed twice");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/console");
        let mut files: Vec<_> = std::fs::read_dir(root.join("templates"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.extend(
            std::fs::read_dir(&root)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_file()),
        );
        let mut used = 0;
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            for part in text.split("t.s(\"").skip(1) {
                let key = part.split('"').next().unwrap();
                assert!(
                    keys.binary_search(&key).is_ok(),
                    "{}: no string {key:?}",
                    path.display()
                );
                used += 1;
            }
        }
        assert!(used > 100, "the pages ask for {used} strings");
    }

    proptest::proptest! {
        #[test]
        fn any_accept_language_value_picks_a_language(v in "\\PC{0,60}") {
            let _ = Lang::from_accept_language(&v);
        }
    }
}
