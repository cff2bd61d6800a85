//! The filter language (docs/filtering.md), an AIP-160 subset, parsed by hand
//! (recursive descent) into a typed AST. Positions are character offsets
//! (0-based) into the filter, so every error can point at its fault.
//!
//! ```text
//! expr        := and
//! and         := or { "AND" or }          -- as in AIP-160, OR binds tighter than AND
//! or          := term { "OR" term }
//! term        := [ "NOT" | "-" ] ( "(" expr ")" | restriction )
//! restriction := field op value
//! field       := name { "." segment }
//! op          := "=" | "!=" | "<" | "<=" | ">" | ">=" | ":"
//! value       := string | number | "true" | "false" | word
//! ```

use std::fmt;

/// Most characters of a filter.
pub const MAX_CHARS: usize = 2000;
/// Deepest nesting of parentheses and NOT.
pub const MAX_DEPTH: usize = 32;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `:` (has / contains)
    Has,
}

impl Op {
    /// As written.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Has => ":",
        }
    }
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A quoted string.
    String(String),
    /// A number.
    Number(f64),
    /// `true` or `false`.
    Bool(bool),
    /// A bare word, such as an enum name.
    Word(String),
}

/// A character offset into the filter. Two ASTs that differ only in
/// offsets are equal (a printed and re-parsed filter has other offsets).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pos(pub usize);

impl PartialEq for Pos {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A field path and where it starts in the filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The dotted path, e.g. `["custom_fields", "source"]`.
    pub path: Vec<String>,
    /// Its character offset.
    pub pos: Pos,
}

impl Field {
    /// The path joined with dots.
    pub fn name(&self) -> String {
        self.path.join(".")
    }
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// All must hold.
    And(Vec<Expr>),
    /// Any must hold.
    Or(Vec<Expr>),
    /// Must not hold.
    Not(Box<Expr>),
    /// `field op value`; `pos` is the value's offset.
    Compare {
        /// The field.
        field: Field,
        /// The operator.
        op: Op,
        /// The value.
        value: Value,
        /// The value's character offset.
        pos: Pos,
    },
}

/// A filter that could not be parsed: what and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Character offset of the fault.
    pub pos: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.pos, self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    LParen,
    RParen,
    Minus,
    Op(Op),
    String(String),
    Number(f64),
    Word(String),
    Dot,
}

fn err<T>(pos: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError { pos, message: message.into() })
}

fn lex(input: &[char]) -> Result<Vec<(Token, usize)>, ParseError> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        let start = i;
        match c {
            '\0' => return err(start, "the filter contains a NUL character"),
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push((Token::LParen, start));
                i += 1;
            }
            ')' => {
                tokens.push((Token::RParen, start));
                i += 1;
            }
            '.' => {
                tokens.push((Token::Dot, start));
                i += 1;
            }
            '=' => {
                tokens.push((Token::Op(Op::Eq), start));
                i += 1;
            }
            ':' => {
                tokens.push((Token::Op(Op::Has), start));
                i += 1;
            }
            '!' => {
                if input.get(i + 1) == Some(&'=') {
                    tokens.push((Token::Op(Op::Ne), start));
                    i += 2;
                } else {
                    return err(start, "'!' must be followed by '=' (use NOT to negate)");
                }
            }
            '<' | '>' => {
                let eq = input.get(i + 1) == Some(&'=');
                let op = match (c, eq) {
                    ('<', true) => Op::Le,
                    ('<', false) => Op::Lt,
                    (_, true) => Op::Ge,
                    (_, false) => Op::Gt,
                };
                tokens.push((Token::Op(op), start));
                i += if eq { 2 } else { 1 };
            }
            '"' | '\'' => {
                let quote = c;
                let mut text = String::new();
                i += 1;
                loop {
                    match input.get(i) {
                        None => return err(start, "the string is not closed"),
                        Some('\0') => return err(i, "the string contains a NUL character"),
                        Some(&ch) if ch == quote => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            match input.get(i + 1) {
                                Some(&escaped @ ('\\' | '"' | '\'')) => text.push(escaped),
                                Some('n') => text.push('\n'),
                                Some('t') => text.push('\t'),
                                _ => return err(i, "unknown escape: use \\\\, \\\", \\', \\n or \\t"),
                            }
                            i += 2;
                        }
                        Some(&ch) => {
                            text.push(ch);
                            i += 1;
                        }
                    }
                }
                tokens.push((Token::String(text), start));
            }
            '-' if input.get(i + 1).is_some_and(|d| d.is_ascii_digit()) && !prev_is_operand(&tokens) => {
                let (number, next) = lex_number(input, i)?;
                tokens.push((Token::Number(number), start));
                i = next;
            }
            '-' => {
                tokens.push((Token::Minus, start));
                i += 1;
            }
            c if c.is_ascii_digit() => {
                // A number, unless it continues as a word (a custom field key such as 2fa).
                let after_dot = matches!(tokens.last(), Some((Token::Dot, _)));
                let mut end = i;
                while end < input.len() && (is_word_char(input[end]) || (after_dot && input[end] == '-')) {
                    end += 1;
                }
                let word: String = input[i..end].iter().collect();
                let exponent = word.split_once(['e', 'E']).is_some_and(|(m, e)| {
                    m.chars().all(|d| d.is_ascii_digit()) && e.chars().all(|d| d.is_ascii_digit())
                });
                let numeric = word.chars().all(|d| d.is_ascii_digit()) || exponent || input.get(end) == Some(&'.');
                if numeric && !after_dot {
                    let (number, next) = lex_number(input, i)?;
                    tokens.push((Token::Number(number), start));
                    i = next;
                } else {
                    tokens.push((Token::Word(input[i..end].iter().collect()), start));
                    i = end;
                }
            }
            c if is_word_char(c) => {
                // After a dot a segment may be a custom field key, which may hold '-'.
                let after_dot = matches!(tokens.last(), Some((Token::Dot, _)));
                let mut end = i;
                while end < input.len() && (is_word_char(input[end]) || (after_dot && input[end] == '-')) {
                    end += 1;
                }
                tokens.push((Token::Word(input[i..end].iter().collect()), start));
                i = end;
            }
            other => return err(start, format!("unexpected character {other:?}")),
        }
    }
    Ok(tokens)
}

fn prev_is_operand(tokens: &[(Token, usize)]) -> bool {
    matches!(tokens.last(), Some((Token::Word(_) | Token::Number(_) | Token::String(_) | Token::RParen, _)))
        && !matches!(tokens.last(), Some((Token::Word(w), _)) if w == "AND" || w == "OR" || w == "NOT")
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn lex_number(input: &[char], start: usize) -> Result<(f64, usize), ParseError> {
    let mut end = start;
    if input.get(end) == Some(&'-') {
        end += 1;
    }
    while input.get(end).is_some_and(|c| c.is_ascii_digit()) {
        end += 1;
    }
    if input.get(end) == Some(&'.') && input.get(end + 1).is_some_and(|c| c.is_ascii_digit()) {
        end += 1;
        while input.get(end).is_some_and(|c| c.is_ascii_digit()) {
            end += 1;
        }
    }
    if matches!(input.get(end), Some('e' | 'E')) {
        let mut exp = end + 1;
        if matches!(input.get(exp), Some('+' | '-')) {
            exp += 1;
        }
        if input.get(exp).is_some_and(|c| c.is_ascii_digit()) {
            end = exp;
            while input.get(end).is_some_and(|c| c.is_ascii_digit()) {
                end += 1;
            }
        }
    }
    if input.get(end).is_some_and(|c| is_word_char(*c)) {
        return err(end, "a number must not run into letters");
    }
    let text: String = input[start..end].iter().collect();
    match text.parse::<f64>() {
        Ok(n) if n.is_finite() => Ok((n, end)),
        _ => err(start, format!("{text:?} is not a number agenda can compare")),
    }
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    next: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(t, _)| t)
    }

    fn pos(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(_, p)| *p)
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w == word)
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let mut items = vec![self.or(depth)?];
        while self.keyword("AND") {
            self.next += 1;
            items.push(self.or(depth)?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Expr::And(items) })
    }

    fn or(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let mut items = vec![self.term(depth)?];
        while self.keyword("OR") {
            self.next += 1;
            items.push(self.term(depth)?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Expr::Or(items) })
    }

    fn term(&mut self, depth: usize) -> Result<Expr, ParseError> {
        if depth >= MAX_DEPTH {
            return err(self.pos(), format!("the filter nests deeper than {MAX_DEPTH} levels"));
        }
        if self.keyword("NOT") || matches!(self.peek(), Some(Token::Minus)) {
            self.next += 1;
            return Ok(Expr::Not(Box::new(self.term(depth + 1)?)));
        }
        if matches!(self.peek(), Some(Token::LParen)) {
            let open = self.pos();
            self.next += 1;
            let inner = self.expr(depth + 1)?;
            if !matches!(self.peek(), Some(Token::RParen)) {
                return if self.peek().is_none() {
                    err(open, "this parenthesis is not closed")
                } else {
                    err(self.pos(), "expected ')', AND or OR")
                };
            }
            self.next += 1;
            return Ok(inner);
        }
        self.restriction()
    }

    fn restriction(&mut self) -> Result<Expr, ParseError> {
        let start = self.pos();
        let mut path = match self.peek() {
            Some(Token::Word(w)) if !matches!(w.as_str(), "AND" | "OR" | "NOT") => vec![w.clone()],
            None => return err(start, "expected a field name, the filter ends here"),
            _ => return err(start, "expected a field name"),
        };
        if !path[0].starts_with(|c: char| c.is_ascii_alphabetic()) {
            return err(start, "a field name starts with a letter");
        }
        self.next += 1;
        while matches!(self.peek(), Some(Token::Dot)) {
            self.next += 1;
            match self.peek() {
                Some(Token::Word(w)) => path.push(w.clone()),
                Some(Token::Number(n)) if n.fract() == 0.0 && *n >= 0.0 => path.push(format!("{n}")),
                _ => return err(self.pos(), "expected a field name after '.'"),
            }
            self.next += 1;
        }
        let field = Field { path, pos: Pos(start) };
        let op = match self.peek() {
            Some(Token::Op(op)) => *op,
            _ => return err(self.pos(), format!("expected an operator (= != < <= > >= :) after {}", field.name())),
        };
        self.next += 1;
        let pos = self.pos();
        let value = match self.peek() {
            Some(Token::String(s)) => Value::String(s.clone()),
            Some(Token::Number(n)) => Value::Number(*n),
            Some(Token::Word(w)) if w == "true" => Value::Bool(true),
            Some(Token::Word(w)) if w == "false" => Value::Bool(false),
            Some(Token::Word(w)) if !matches!(w.as_str(), "AND" | "OR" | "NOT") => Value::Word(w.clone()),
            None => return err(pos, "expected a value, the filter ends here"),
            _ => return err(pos, "expected a value: a quoted string, a number, true, false or a name"),
        };
        self.next += 1;
        Ok(Expr::Compare { field, op, value, pos: Pos(pos) })
    }
}

/// Parses a filter; `None` for an empty one.
pub fn parse(filter: &str) -> Result<Option<Expr>, ParseError> {
    // A char is at most 4 bytes: a longer text is refused before it is decoded.
    if filter.len() > MAX_CHARS * 4 {
        return err(MAX_CHARS, format!("the filter has over {MAX_CHARS} characters; at most {MAX_CHARS} are allowed"));
    }
    let chars: Vec<char> = filter.chars().collect();
    if chars.len() > MAX_CHARS {
        return err(MAX_CHARS, format!("the filter has {} characters; at most {MAX_CHARS} are allowed", chars.len()));
    }
    let tokens = lex(&chars)?;
    if tokens.is_empty() {
        return Ok(None);
    }
    let mut parser = Parser { tokens, next: 0, end: chars.len() };
    let expr = parser.expr(0)?;
    if parser.peek().is_some() {
        return err(parser.pos(), "expected AND, OR or the end of the filter");
    }
    Ok(Some(expr))
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => {
                f.write_str("\"")?;
                for c in s.chars() {
                    match c {
                        '"' => f.write_str("\\\"")?,
                        '\\' => f.write_str("\\\\")?,
                        '\n' => f.write_str("\\n")?,
                        '\t' => f.write_str("\\t")?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str("\"")
            }
            Value::Number(n) => write!(f, "{n:?}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Word(w) => f.write_str(w),
        }
    }
}

impl fmt::Display for Expr {
    /// Prints the filter fully parenthesized, so it parses back to the same AST.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, items: &[Expr], sep: &str| -> fmt::Result {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, " {sep} ")?;
                }
                write!(f, "({item})")?;
            }
            Ok(())
        };
        match self {
            Expr::And(items) => join(f, items, "AND"),
            Expr::Or(items) => join(f, items, "OR"),
            Expr::Not(inner) => write!(f, "NOT ({inner})"),
            Expr::Compare { field, op, value, .. } => write!(f, "{} {} {}", field.name(), op.as_str(), value),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cmp(path: &str, op: Op, value: Value) -> Expr {
        Expr::Compare {
            field: Field { path: path.split('.').map(String::from).collect(), pos: Pos(0) },
            op,
            value,
            pos: Pos(0),
        }
    }

    #[test]
    fn parses_the_examples_of_the_contract() {
        let parsed = parse(r#"type = "call" AND occur_time >= "2026-01-01T00:00:00Z""#).unwrap();
        assert_eq!(
            parsed,
            Some(Expr::And(vec![
                cmp("type", Op::Eq, Value::String("call".into())),
                cmp("occur_time", Op::Ge, Value::String("2026-01-01T00:00:00Z".into())),
            ]))
        );
        let parsed = parse("status != COMPLETED AND -is_test = true OR custom_fields.source:\"web\"").unwrap();
        assert_eq!(
            parsed,
            Some(Expr::And(vec![
                cmp("status", Op::Ne, Value::Word("COMPLETED".into())),
                Expr::Or(vec![
                    Expr::Not(Box::new(cmp("is_test", Op::Eq, Value::Bool(true)))),
                    cmp("custom_fields.source", Op::Has, Value::String("web".into())),
                ]),
            ]))
        );
        assert_eq!(parse("n >= -3.5").unwrap(), Some(cmp("n", Op::Ge, Value::Number(-3.5))));
        assert_eq!(parse("  ").unwrap(), None);
    }

    #[test]
    fn errors_point_at_the_fault() {
        let cases = [
            ("display_name", 12),
            ("display_name = ", 15),
            ("display_name ~ 1", 13),
            ("(a = 1", 0),
            ("a = 1 b = 2", 6),
            ("a = \"open", 4),
            ("a = 1 AND", 9),
            ("a ! 1", 2),
            (".a = 1", 0),
            ("a = 1e999", 4),
        ];
        for (filter, pos) in cases {
            let error = parse(filter).unwrap_err();
            assert_eq!(error.pos, pos, "{filter}: {error}");
        }
    }

    #[test]
    fn refuses_nul_and_reads_custom_keys_with_dashes() {
        assert_eq!(parse("display_name = \"a\0b\"").unwrap_err().pos, 17);
        assert!(parse("a\0 = 1").is_err());
        assert_eq!(
            parse("custom_fields.my-key = 1").unwrap(),
            Some(cmp("custom_fields.my-key", Op::Eq, Value::Number(1.0)))
        );
        // Outside a path '-' still negates.
        assert_eq!(parse("-a = 1").unwrap(), Some(Expr::Not(Box::new(cmp("a", Op::Eq, Value::Number(1.0))))));
    }

    #[test]
    fn limits_length_and_depth() {
        assert!(parse(&"a = 1 AND ".repeat(300)).is_err());
        let deep = format!("{}a = 1{}", "(".repeat(40), ")".repeat(40));
        assert!(parse(&deep).unwrap_err().message.contains("deeper"));
        let ok = format!("{}a = 1{}", "(".repeat(30), ")".repeat(30));
        assert!(parse(&ok).is_ok());
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            // NUL is refused in filters; every other character round-trips.
            any::<String>().prop_map(|s| Value::String(s.replace('\0', ""))),
            (-1e12f64..1e12).prop_map(Value::Number),
            any::<bool>().prop_map(Value::Bool),
            "[A-Z][A-Z_]{0,12}"
                .prop_filter("keywords are not values", |w| !["AND", "OR", "NOT"].contains(&w.as_str()))
                .prop_map(Value::Word),
        ]
    }

    fn expr() -> impl Strategy<Value = Expr> {
        let leaf = (
            "[a-z][a-z_]{0,8}(\\.[a-z0-9_]{1,6}){0,2}",
            prop::sample::select(vec![Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge, Op::Has]),
            value(),
        )
            .prop_filter("keywords are not field names", |(f, _, _)| !["and", "or", "not"].contains(&f.as_str()))
            .prop_map(|(f, op, v)| cmp(&f, op, v));
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
                prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
                inner.prop_map(|e| Expr::Not(Box::new(e))),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_input_parses_or_fails_cleanly(input in ".{0,300}") {
            match parse(&input) {
                Ok(_) => {}
                Err(e) => prop_assert!(e.pos <= input.chars().count()),
            }
        }

        #[test]
        fn filter_like_input_never_panics(input in "[a-z_. =!<>:()\"'0-9ANDORTN-]{0,120}") {
            let _ = parse(&input);
        }

        #[test]
        fn printing_and_parsing_gives_the_same_ast(expr in expr()) {
            let printed = expr.to_string();
            let reparsed = parse(&printed).map_err(|e| TestCaseError::fail(format!("{printed}: {e}")))?;
            prop_assert_eq!(reparsed, Some(expr), "{}", printed);
        }
    }
}
