//! RichText: what the caller wrote (plain, Markdown or HTML) and its HTML,
//! rendered with pulldown-cmark and always sanitized with ammonia, so no
//! script, event handler or `javascript:` link survives.
//!
//! Rendering time is bounded as the input is. pulldown-cmark is linear, but
//! the HTML tree builder under ammonia takes time quadratic in how deeply
//! elements nest: 64 KiB of `>` is 65,536 nested blockquotes and took 34 s
//! to sanitize (64 KiB of `<ul><li>`, 1 s). So the HTML about to be
//! sanitized is first measured by html5ever's tokenizer (linear), and text
//! nesting deeper than [`MAX_NESTING`] is refused; what is left renders in
//! milliseconds (see the closing notes of the activities issue).

use std::cell::Cell;

use html5ever::{
    local_name,
    tendril::StrTendril,
    tokenizer::{BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts},
};

use super::Check;
use crate::error::Reason;

/// Limit of `RichText.raw`, in bytes.
pub const MAX_RAW_BYTES: usize = 64 * 1024;
/// How deeply the elements of a rich text may nest (Markdown block quotes
/// and lists count, as their HTML does).
pub const MAX_NESTING: usize = 100;

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
        let unsafe_html = to_html(format, raw);
        let depth = nesting(&unsafe_html);
        if depth > MAX_NESTING {
            check.fail(
                format!("{field}.raw"),
                Reason::FieldInvalid,
                format!(
                    "{path}.raw nests deeper than {MAX_NESTING} levels (quotes, lists, elements); at most {MAX_NESTING} are allowed."
                ),
            );
            return RichText { format, raw: String::new(), html: String::new() };
        }
        RichText { format, raw: raw.to_string(), html: sanitize(format, unsafe_html) }
    }

    /// Rebuilds a stored rich text (already validated and rendered).
    pub fn stored(format: i32, raw: String, html: String) -> RichText {
        RichText { format: Format::from_i32(format).unwrap_or_default(), raw, html }
    }
}

/// Renders raw text of a format to sanitized HTML. The server's own texts
/// come here directly; a caller's go through [`RichText::parse`], which
/// bounds their nesting first.
pub fn render(format: Format, raw: &str) -> String {
    sanitize(format, to_html(format, raw))
}

/// The HTML of a text before sanitizing (escaped already for PLAIN).
fn to_html(format: Format, raw: &str) -> String {
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
            // Markdown nesting is counted as it is parsed: rendering stops
            // (and the depth check below refuses it) past the limit, before
            // a deep document becomes a large HTML one.
            let mut depth = 0usize;
            let bounded = parser.map_while(|event| {
                match &event {
                    pulldown_cmark::Event::Start(_) => depth += 1,
                    pulldown_cmark::Event::End(_) => depth = depth.saturating_sub(1),
                    _ => {}
                }
                (depth <= MAX_NESTING).then_some(event)
            });
            let mut html = String::with_capacity(raw.len() * 3 / 2);
            pulldown_cmark::html::push_html(&mut html, bounded);
            if depth > MAX_NESTING {
                // Unclosed on purpose: the measure sees every level.
                html.push_str(&"<div>".repeat(MAX_NESTING + 1));
            }
            html
        }
        Format::Html => raw.to_string(),
    }
}

fn sanitize(format: Format, html: String) -> String {
    match format {
        Format::Plain => html,
        Format::Markdown | Format::Html => ammonia::clean(&html),
    }
}

/// Tracks the elements open while HTML is tokenized, as a tree builder
/// would hold them (end tags close up to their element; elements whose end
/// tag is optional close their open sibling), and the most open at once.
#[derive(Default)]
struct Depth {
    open: std::cell::RefCell<Vec<html5ever::LocalName>>,
    most: Cell<usize>,
}

impl TokenSink for Depth {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        if let Token::TagToken(tag) = token {
            let mut open = self.open.borrow_mut();
            match tag.kind {
                // `<ul/>` opens a `ul` all the same: only void elements close themselves.
                TagKind::StartTag if is_void(&tag.name) => {}
                TagKind::StartTag => {
                    if closes_sibling(&tag.name) && open.last() == Some(&tag.name) {
                        open.pop();
                    }
                    open.push(tag.name);
                    self.most.set(self.most.get().max(open.len()));
                }
                // An end tag closes its element only when no scope boundary
                // (`object`, `table`, …) is open above it, as the tree builder does.
                TagKind::EndTag => {
                    if let Some(at) = open.iter().rposition(|name| *name == tag.name)
                        && !open[at + 1..].iter().any(is_scope_boundary)
                    {
                        open.truncate(at);
                    }
                }
            }
        }
        TokenSinkResult::Continue
    }
}

fn is_void(name: &html5ever::LocalName) -> bool {
    matches!(
        *name,
        local_name!("area")
            | local_name!("base")
            | local_name!("br")
            | local_name!("col")
            | local_name!("embed")
            | local_name!("hr")
            | local_name!("img")
            | local_name!("input")
            | local_name!("link")
            | local_name!("meta")
            | local_name!("source")
            | local_name!("track")
            | local_name!("wbr")
    )
}

fn is_scope_boundary(name: &html5ever::LocalName) -> bool {
    matches!(
        *name,
        local_name!("applet")
            | local_name!("caption")
            | local_name!("html")
            | local_name!("table")
            | local_name!("td")
            | local_name!("th")
            | local_name!("marquee")
            | local_name!("object")
            | local_name!("template")
    )
}

fn closes_sibling(name: &html5ever::LocalName) -> bool {
    matches!(
        *name,
        local_name!("p")
            | local_name!("li")
            | local_name!("dt")
            | local_name!("dd")
            | local_name!("tr")
            | local_name!("td")
            | local_name!("th")
            | local_name!("option")
    )
}

/// How deeply the elements of `html` nest, measured in one linear pass.
fn nesting(html: &str) -> usize {
    if !html.contains('<') {
        return 0;
    }
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(html));
    let tokenizer = Tokenizer::new(Depth::default(), TokenizerOpts::default());
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    tokenizer.sink.most.get()
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
    fn deep_nesting_is_refused_and_shallow_nesting_kept() {
        let mut check = Check::new("activity.");
        RichText::parse(&mut check, "details", 2, &">".repeat(MAX_RAW_BYTES));
        RichText::parse(&mut check, "details", 3, &"<ul><li>".repeat(MAX_NESTING));
        RichText::parse(&mut check, "details", 3, &"<div>".repeat(MAX_NESTING + 1));
        RichText::parse(&mut check, "details", 3, &"<ul/>".repeat(MAX_NESTING + 1));
        RichText::parse(&mut check, "details", 3, &"<div><object></div>".repeat(MAX_NESTING));
        let Err(crate::error::Error::Invalid(v)) = check.finish(()) else { panic!("expected violations") };
        assert_eq!(v.len(), 5, "{v:?}");
        let mut check = Check::new("");
        let kept = RichText::parse(&mut check, "details", 2, &format!("{}deep", ">".repeat(MAX_NESTING / 2)));
        let siblings = RichText::parse(&mut check, "details", 3, &"<p>unclosed".repeat(5000));
        let closed = RichText::parse(&mut check, "details", 3, &"<div>a</div>".repeat(5000));
        assert!(check.finish(()).is_ok());
        assert!(kept.html.contains("deep"), "{}", kept.html);
        assert!(siblings.html.starts_with("<p>unclosed</p>"), "{}", &siblings.html[..40]);
        assert!(closed.html.len() > 5000 * 5);
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
