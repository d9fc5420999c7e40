//! Characters to tokens. Every token carries the 1-based column (in characters) it starts at.

use super::QueryError;

/// What a token is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenKind {
    /// A word: a keyword, a function name, a path segment or an alias (as written).
    Ident(String),
    /// A number literal, already converted; always finite and non-negative.
    Number(f64),
    /// A string literal, escapes resolved.
    Str(String),
    /// A property name escaped as `[[name]]` right after a `.` (`configurations.[[cfg-1]]`,
    /// `tags.[[group]]`): taken as written, keywords included.
    Escaped(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Star,
    Plus,
    Minus,
    Slash,
    Percent,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// The end of the input.
    End,
}

/// A token, where it starts, and its text as written (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub kind: TokenKind,
    pub column: usize,
    pub text: String,
}

impl Token {
    /// The token as an error message shows it: `'text'`, or `end of input`.
    pub fn describe(&self) -> String {
        if self.kind == TokenKind::End {
            return "end of input".to_owned();
        }
        const MAX: usize = 40;
        if self.text.chars().count() > MAX {
            let short: String = self.text.chars().take(MAX).collect();
            format!("'{short}…'")
        } else {
            format!("'{}'", self.text)
        }
    }

    /// Whether the token is the keyword `kw` (upper case), ignoring case.
    pub fn is_keyword(&self, kw: &str) -> bool {
        matches!(&self.kind, TokenKind::Ident(w) if w.eq_ignore_ascii_case(kw))
    }
}

/// Splits `input` into tokens, ending with [`TokenKind::End`].
pub(crate) fn tokenize(input: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = input.chars().collect();
    let mut lexer = Lexer {
        chars: &chars,
        pos: 0,
        after_dot: false,
    };
    let mut tokens = Vec::new();
    loop {
        let token = lexer.next_token()?;
        lexer.after_dot = token.kind == TokenKind::Dot;
        let end = token.kind == TokenKind::End;
        tokens.push(token);
        if end {
            return Ok(tokens);
        }
    }
}

struct Lexer<'a> {
    chars: &'a [char],
    /// 0-based index of the next character.
    pos: usize,
    /// Whether the previous token was `.`: only there does `[[` open an escaped name (elsewhere
    /// it is an array inside an array).
    after_dot: bool,
}

fn is_word_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn text(&self, start: usize) -> String {
        self.chars[start..self.pos].iter().collect()
    }

    fn next_token(&mut self) -> Result<Token, QueryError> {
        while self.peek(0).is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
        let start = self.pos;
        let column = start + 1;
        let Some(c) = self.peek(0) else {
            return Ok(Token {
                kind: TokenKind::End,
                column,
                text: String::new(),
            });
        };
        let kind = if is_word_start(c) {
            while self.peek(0).is_some_and(is_word_char) {
                self.pos += 1;
            }
            TokenKind::Ident(self.text(start))
        } else if c.is_ascii_digit() {
            self.number()?
        } else if c == '\'' || c == '"' {
            TokenKind::Str(self.string(c)?)
        } else if c == '[' && self.peek(1) == Some('[') && self.after_dot {
            TokenKind::Escaped(self.escaped_name()?)
        } else {
            self.pos += 1;
            let two = |lexer: &mut Self, next: char, yes: TokenKind, no: TokenKind| {
                if lexer.peek(0) == Some(next) {
                    lexer.pos += 1;
                    yes
                } else {
                    no
                }
            };
            match c {
                '(' => TokenKind::LParen,
                ')' => TokenKind::RParen,
                '[' => TokenKind::LBracket,
                ']' => TokenKind::RBracket,
                ',' => TokenKind::Comma,
                '.' => TokenKind::Dot,
                '*' => TokenKind::Star,
                '+' => TokenKind::Plus,
                '-' => TokenKind::Minus,
                '/' => TokenKind::Slash,
                '%' => TokenKind::Percent,
                '=' => TokenKind::Eq,
                '>' => two(self, '=', TokenKind::Ge, TokenKind::Gt),
                '<' => match self.peek(0) {
                    Some('=') => {
                        self.pos += 1;
                        TokenKind::Le
                    }
                    Some('>') => {
                        self.pos += 1;
                        TokenKind::Ne
                    }
                    _ => TokenKind::Lt,
                },
                '!' => {
                    if self.peek(0) == Some('=') {
                        self.pos += 1;
                        TokenKind::Ne
                    } else {
                        return Err(QueryError::new(
                            column,
                            "unexpected '!': the not-equal operator is '!=' (or '<>'); negation is NOT",
                        ));
                    }
                }
                _ => {
                    return Err(QueryError::new(
                        column,
                        format!("unexpected character {}", describe_char(c)),
                    ));
                }
            }
        };
        Ok(Token {
            kind,
            column,
            text: self.text(start),
        })
    }

    /// The name inside `[[…]]`; the current character is the first `[`.
    fn escaped_name(&mut self) -> Result<String, QueryError> {
        let column = self.pos + 1;
        self.pos += 2;
        let start = self.pos;
        while self.pos < self.chars.len() {
            if self.peek(0) == Some(']') && self.peek(1) == Some(']') {
                let name = self.text(start);
                self.pos += 2;
                if name.is_empty() {
                    return Err(QueryError::new(
                        column,
                        "empty escaped property name '[[]]'; write the name inside, as in [[group]]",
                    ));
                }
                return Ok(name);
            }
            self.pos += 1;
        }
        Err(QueryError::new(
            column,
            "unterminated escaped property name: '[[' needs a closing ']]'",
        ))
    }

    /// A decimal (`12`, `1.5`, `2e-3`) or hexadecimal (`0x1F`) number.
    fn number(&mut self) -> Result<TokenKind, QueryError> {
        let start = self.pos;
        let column = start + 1;
        let value = if self.peek(0) == Some('0') && matches!(self.peek(1), Some('x' | 'X')) {
            self.pos += 2;
            let digits_start = self.pos;
            while self.peek(0).is_some_and(|c| c.is_ascii_hexdigit()) {
                self.pos += 1;
            }
            let digits = self.text(digits_start);
            if digits.is_empty() {
                return Err(QueryError::new(
                    column,
                    "expected hexadecimal digits after '0x'",
                ));
            }
            // Twin integers fit in 53 bits; anything wider is out of range.
            match u64::from_str_radix(&digits, 16) {
                Ok(v) if v <= (1u64 << 53) => v as f64,
                _ => {
                    return Err(QueryError::new(
                        column,
                        format!(
                            "hexadecimal number 0x{digits} is too large (at most 0x20000000000000)"
                        ),
                    ));
                }
            }
        } else {
            self.digits();
            if self.peek(0) == Some('.') && self.peek(1).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
                self.digits();
            }
            if matches!(self.peek(0), Some('e' | 'E')) {
                let sign = usize::from(matches!(self.peek(1), Some('+' | '-')));
                if self.peek(1 + sign).is_some_and(|c| c.is_ascii_digit()) {
                    self.pos += 1 + sign;
                    self.digits();
                } else {
                    return Err(QueryError::new(
                        column,
                        format!("expected digits in the exponent of '{}'", self.text(start)),
                    ));
                }
            }
            let text = self.text(start);
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => v,
                _ => {
                    return Err(QueryError::new(
                        column,
                        format!("number {text} is out of range"),
                    ));
                }
            }
        };
        if self.peek(0).is_some_and(is_word_char) {
            while self.peek(0).is_some_and(is_word_char) {
                self.pos += 1;
            }
            return Err(QueryError::new(
                column,
                format!(
                    "invalid number '{}' (a name cannot start with a digit; write ['…'] for such a key)",
                    self.text(start)
                ),
            ));
        }
        Ok(TokenKind::Number(value))
    }

    fn digits(&mut self) {
        while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    /// A string literal opened by `quote`; the cursor is on the opening quote.
    fn string(&mut self, quote: char) -> Result<String, QueryError> {
        let column = self.pos + 1;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek(0) else {
                return Err(QueryError::new(
                    column,
                    format!(
                        "unterminated string: expected a closing {quote} before the end of input"
                    ),
                ));
            };
            self.pos += 1;
            if c == quote {
                return Ok(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let escape_column = self.pos;
            let Some(e) = self.peek(0) else {
                return Err(QueryError::new(
                    escape_column,
                    "unterminated string: input ends after '\\'",
                ));
            };
            self.pos += 1;
            match e {
                '\'' | '"' | '\\' | '/' => out.push(e),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => {
                    let unit = self.hex4(escape_column)?;
                    let c = if (0xD800..0xDC00).contains(&unit) {
                        // A high surrogate must be followed by `\u` and a low surrogate.
                        if self.peek(0) == Some('\\') && self.peek(1) == Some('u') {
                            self.pos += 2;
                            let low = self.hex4(escape_column)?;
                            if (0xDC00..0xE000).contains(&low) {
                                char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                            } else {
                                None
                            }
                        } else {
                            None
                        }
                    } else {
                        char::from_u32(unit)
                    };
                    let Some(c) = c else {
                        return Err(QueryError::new(
                            escape_column,
                            "invalid \\u escape: a UTF-16 surrogate must come in a high-low pair",
                        ));
                    };
                    out.push(c);
                }
                other => {
                    return Err(QueryError::new(
                        escape_column,
                        format!(
                            "invalid escape '\\{other}' in string; allowed: \\' \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX"
                        ),
                    ));
                }
            }
        }
    }

    /// Four hex digits after `\u`.
    fn hex4(&mut self, escape_column: usize) -> Result<u32, QueryError> {
        let mut value = 0;
        for _ in 0..4 {
            let digit = self.peek(0).and_then(|c| c.to_digit(16)).ok_or_else(|| {
                QueryError::new(
                    escape_column,
                    "invalid \\u escape: expected four hexadecimal digits",
                )
            })?;
            value = value * 16 + digit;
            self.pos += 1;
        }
        Ok(value)
    }
}

/// A character for an error message, visible even when it is whitespace or a control.
fn describe_char(c: char) -> String {
    if c.is_control() || c.is_whitespace() {
        format!("U+{:04X}", u32::from(c))
    } else {
        format!("'{c}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(input: &str) -> Vec<TokenKind> {
        tokenize(input)
            .unwrap()
            .into_iter()
            .map(|t| t.kind)
            .collect()
    }

    fn err(input: &str) -> QueryError {
        tokenize(input).unwrap_err()
    }

    #[test]
    fn operators_and_columns() {
        let tokens = tokenize("a<>b != c<=d>=e<f>g").unwrap();
        let ops: Vec<_> = tokens
            .iter()
            .filter(|t| !matches!(t.kind, TokenKind::Ident(_)))
            .map(|t| (t.kind.clone(), t.column))
            .collect();
        assert_eq!(
            ops,
            [
                (TokenKind::Ne, 2),
                (TokenKind::Ne, 6),
                (TokenKind::Le, 10),
                (TokenKind::Ge, 13),
                (TokenKind::Lt, 16),
                (TokenKind::Gt, 18),
                (TokenKind::End, 20),
            ]
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let tokens = tokenize("'été' x").unwrap();
        assert_eq!(tokens[1].column, 7);
    }

    #[test]
    fn numbers() {
        assert_eq!(
            kinds("12 1.5 2e3 2E-3 0x1F 0XfF"),
            [
                TokenKind::Number(12.0),
                TokenKind::Number(1.5),
                TokenKind::Number(2000.0),
                TokenKind::Number(0.002),
                TokenKind::Number(31.0),
                TokenKind::Number(255.0),
                TokenKind::End
            ]
        );
        // `1.` is the number 1 followed by a dot.
        assert_eq!(
            kinds("1.x"),
            [
                TokenKind::Number(1.0),
                TokenKind::Dot,
                TokenKind::Ident("x".into()),
                TokenKind::End
            ]
        );
    }

    #[test]
    fn bad_numbers() {
        assert_eq!(err("x = 0x").column, 5);
        assert!(err("0x").message.contains("hexadecimal digits"));
        assert!(err("0x1FFFFFFFFFFFFFFFFF").message.contains("too large"));
        assert!(err("1e999").message.contains("out of range"));
        assert!(err("1e").message.contains("exponent"));
        let e = err("x = 12ab");
        assert_eq!(e.column, 5);
        assert!(e.message.contains("'12ab'"), "{e}");
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(
            kinds(r#"'it\'s' "say \"hi\"" 'a\\b' '\u00e9\uD83D\uDE00' 'x"y' "x'y" '\n\t\/'"#),
            [
                TokenKind::Str("it's".into()),
                TokenKind::Str("say \"hi\"".into()),
                TokenKind::Str("a\\b".into()),
                TokenKind::Str("é😀".into()),
                TokenKind::Str("x\"y".into()),
                TokenKind::Str("x'y".into()),
                TokenKind::Str("\n\t/".into()),
                TokenKind::End
            ]
        );
    }

    #[test]
    fn bad_strings() {
        let e = err("x = 'abc");
        assert_eq!(e.column, 5);
        assert!(e.message.contains("unterminated"));
        let e = err(r"x = 'a\qb'");
        assert_eq!(e.column, 7);
        assert!(e.message.contains("'\\q'"), "{e}");
        assert!(err(r"'\u12'").message.contains("four hexadecimal"));
        assert!(err(r"'\uD83D'").message.contains("surrogate"));
        assert!(err(r"'\uDE00'").message.contains("surrogate"));
        assert!(err("'abc\\").message.contains("unterminated"));
    }

    #[test]
    fn bad_characters() {
        let e = err("x = #");
        assert_eq!(e.column, 5);
        assert_eq!(e.message, "unexpected character '#'");
        assert!(err("x ! y").message.contains("'!='"));
        assert!(err("x = \u{0}").message.contains("U+0000"));
    }

    #[test]
    fn words() {
        assert_eq!(
            kinds("$version _a1 état"),
            [
                TokenKind::Ident("$version".into()),
                TokenKind::Ident("_a1".into()),
                TokenKind::Ident("état".into()),
                TokenKind::End
            ]
        );
    }
}
