//! RichText: what the caller wrote (plain, Markdown or HTML) and its HTML,
//! rendered with pulldown-cmark and always sanitized with ammonia, so no
//! script, event handler or `javascript:` link survives.

use super::Check;
use crate::error::Reason;

/// Limit of `RichText.raw`, in bytes.
pub const MAX_RAW_BYTES: usize = 64 * 1024;

/// The format of a rich text; the numbers are the proto enum's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Plain text.
    Plain = 1,
    /// CommonMark (the default).
    #[default]
    Markdown = 2,
    /// HTML.
    Html = 3,
}

impl Format {
    /// From the proto enum value; 0 (unspecified) is Markdown.
    pub fn from_i32(value: i32) -> Option<Format> {
        match value {
            0 | 2 => Some(Format::Markdown),
            1 => Some(Format::Plain),
            3 => Some(Format::Html),
            _ => None,
        }
    }
}

/// A validated rich text with its sanitized HTML.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RichText {
    /// How raw is written.
    pub format: Format,
    /// The caller's text.
    pub raw: String,
    /// Sanitized HTML rendered from raw.
    pub html: String,
}

impl RichText {
    /// Validates and renders; `field` names it in violations.
    pub fn parse(check: &mut Check, field: &str, format: i32, raw: &str) -> RichText {
        let path = check.path(field);
        let format = Format::from_i32(format).unwrap_or_else(|| {
            check.fail(
                format!("{field}.format"),
                Reason::FieldInvalid,
                format!("{path}.format is not a known TextFormat."),
            );
            Format::Markdown
        });
        if raw.len() > MAX_RAW_BYTES {
            check.fail(
                format!("{field}.raw"),
                Reason::FieldInvalid,
                format!("{path}.raw has {} bytes; at most {MAX_RAW_BYTES} are allowed.", raw.len()),
            );
            return RichText { format, raw: String::new(), html: String::new() };
        }
        if raw.contains('\0') {
            check.fail(
                format!("{field}.raw"),
                Reason::FieldInvalid,
                format!("{path}.raw contains a NUL character, which text cannot hold."),
            );
            return RichText { format, raw: String::new(), html: String::new() };
        }
        RichText { format, raw: raw.to_string(), html: render(format, raw) }
    }

    /// Rebuilds a stored rich text (already validated and rendered).
    pub fn stored(format: i32, raw: String, html: String) -> RichText {
        RichText { format: Format::from_i32(format).unwrap_or_default(), raw, html }
    }
}

/// Renders raw text of a format to sanitized HTML.
pub fn render(format: Format, raw: &str) -> String {
    if raw.is_empty() {
        return String::new();
    }
    match format {
        Format::Plain => {
            let mut escaped = String::with_capacity(raw.len() + 16);
            for c in raw.chars() {
                match c {
                    '&' => escaped.push_str("&amp;"),
                    '<' => escaped.push_str("&lt;"),
                    '>' => escaped.push_str("&gt;"),
                    '"' => escaped.push_str("&quot;"),
                    '\'' => escaped.push_str("&#39;"),
                    '\n' => escaped.push_str("<br>\n"),
                    c => escaped.push(c),
                }
            }
            format!("<p>{escaped}</p>")
        }
        Format::Markdown => {
            let parser = pulldown_cmark::Parser::new_ext(
                raw,
                pulldown_cmark::Options::ENABLE_TABLES | pulldown_cmark::Options::ENABLE_STRIKETHROUGH,
            );
            let mut html = String::with_capacity(raw.len() * 3 / 2);
            pulldown_cmark::html::push_html(&mut html, parser);
            ammonia::clean(&html)
        }
        Format::Html => ammonia::clean(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_is_rendered_and_sanitized() {
        let html = render(
            Format::Markdown,
            "**hi** <script>alert(1)</script> [x](javascript:alert(1)) <img src=x onerror=alert(1)>",
        );
        assert!(html.contains("<strong>hi</strong>"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(!html.contains("onerror"), "{html}");
    }

    #[test]
    fn plain_is_escaped_and_html_is_cleaned() {
        assert_eq!(render(Format::Plain, "a <b>\nc"), "<p>a &lt;b&gt;<br>\nc</p>");
        let html = render(Format::Html, "<p onclick=\"x()\">ok</p><script>bad()</script>");
        assert_eq!(html, "<p>ok</p>");
    }

    #[test]
    fn too_long_or_unknown_format_is_refused() {
        let mut check = Check::new("contact.");
        RichText::parse(&mut check, "notes", 9, "x");
        RichText::parse(&mut check, "notes", 2, &"x".repeat(MAX_RAW_BYTES + 1));
        RichText::parse(&mut check, "comment", 1, "a\0b");
        let Err(crate::error::Error::Invalid(v)) = check.finish(()) else { panic!("expected violations") };
        assert_eq!(v[0].field, "contact.notes.format");
        assert_eq!(v[1].field, "contact.notes.raw");
        assert_eq!(v[2].field, "contact.comment.raw");
    }
}
