//! Rich text in every format, rendered and sanitized: no input may panic,
//! and what comes out holds no script: no script-capable element, no event
//! handler attribute, no javascript: URL. Text that merely reads
//! "javascript:" is escaped text, not a link, and is fine.
#![no_main]

use agenda::domain::{Check, rich_text::RichText};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    format: i32,
    raw: String,
}

/// The attributes of one tag's text (what lies between `<` and `>`), as
/// (lowercase name, value) pairs, quotes understood.
fn attributes(tag: &str) -> Vec<(String, String)> {
    let mut rest = tag.trim_start_matches('/').trim_start_matches(|c: char| !c.is_whitespace() && c != '/');
    let mut found = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        if rest.is_empty() {
            return found;
        }
        let name_end = rest.find(|c: char| c.is_whitespace() || c == '=' || c == '/').unwrap_or(rest.len());
        let name = rest[..name_end].to_ascii_lowercase();
        rest = rest[name_end..].trim_start();
        let mut value = String::new();
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (text, next) = match after.chars().next() {
                Some(quote @ ('"' | '\'')) => {
                    let body = &after[1..];
                    let end = body.find(quote).unwrap_or(body.len());
                    (&body[..end], body.get(end + 1..).unwrap_or(""))
                }
                _ => {
                    let end = after.find(char::is_whitespace).unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            value = text.to_string();
            rest = next;
        }
        found.push((name, value));
    }
}

fuzz_target!(|input: Input| {
    let mut check = Check::new("");
    let text = RichText::parse(&mut check, "notes", input.format % 4, &input.raw);
    if check.finish(()).is_err() {
        return;
    }
    // Escaped text holds no '<', so every '<' in the output opens a tag.
    for tag in text.html.split('<').skip(1).map(|part| part.split('>').next().unwrap_or(part)) {
        let name = tag.trim_start_matches('/').split(|c: char| c.is_whitespace() || c == '/').next().unwrap_or("");
        let name = name.to_ascii_lowercase();
        assert!(
            !matches!(name.as_str(), "script" | "iframe" | "object" | "embed" | "style" | "svg" | "math" | "form"),
            "a <{name}> survived: {}",
            text.html
        );
        for (attribute, value) in attributes(tag) {
            assert!(!attribute.starts_with("on"), "an event handler survived: {}", text.html);
            let value: String = value.chars().filter(|c| !c.is_whitespace() && !c.is_control()).collect();
            assert!(
                !value.to_ascii_lowercase().starts_with("javascript:"),
                "a javascript: URL survived: {}",
                text.html
            );
        }
    }
});
