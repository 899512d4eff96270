//! The console's pages: each reads what it shows through the API ([`Ctx::api`]) and lays it out
//! as sections ([`views`]).

use std::collections::{HashMap, HashSet};

use askama::Template;
use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::assets::{self, Links};
use super::i18n::{Lang, Tr};
use super::views::{Card, Cell, Row, Section, Table, count, int, list, money, pct, text, when};
use super::{Ctx, enc, html, redirect};
use crate::body::Body;
use crate::config::Scope;
use crate::error::ApiError;

/// The frame every page shares: language, navigation, the session's form token.
pub(crate) struct Frame {
    pub t: Tr,
    pub title: String,
    pub nav: &'static str,
    /// The session's form token; empty when signed out (no navigation then).
    pub csrf: String,
    pub owner: Option<String>,
    pub lang_href: String,
    pub other_lang: &'static str,
    pub assets: Links,
    pub charts: bool,
    pub notice: Option<&'static str>,
}

impl Frame {
    fn new(t: Tr, title: impl Into<String>, path: &str, query: &[(String, String)]) -> Self {
        let other = if t.0 == Lang::Zh { Lang::En } else { Lang::Zh };
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in query.iter().filter(|(k, _)| k != "lang" && k != "done") {
            q.append_pair(k, v);
        }
        q.append_pair("lang", if other == Lang::Zh { "zh" } else { "en" });
        Self {
            t,
            title: title.into(),
            nav: "",
            csrf: String::new(),
            owner: None,
            lang_href: format!("{path}?{}", q.finish()),
            other_lang: other.code(),
            assets: assets::links(),
            charts: false,
            notice: None,
        }
    }

    fn of(ctx: &Ctx<'_>, title: impl Into<String>, nav: &'static str) -> Self {
        let mut f = Self::new(ctx.t, title, &ctx.path, &ctx.query);
        f.nav = nav;
        f.csrf = ctx.session.csrf(ctx.app);
        f.owner = ctx.key().owner.clone();
        f.notice = match ctx.param("done") {
            Some("saved") => Some(ctx.t.s("saved")),
            Some("queued") => Some(ctx.t.s("queued")),
            _ => None,
        };
        f
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    f: Frame,
    error: Option<String>,
    next: String,
}

pub(crate) struct Field {
    pub name: &'static str,
    pub label: &'static str,
    pub kind: &'static str,
    pub value: String,
}

pub(crate) struct Form {
    pub method: &'static str,
    pub action: String,
    pub fields: Vec<Field>,
    pub submit: &'static str,
    pub help: &'static str,
}

#[derive(Template)]
#[template(path = "page.html")]
struct Page {
    f: Frame,
    subtitle: String,
    form: Option<Form>,
    error: Option<String>,
    /// A QR image: its source, alternative text and download link.
    qr: Option<(String, String, String)>,
    /// Buttons posting `do=<value>` to an action: (action, value, label).
    buttons: Vec<(String, &'static str, &'static str)>,
    sections: Vec<Section>,
}

impl Page {
    fn new(f: Frame) -> Self {
        Self {
            f,
            subtitle: String::new(),
            form: None,
            error: None,
            qr: None,
            buttons: Vec::new(),
            sections: Vec::new(),
        }
    }

    fn render_with(self, status: StatusCode) -> Response<Body> {
        match self.render() {
            Ok(s) => html(status, s),
            Err(e) => {
                tracing::error!(error = %e, "console page failed to render");
                html(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "<!doctype html><title>error</title>".into(),
                )
            }
        }
    }
}

pub(crate) fn login(t: Tr, next: &str, error: Option<String>, status: StatusCode) -> Response<Body> {
    let page = LoginPage {
        f: Frame::new(t, t.s("sign_in"), "/console/login", &[]),
        error,
        next: next.to_string(),
    };
    match page.render() {
        Ok(s) => html(status, s),
        Err(_) => html(StatusCode::INTERNAL_SERVER_ERROR, String::new()),
    }
}

fn message_page(t: Tr, status: StatusCode, title: &str, message: String) -> Response<Body> {
    let mut p = Page::new(Frame::new(t, title, "/console", &[]));
    p.error = Some(message);
    p.render_with(status)
}

pub(crate) fn forbidden(t: Tr) -> Response<Body> {
    message_page(
        t,
        StatusCode::FORBIDDEN,
        t.s("error"),
        "This request did not come from a console page of this session.".into(),
    )
}

pub(crate) fn not_found(t: Tr) -> Response<Body> {
    message_page(t, StatusCode::NOT_FOUND, t.s("not_found"), t.s("not_found").into())
}

pub(crate) fn error(t: Tr, e: &ApiError) -> Response<Body> {
    message_page(t, e.status(), t.s("error"), e.message.clone())
}

/// A page of a signed-in session.
pub(crate) async fn get(ctx: &Ctx<'_>, segs: &[&str]) -> Response<Body> {
    match segs {
        [] => campaigns(ctx).await,
        ["campaigns", id] => campaign(ctx, id).await,
        ["campaigns", id, "links.csv"] => csv(ctx, format!("/v1/links?campaign_id={}&format=csv", enc(id))).await,
        ["leads"] => leads(ctx).await,
        ["leads.csv"] => csv(ctx, format!("/v1/leads?format=csv&{}", lead_filter(ctx))).await,
        ["links"] => search(ctx).await,
        ["links", code] => link(ctx, code, None).await,
        ["links", code, "qr.svg"] => qr(ctx, code, "svg").await,
        ["links", code, "qr.png"] => qr(ctx, code, "png").await,
        ["partners"] => partners(ctx).await,
        ["webhooks"] => webhooks(ctx).await,
        _ => not_found(ctx.t),
    }
}

/// A form of a signed-in session (its token already checked).
pub(crate) async fn post(ctx: &Ctx<'_>, segs: &[&str], form: &[(String, String)]) -> Response<Body> {
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    match segs {
        ["links", code] => {
            let body = match field("do") {
                Some("disable") => json!({"disabled": true}),
                Some("enable") => json!({"disabled": false}),
                _ => json!({"destination": field("destination").unwrap_or("")}),
            };
            match ctx
                .api(Method::PATCH, format!("/v1/links/{}", enc(code)), Some(&body))
                .await
            {
                Ok(_) => redirect(format!("/console/links/{}?done=saved", enc(code))),
                Err(e) => link(ctx, code, Some(e)).await,
            }
        }
        ["webhooks", id, "deliveries", did, "retry"] => {
            let uri = format!("/v1/webhooks/{}/deliveries/{}/retry", enc(id), enc(did));
            match ctx.api(Method::POST, uri, None).await {
                Ok(_) => redirect("/console/webhooks?done=queued"),
                Err(e) => error(ctx.t, &e),
            }
        }
        _ => not_found(ctx.t),
    }
}

async fn csv(ctx: &Ctx<'_>, uri: String) -> Response<Body> {
    match ctx.api_raw(Method::GET, uri, None).await {
        Ok(r) => r,
        Err(e) => error(ctx.t, &e),
    }
}

/// The funnel's cards.
fn funnel_cards(t: Tr, f: &Value) -> Vec<Card> {
    let rates = f.get("rates").cloned().unwrap_or(Value::Null);
    let of = |r: &str, base: &str| format!("{} {}", pct(&rates[r]), t.s(base));
    vec![
        Card::new(t.s("links"), count(int(f, "links"))),
        Card::new(t.s("sent"), count(int(f, "sent"))),
        Card::new(t.s("delivered"), count(int(f, "delivered"))).under(of("delivered_per_sent", "of_sent")),
        Card::new(t.s("failed"), count(int(f, "failed"))),
        Card::new(t.s("pending"), count(int(f, "pending"))),
        Card::new(t.s("tapped"), count(int(f, "tapped"))).under(of("tapped_per_delivered", "of_delivered")),
        Card::new(t.s("leads"), count(int(f, "leads"))),
        Card::new(t.s("orders"), count(int(f, "conversions"))).under(of("conversions_per_delivered", "of_delivered")),
        Card::new(t.s("revenue"), money(int(f, "revenue"))),
    ]
}

/// `/console`: every campaign with its funnel.
async fn campaigns(ctx: &Ctx<'_>) -> Response<Body> {
    let t = ctx.t;
    let mut page = Page::new(Frame::of(ctx, t.s("campaigns"), "campaigns"));
    let known = match ctx.api(Method::GET, "/v1/campaigns", None).await {
        Ok(v) => v,
        Err(e) => {
            page.sections.push(Section::failed(t.s("campaigns"), t, &e));
            return page.render_with(StatusCode::OK);
        }
    };
    let ids: Vec<(String, String)> = list(&known, "campaigns")
        .iter()
        .map(|c| (text(c, "id").to_string(), text(c, "name").to_string()))
        .collect();
    let funnels = futures_util::future::join_all(
        ids.iter()
            .map(|(id, _)| ctx.api(Method::GET, format!("/v1/campaigns/{}/funnel", enc(id)), None)),
    )
    .await;
    let mut table = Table::new(
        t.s("campaigns"),
        &[
            (t.s("campaign"), false),
            (t.s("sent"), true),
            (t.s("delivered"), true),
            (t.s("tapped"), true),
            (t.s("leads"), true),
            (t.s("orders"), true),
            (t.s("revenue"), true),
        ],
    );
    for ((id, name), f) in ids.iter().zip(funnels) {
        let label = if name.is_empty() {
            id.clone()
        } else {
            format!("{name} ({id})")
        };
        let mut cells = vec![Cell::link(label, format!("/console/campaigns/{}", enc(id)))];
        match f {
            Ok(f) => {
                for k in ["sent", "delivered", "tapped", "leads", "conversions"] {
                    cells.push(Cell::num(int(&f, k)));
                }
                cells.push(Cell::money(int(&f, "revenue")));
            }
            Err(_) => cells.extend((0..6).map(|_| Cell::text("–"))),
        }
        table.rows.push(Row { cells, point: None });
    }
    let mut s = Section::new(t.s("funnel"));
    s.table = Some(table);
    page.sections.push(s);
    page.render_with(StatusCode::OK)
}

/// The spans a campaign page offers.
const RANGES: [&str; 4] = ["24h", "7d", "30d", "90d"];

/// `/console/campaigns/{id}`: funnel, taps over time, breakdowns, leaderboard, links.
async fn campaign(ctx: &Ctx<'_>, id: &str) -> Response<Body> {
    let t = ctx.t;
    let cid = enc(id);
    // Only the spans offered; anything else (it goes into the API's query) is the default.
    let range = ctx.param("range").filter(|r| RANGES.contains(r)).unwrap_or("30d");
    let cursor = ctx
        .param("cursor")
        .map(|c| format!("&cursor={}", enc(c)))
        .unwrap_or_default();
    let (funnel, series, leaders, links) = tokio::join!(
        ctx.api(Method::GET, format!("/v1/campaigns/{cid}/funnel"), None),
        ctx.api(
            Method::GET,
            format!("/v1/analytics?campaign_id={cid}&interval={range}&group_by=timeseries"),
            None
        ),
        ctx.api(
            Method::GET,
            format!("/v1/campaigns/{cid}/leaderboard?by=leads&limit=20"),
            None
        ),
        ctx.api(
            Method::GET,
            format!("/v1/links?campaign_id={cid}&limit=50{cursor}"),
            None
        ),
    );
    let dims = [
        ("app", "by_app"),
        ("device", "by_device"),
        ("province", "by_province"),
        ("kind", "by_kind"),
    ];
    let breakdowns = futures_util::future::join_all(dims.iter().map(|(d, _)| {
        ctx.api(
            Method::GET,
            format!("/v1/analytics?campaign_id={cid}&interval={range}&group_by={d}&limit=10"),
            None,
        )
    }))
    .await;
    // Hourly for a campaign's first days, daily after: a default span whose taps all fall in
    // the last three days is shown again by the hour.
    let mut shown = range;
    let series = match series {
        Ok(v) if ctx.param("range").is_none() && recent_only(&v) => {
            shown = "72h";
            let start = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(72);
            let uri = format!(
                "/v1/analytics?campaign_id={cid}&start={}&group_by=timeseries&granularity=hour",
                enc(&start.to_string())
            );
            ctx.api(Method::GET, uri, None).await
        }
        other => other,
    };
    let mut f = Frame::of(ctx, format!("{} {id}", t.s("campaign")), "campaigns");
    f.charts = true;
    let mut page = Page::new(f);

    match funnel {
        Ok(v) => {
            let mut s = Section::new(t.s("funnel"));
            s.cards = funnel_cards(t, &v);
            let first = &v["first_tap_after_delivery"];
            if let (Some(p50), Some(p90)) = (first["p50_seconds"].as_i64(), first["p90_seconds"].as_i64()) {
                s.note = Some(format!(
                    "{}: {} {p50} {}, {} {p90} {}",
                    t.s("first_tap"),
                    t.s("median"),
                    t.s("seconds"),
                    t.s("p90"),
                    t.s("seconds")
                ));
            }
            page.sections.push(s);
        }
        Err(e) => page.sections.push(Section::failed(t.s("funnel"), t, &e)),
    }

    page.sections.push(match series {
        Ok(v) => {
            let mut s = series_section(
                t,
                &ctx.app.rules.tz,
                &v,
                shown,
                &[("visitors", "visitors"), ("leads", "leads")],
            );
            s.links = RANGES
                .iter()
                .map(|r| (r.to_string(), format!("/console/campaigns/{cid}?range={r}")))
                .collect();
            s
        }
        Err(e) => Section::failed(t.s("taps_over_time"), t, &e),
    });

    for ((_, title), b) in dims.iter().zip(breakdowns) {
        match b {
            Ok(v) => {
                let mut s = Section::new(t.s(title));
                let mut table = Table::new(
                    format!("{} · {range}", t.s(title)),
                    &[
                        ("", false),
                        (t.s("clicks"), true),
                        (t.s("leads"), true),
                        (t.s("orders"), true),
                    ],
                );
                table.head[0].text = t.s(title).to_string();
                for r in list(&v, "rows") {
                    table.rows.push(Row {
                        cells: vec![
                            Cell::text(text(r, "key")),
                            Cell::num(int(r, "clicks")),
                            Cell::num(int(r, "leads")),
                            Cell::num(int(r, "conversions")),
                        ],
                        point: None,
                    });
                }
                s.table = Some(table);
                page.sections.push(s);
            }
            Err(e) => page.sections.push(Section::failed(t.s(title), t, &e)),
        }
    }

    match leaders {
        Ok(v) => {
            let mut s = Section::new(t.s("leaderboard"));
            let mut table = Table::new(
                t.s("leaderboard"),
                &[
                    (t.s("owner"), false),
                    (t.s("leads"), true),
                    (t.s("orders"), true),
                    (t.s("revenue"), true),
                ],
            );
            for r in list(&v, "owners") {
                let owner = text(r, "owner_id");
                table.rows.push(Row {
                    cells: vec![
                        Cell::link(
                            owner,
                            format!("/console/leads?campaign_id={cid}&owner_id={}", enc(owner)),
                        ),
                        Cell::num(int(r, "leads")),
                        Cell::num(int(r, "conversions")),
                        Cell::money(int(r, "revenue")),
                    ],
                    point: None,
                });
            }
            s.table = Some(table);
            page.sections.push(s);
        }
        Err(e) => page.sections.push(Section::failed(t.s("leaderboard"), t, &e)),
    }

    match links {
        Ok(v) => {
            let mut s = Section::new(t.s("links"));
            s.table = Some(links_table(t, list(&v, "links")));
            s.links.push((
                t.s("export_sms_csv").to_string(),
                format!("/console/campaigns/{cid}/links.csv"),
            ));
            if let Some(next) = v["next_cursor"].as_str() {
                s.links.push((
                    t.s("next_page").to_string(),
                    format!("/console/campaigns/{cid}?range={range}&cursor={}", enc(next)),
                ));
            }
            page.sections.push(s);
        }
        Err(e) => page.sections.push(Section::failed(t.s("links"), t, &e)),
    }
    page.render_with(StatusCode::OK)
}

/// A `timeseries` answer of the analytics API as a table of clicks and the `extra` columns
/// (string key, field) over the span `shown`, drawn as a chart of clicks.
fn series_section(t: Tr, tz: &jiff::tz::TimeZone, v: &Value, shown: &str, extra: &[(&str, &str)]) -> Section {
    let every = if text(v, "granularity") == "hour" {
        t.s("hourly")
    } else {
        t.s("daily")
    };
    let mut s = Section::new(format!("{} ({every})", t.s("taps_over_time")));
    let mut head = vec![(t.s("time"), false), (t.s("clicks"), true)];
    head.extend(extra.iter().map(|(key, _)| (t.s(key), true)));
    let mut table = Table::new(format!("{} · {shown}", t.s("taps_over_time")), &head);
    table.chart = Some((t.s("chart_label").to_string(), t.s("clicks").to_string()));
    for r in list(v, "rows") {
        let at = r["start"].as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok());
        let mut cells = vec![Cell::text(when(&r["start"], tz)), Cell::num(int(r, "clicks"))];
        cells.extend(extra.iter().map(|(_, field)| Cell::num(int(r, field))));
        table.rows.push(Row {
            cells,
            point: at.map(|a| (a.as_second(), int(r, "clicks"))),
        });
    }
    s.table = Some(table);
    s
}

/// Whether a daily series has taps only in its last three buckets.
fn recent_only(series: &Value) -> bool {
    let rows = list(series, "rows");
    let first = rows.iter().position(|r| int(r, "clicks") > 0);
    first.is_none_or(|i| i + 3 >= rows.len())
}

/// A link's state as a reader says it.
fn state(t: Tr, link: &Value) -> &'static str {
    if link["disabled"].as_bool() == Some(true) {
        t.s("disabled")
    } else {
        t.s("active")
    }
}

fn links_table(t: Tr, links: &[Value]) -> Table {
    let mut table = Table::new(
        t.s("links"),
        &[
            (t.s("code"), false),
            (t.s("recipient"), false),
            (t.s("owner"), false),
            (t.s("state"), false),
            (t.s("destination"), false),
        ],
    );
    for l in links {
        let code = text(l, "code");
        table.rows.push(Row {
            cells: vec![
                Cell::link(code, format!("/console/links/{}", enc(code))),
                Cell::text(text(l, "recipient_id")),
                Cell::text(text(l, "owner_id")),
                Cell::text(state(t, l)),
                Cell::wrap(text(l, "destination")),
            ],
            point: None,
        });
    }
    table
}

/// The lead filter of the query (campaign, owner) as query parameters for the API.
fn lead_filter(ctx: &Ctx<'_>) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for name in ["campaign_id", "owner_id"] {
        if let Some(v) = ctx.param(name) {
            q.append_pair(name, v);
        }
    }
    q.finish()
}

/// Leads a page shows (at least; a date filter may add the rest of the last page read).
const LEADS_SHOWN: usize = 100;
/// Pages of leads one request reads at most while looking for days asked for (10,000 leads).
const LEAD_SCAN_PAGES: usize = 100;

/// `/console/leads`: newest first, filtered by campaign, owner and day.
async fn leads(ctx: &Ctx<'_>) -> Response<Body> {
    let t = ctx.t;
    let filter = lead_filter(ctx);
    let cursor = ctx
        .param("cursor")
        .map(|c| format!("&cursor={}", enc(c)))
        .unwrap_or_default();
    let (from, to) = (ctx.param("from").unwrap_or(""), ctx.param("to").unwrap_or(""));
    let mut page = Page::new(Frame::of(ctx, t.s("leads"), "leads"));
    page.form = Some(Form {
        method: "get",
        action: "/console/leads".into(),
        fields: vec![
            Field {
                name: "campaign_id",
                label: t.s("campaign"),
                kind: "text",
                value: ctx.param("campaign_id").unwrap_or("").into(),
            },
            Field {
                name: "owner_id",
                label: t.s("owner"),
                kind: "text",
                value: ctx.param("owner_id").unwrap_or("").into(),
            },
            Field {
                name: "from",
                label: t.s("from"),
                kind: "date",
                value: from.into(),
            },
            Field {
                name: "to",
                label: t.s("to"),
                kind: "date",
                value: to.into(),
            },
        ],
        submit: t.s("filter"),
        help: "",
    });
    // Newest first, page by page, until a page's worth of leads within `from`..`to` (days of
    // LINKGATE_TIMEZONE, as shown) is found or the leads are older than `from`.
    let tz = &ctx.app.rules.tz;
    let day = |l: &Value| -> String { when(&l["created_at"], tz).chars().take(10).collect() };
    let mut rows: Vec<Value> = Vec::new();
    let mut cursor = cursor;
    let mut next = None;
    for _ in 0..LEAD_SCAN_PAGES {
        let uri = format!("/v1/leads?order=newest&limit={LEADS_SHOWN}&{filter}{cursor}");
        let v = match ctx.api(Method::GET, uri, None).await {
            Ok(v) => v,
            Err(e) => {
                page.sections.push(Section::failed(t.s("leads"), t, &e));
                return page.render_with(StatusCode::OK);
            }
        };
        let mut past_from = false;
        for l in list(&v, "leads") {
            let d = day(l);
            past_from |= !from.is_empty() && d.as_str() < from;
            if (from.is_empty() || d.as_str() >= from) && (to.is_empty() || d.as_str() <= to) {
                rows.push(l.clone());
            }
        }
        next = v["next_cursor"].as_str().filter(|_| !past_from).map(str::to_string);
        match &next {
            Some(n) if rows.len() < LEADS_SHOWN => cursor = format!("&cursor={}", enc(n)),
            _ => break,
        }
    }
    let converted = futures_util::future::join_all(
        rows.iter()
            .map(|l| ctx.api(Method::GET, format!("/v1/links/{}/stats", enc(text(l, "code"))), None)),
    )
    .await;
    let mut table = Table::new(
        t.s("leads"),
        &[
            (t.s("tapped_at"), false),
            (t.s("recipient"), false),
            (t.s("link"), false),
            (t.s("campaign"), false),
            (t.s("owner"), false),
            (t.s("converted"), false),
        ],
    );
    for (l, stats) in rows.iter().zip(converted) {
        let code = text(l, "code");
        let conv = match stats {
            Ok(s) if int(&s, "conversions") > 0 => t.s("yes"),
            Ok(_) => t.s("no"),
            Err(_) => "–",
        };
        table.rows.push(Row {
            cells: vec![
                Cell::text(when(&l["created_at"], &ctx.app.rules.tz)),
                Cell::text(text(l, "recipient_id")),
                Cell::link(code, format!("/console/links/{}", enc(code))),
                Cell::text(text(l, "campaign_id")),
                Cell::text(text(l, "owner_id")),
                Cell::text(conv),
            ],
            point: None,
        });
    }
    let mut s = Section::new(t.s("leads"));
    s.table = Some(table);
    s.links
        .push((t.s("export_csv").to_string(), format!("/console/leads.csv?{filter}")));
    if let Some(next) = next {
        s.links.push((
            t.s("next_page").to_string(),
            format!(
                "/console/leads?{filter}&from={}&to={}&cursor={}",
                enc(from),
                enc(to),
                enc(&next)
            ),
        ));
    }
    page.sections.push(s);
    page.render_with(StatusCode::OK)
}

/// `/console/links`: find a link by code, or by campaign and recipient.
async fn search(ctx: &Ctx<'_>) -> Response<Body> {
    let t = ctx.t;
    if let Some(code) = ctx.param("code") {
        return redirect(format!("/console/links/{}", enc(code.trim())));
    }
    let mut page = Page::new(Frame::of(ctx, t.s("links"), "links"));
    page.form = Some(Form {
        method: "get",
        action: "/console/links".into(),
        fields: vec![
            Field {
                name: "code",
                label: t.s("code"),
                kind: "search",
                value: String::new(),
            },
            Field {
                name: "campaign_id",
                label: t.s("campaign"),
                kind: "text",
                value: ctx.param("campaign_id").unwrap_or("").into(),
            },
            Field {
                name: "recipient_id",
                label: t.s("recipient"),
                kind: "text",
                value: ctx.param("recipient_id").unwrap_or("").into(),
            },
        ],
        submit: t.s("search"),
        help: t.s("search_help"),
    });
    if let Some(campaign) = ctx.param("campaign_id") {
        // With a recipient, the API reads that recipient's link in one lookup.
        let mut uri = format!("/v1/links?campaign_id={}&limit=100", enc(campaign));
        if let Some(r) = ctx.param("recipient_id") {
            uri.push_str(&format!("&recipient_id={}", enc(r)));
        }
        match ctx.api(Method::GET, uri, None).await {
            Ok(v) => {
                let found = list(&v, "links");
                if let ([one], Some(_)) = (found, ctx.param("recipient_id")) {
                    return redirect(format!("/console/links/{}", enc(text(one, "code"))));
                }
                let mut s = Section::new(t.s("links"));
                s.table = Some(links_table(t, found));
                page.sections.push(s);
            }
            Err(e) => page.sections.push(Section::failed(t.s("links"), t, &e)),
        }
    }
    page.render_with(StatusCode::OK)
}

/// `/console/links/{code}`: the link, its QR code, taps over time, and edit controls for keys
/// that may write.
async fn link(ctx: &Ctx<'_>, code: &str, failed: Option<ApiError>) -> Response<Body> {
    let t = ctx.t;
    let c = enc(code);
    let (l, stats, series) = tokio::join!(
        ctx.api(Method::GET, format!("/v1/links/{c}"), None),
        ctx.api(Method::GET, format!("/v1/links/{c}/stats"), None),
        ctx.api(
            Method::GET,
            format!("/v1/analytics?code={c}&interval=30d&group_by=timeseries"),
            None
        ),
    );
    let l = match l {
        Ok(l) => l,
        Err(e) if e.status() == StatusCode::NOT_FOUND => return not_found(t),
        Err(e) => return error(t, &e),
    };
    let mut f = Frame::of(ctx, format!("{} {code}", t.s("link")), "links");
    f.charts = true;
    let mut page = Page::new(f);
    page.subtitle = text(&l, "short_url").to_string();
    page.error = failed.map(|e| e.message);
    page.qr = Some((
        format!("/console/links/{c}/qr.svg"),
        format!("{} {}", t.s("qr_code"), text(&l, "short_url")),
        format!("/console/links/{c}/qr.png"),
    ));
    let disabled = l["disabled"].as_bool() == Some(true);
    let mut about = Section::new(t.s("link"));
    about.cards = vec![
        Card::new(t.s("state"), state(t, &l)),
        Card::new(t.s("kind"), text(&l, "kind")),
        Card::new(t.s("campaign"), text(&l, "campaign_id")),
        Card::new(t.s("owner"), text(&l, "owner_id")),
        Card::new(t.s("recipient"), text(&l, "recipient_id")),
        Card::new(t.s("created"), when(&l["created_at"], &ctx.app.rules.tz)),
    ];
    about.note = Some(format!("{}: {}", t.s("destination"), text(&l, "destination")));
    page.sections.push(about);
    if ctx.can(Scope::LinksWrite) {
        page.form = Some(Form {
            method: "post",
            action: format!("/console/links/{c}"),
            fields: vec![Field {
                name: "destination",
                label: t.s("destination"),
                kind: "url",
                value: text(&l, "destination").into(),
            }],
            submit: t.s("save"),
            help: "",
        });
        page.buttons.push(if disabled {
            (format!("/console/links/{c}"), "enable", t.s("enable"))
        } else {
            (format!("/console/links/{c}"), "disable", t.s("disable"))
        });
    }
    match stats {
        Ok(v) => {
            let mut s = Section::new(t.s("total"));
            s.cards = vec![
                Card::new(t.s("clicks"), count(int(&v, "clicks"))),
                Card::new(t.s("human_clicks"), count(int(&v, "human_clicks"))),
                Card::new(t.s("leads"), count(int(&v, "leads"))),
                Card::new(t.s("orders"), count(int(&v, "conversions"))),
                Card::new(t.s("revenue"), money(int(&v, "revenue"))),
            ];
            page.sections.push(s);
        }
        Err(e) => page.sections.push(Section::failed(t.s("total"), t, &e)),
    }
    page.sections.push(match series {
        Ok(v) => series_section(t, &ctx.app.rules.tz, &v, "30d", &[("leads", "leads")]),
        Err(e) => Section::failed(t.s("taps_over_time"), t, &e),
    });
    page.render_with(StatusCode::OK)
}

async fn qr(ctx: &Ctx<'_>, code: &str, format: &str) -> Response<Body> {
    let uri = format!("/v1/links/{}/qr?format={format}&size=400", enc(code));
    let mut r = match ctx.api_raw(Method::GET, uri, None).await {
        Ok(r) => r,
        Err(e) => return error(ctx.t, &e),
    };
    if format == "png" {
        let name = format!(
            "attachment; filename=\"{}.png\"",
            code.chars().filter(char::is_ascii_alphanumeric).collect::<String>()
        );
        if let Ok(v) = http::HeaderValue::from_str(&name) {
            r.headers_mut().insert(http::header::CONTENT_DISPOSITION, v);
        }
    }
    r
}

/// `/console/partners`: the referral tree, each partner with the leads of the links it owns and
/// the orders and revenue credited to it over the last 30 days.
async fn partners(ctx: &Ctx<'_>) -> Response<Body> {
    let t = ctx.t;
    let mut page = Page::new(Frame::of(ctx, t.s("partners"), "partners"));
    let (tree, numbers) = tokio::join!(
        ctx.api(Method::GET, "/v1/partners", None),
        ctx.api(
            Method::GET,
            "/v1/analytics?interval=30d&group_by=partner&limit=1000",
            None
        ),
    );
    let tree = match tree {
        Ok(v) => v,
        Err(e) => {
            page.sections.push(Section::failed(t.s("partners"), t, &e));
            return page.render_with(StatusCode::OK);
        }
    };
    let numbers = numbers.unwrap_or(Value::Null);
    let by_partner: HashMap<&str, &Value> = list(&numbers, "rows").iter().map(|r| (text(r, "key"), r)).collect();
    let all = list(&tree, "partners");
    let mut children: HashMap<&str, Vec<&Value>> = HashMap::new();
    for p in all.iter().rev() {
        children
            .entry(p["parent_id"].as_str().unwrap_or(""))
            .or_default()
            .push(p);
    }
    // Depth-first from the roots (sorted by id, as listed): each row indented by its level.
    let mut rows = Vec::new();
    let mut stack: Vec<(&Value, usize)> = children.get("").into_iter().flatten().map(|p| (*p, 0)).collect();
    let mut seen = HashSet::new();
    while let Some((p, depth)) = stack.pop() {
        let id = text(p, "id");
        if !seen.insert(id) {
            continue;
        }
        rows.push((p, depth));
        stack.extend(children.get(id).into_iter().flatten().map(|c| (*c, depth + 1)));
    }
    let mut table = Table::new(
        format!("{} · {}", t.s("partners"), t.s("last_30d")),
        &[
            (t.s("partner"), false),
            (t.s("level"), true),
            (t.s("parent"), false),
            (t.s("clicks"), true),
            (t.s("leads"), true),
            (t.s("orders"), true),
            (t.s("revenue"), true),
        ],
    );
    for (p, depth) in rows {
        let id = text(p, "id");
        let n = by_partner.get(id).copied().unwrap_or(&Value::Null);
        let name = text(p, "name");
        let label = format!(
            "{}{}",
            "· ".repeat(depth),
            if name.is_empty() {
                id.to_string()
            } else {
                format!("{name} ({id})")
            }
        );
        table.rows.push(Row {
            cells: vec![
                Cell::link(label, format!("/console/leads?owner_id={}", enc(id))),
                Cell::num(depth as i64 + 1),
                Cell::text(text(p, "parent_id")),
                Cell::num(int(n, "clicks")),
                Cell::num(int(n, "leads")),
                Cell::num(int(n, "conversions")),
                Cell::money(int(n, "revenue")),
            ],
            point: None,
        });
    }
    let mut s = Section::new(t.s("partners"));
    s.table = Some(table);
    s.note = Some(t.s("commission_later").to_string());
    page.sections.push(s);
    page.render_with(StatusCode::OK)
}

/// `/console/webhooks`: endpoints, their recent deliveries, and a retry button.
async fn webhooks(ctx: &Ctx<'_>) -> Response<Body> {
    let t = ctx.t;
    let mut page = Page::new(Frame::of(ctx, t.s("webhooks"), "webhooks"));
    let hooks = match ctx.api(Method::GET, "/v1/webhooks", None).await {
        Ok(v) => v,
        Err(e) => {
            page.sections.push(Section::failed(t.s("webhooks"), t, &e));
            return page.render_with(StatusCode::OK);
        }
    };
    let hooks = list(&hooks, "webhooks");
    let deliveries = futures_util::future::join_all(hooks.iter().map(|h| {
        ctx.api(
            Method::GET,
            format!("/v1/webhooks/{}/deliveries?limit=20", enc(text(h, "id"))),
            None,
        )
    }))
    .await;
    if hooks.is_empty() {
        let mut s = Section::new(t.s("webhooks"));
        s.note = Some(t.s("none_yet").into());
        page.sections.push(s);
    }
    for (h, d) in hooks.iter().zip(deliveries) {
        let id = text(h, "id");
        let state = if h["disabled"].as_bool() == Some(true) {
            format!("{} ({})", t.s("disabled"), text(h, "disabled_reason"))
        } else {
            t.s("active").to_string()
        };
        let mut s = Section::new(text(h, "url"));
        let events: Vec<&str> = list(h, "events").iter().filter_map(Value::as_str).collect();
        s.cards = vec![
            Card::new(t.s("state"), state),
            Card::new(t.s("events"), events.join(", ")),
        ];
        s.note = Some(t.s("retry_help").into());
        match d {
            Ok(v) => {
                let mut table = Table::new(
                    t.s("deliveries"),
                    &[
                        (t.s("created"), false),
                        (t.s("events"), false),
                        (t.s("status"), false),
                        (t.s("attempts"), true),
                        (t.s("latency"), true),
                        ("", false),
                    ],
                );
                for d in list(&v, "deliveries") {
                    let did = text(d, "id");
                    let status = format!(
                        "{}{}",
                        text(d, "status"),
                        d["response_status"]
                            .as_i64()
                            .map(|s| format!(" · HTTP {s}"))
                            .unwrap_or_default()
                    );
                    let retry = Cell {
                        action: (text(d, "status") != "delivered").then(|| {
                            (
                                format!("/console/webhooks/{}/deliveries/{}/retry", enc(id), enc(did)),
                                t.s("retry"),
                            )
                        }),
                        ..Cell::default()
                    };
                    table.rows.push(Row {
                        cells: vec![
                            Cell::text(when(&d["created_at"], &ctx.app.rules.tz)),
                            Cell::text(text(d, "event_type")),
                            Cell::text(status),
                            Cell::num(int(d, "attempts")),
                            Cell::text(
                                d["latency_ms"]
                                    .as_i64()
                                    .map(|ms| format!("{ms} ms"))
                                    .unwrap_or_default(),
                            ),
                            retry,
                        ],
                        point: None,
                    });
                }
                s.table = Some(table);
            }
            Err(e) => s.error = Some(super::views::why(t, &e)),
        }
        page.sections.push(s);
    }
    page.render_with(StatusCode::OK)
}
