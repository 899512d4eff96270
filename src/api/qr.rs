//! `GET /v1/links/{code}/qr`: the short URL as a QR code, SVG or PNG.
//!
//! Query: `format` (`svg` default, `png`), `size` (the image's width and height in pixels, 64–4096,
//! default 512), `margin` (quiet zone in modules, 0–16, default 4), `ecc` (`L`, `M` default, `Q`, `H`).
//! Modules are whole pixels (crisp when printed); the code is centred and the spare pixels join the
//! margin. A size too small for the code at that margin is refused with the smallest size that fits.

use http::{HeaderValue, Response, StatusCode, header};
use image::ImageEncoder;
use qrcode::{Color, EcLevel, QrCode};

use super::{ApiResult, query_pairs, require};
use crate::app::App;
use crate::body::Body;
use crate::config::{ApiKey, Scope};
use crate::error::{ApiError, FieldError};
use crate::link::code::is_code_shaped;
use crate::link::short_url;

pub(crate) const MIN_SIZE: u32 = 64;
pub(crate) const MAX_SIZE: u32 = 4096;
pub(crate) const MAX_MARGIN: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Svg,
    Png,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct QrParams {
    pub format: Format,
    pub size: u32,
    pub margin: u32,
    pub ecc: EcLevel,
}

impl QrParams {
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut p = QrParams {
            format: Format::Svg,
            size: 512,
            margin: 4,
            ecc: EcLevel::M,
        };
        let mut errors = Vec::new();
        for (k, v) in query_pairs(query) {
            match k.as_str() {
                "format" => match v.as_str() {
                    "svg" => p.format = Format::Svg,
                    "png" => p.format = Format::Png,
                    _ => errors.push(FieldError::new("format", "must be svg or png")),
                },
                "size" => match v.parse::<u32>() {
                    Ok(s) if (MIN_SIZE..=MAX_SIZE).contains(&s) => p.size = s,
                    _ => errors.push(FieldError::new(
                        "size",
                        format!("must be an integer from {MIN_SIZE} to {MAX_SIZE}"),
                    )),
                },
                "margin" => match v.parse::<u32>() {
                    Ok(m) if m <= MAX_MARGIN => p.margin = m,
                    _ => errors.push(FieldError::new(
                        "margin",
                        format!("must be an integer from 0 to {MAX_MARGIN}"),
                    )),
                },
                "ecc" => match v.as_str() {
                    "L" | "l" => p.ecc = EcLevel::L,
                    "M" | "m" => p.ecc = EcLevel::M,
                    "Q" | "q" => p.ecc = EcLevel::Q,
                    "H" | "h" => p.ecc = EcLevel::H,
                    _ => errors.push(FieldError::new("ecc", "must be L, M, Q or H")),
                },
                other => errors.push(FieldError::new(other, "unknown query parameter")),
            }
        }
        if errors.is_empty() {
            Ok(p)
        } else {
            Err(ApiError::validation(errors))
        }
    }
}

pub(crate) async fn get(app: &App, key: &ApiKey, code: &str, query: Option<&str>) -> ApiResult {
    require(key, Scope::LinksRead)?;
    let params = QrParams::parse(query)?;
    let link = if is_code_shaped(code) {
        app.store.get_link(code).await?
    } else {
        None
    };
    if !link.is_some_and(|l| super::owns(key, l.owner_id.as_deref())) {
        return Err(ApiError::not_found("link"));
    }
    let (bytes, content_type) = render(&short_url(&app.config.public_base_url, code), &params)?;
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=300"));
    Ok(r)
}

/// Renders `data` as a QR image.
pub(crate) fn render(data: &str, p: &QrParams) -> Result<(Vec<u8>, &'static str), ApiError> {
    let qr = QrCode::with_error_correction_level(data, p.ecc)
        .map_err(|e| ApiError::field("code", format!("cannot be encoded as a QR code: {e}")))?;
    let width = qr.width() as u32;
    let modules = width + 2 * p.margin;
    if p.size < modules {
        return Err(ApiError::field(
            "size",
            format!("is too small for this code; at least {modules} at margin {}", p.margin),
        ));
    }
    let px = p.size / modules;
    let offset = (p.size - px * modules) / 2 + px * p.margin;
    let colors = qr.to_colors();
    let dark = |x: u32, y: u32| colors[(y * width + x) as usize] == Color::Dark;
    match p.format {
        Format::Svg => {
            let mut path = String::with_capacity(colors.len() * 8);
            for y in 0..width {
                let mut x = 0;
                while x < width {
                    if !dark(x, y) {
                        x += 1;
                        continue;
                    }
                    let run = (x..width).take_while(|&x| dark(x, y)).count() as u32;
                    let w = run * px;
                    let (left, top) = (offset + x * px, offset + y * px);
                    path.push_str(&format!("M{left},{top}h{w}v{px}h-{w}z"));
                    x += run;
                }
            }
            let svg = format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{s}\" height=\"{s}\" viewBox=\"0 0 {s} {s}\" shape-rendering=\"crispEdges\"><rect width=\"100%\" height=\"100%\" fill=\"#fff\"/><path fill=\"#000\" d=\"{path}\"/></svg>\n",
                s = p.size
            );
            Ok((svg.into_bytes(), "image/svg+xml"))
        }
        Format::Png => {
            let size = p.size as usize;
            let mut pixels = vec![255u8; size * size];
            for y in 0..width {
                for x in 0..width {
                    if dark(x, y) {
                        let (x0, y0) = ((offset + x * px) as usize, (offset + y * px) as usize);
                        for row in y0..y0 + px as usize {
                            pixels[row * size + x0..row * size + x0 + px as usize].fill(0);
                        }
                    }
                }
            }
            let mut png = Vec::new();
            image::codecs::png::PngEncoder::new(&mut png)
                .write_image(&pixels, p.size, p.size, image::ExtendedColorType::L8)
                .map_err(|_| ApiError::unavailable())?;
            Ok((png, "image/png"))
        }
    }
}
