//! Tokens to a tree: a recursive-descent parser with one backtracking point (a `(` that opens
//! either a condition or an arithmetic expression), and the checks that need the whole query.

use super::ast::{
    Aggregate, ArithOp, Call, Collection, CompareOp, Condition, Expr, Function, Literal, Path,
    Projection, Query, Select, SelectItem, is_keyword,
};
use super::eval::output_names;
use super::lexer::{Token, TokenKind, tokenize};
use super::{Dialect, MAX_NESTING, MAX_QUERY_CHARS, QueryError};

/// The top-level twin properties, as the service spells them. A path's first segment matching
/// one of these ignoring case is stored with this spelling.
const SYSTEM_PROPERTIES: [&str; 21] = [
    "deviceId",
    "moduleId",
    "etag",
    "deviceEtag",
    "version",
    "status",
    "statusReason",
    "statusUpdateTime",
    "connectionState",
    "connectionStateUpdatedTime",
    "lastActivityTime",
    "cloudToDeviceMessageCount",
    "authenticationType",
    "x509Thumbprint",
    "modelId",
    "capabilities",
    "deviceScope",
    "parentScopes",
    "generationId",
    "tags",
    "properties",
];

/// The canonical spelling of a path's first segment.
pub(crate) fn canonical_first_segment(name: &str) -> String {
    SYSTEM_PROPERTIES
        .iter()
        .find(|p| p.eq_ignore_ascii_case(name))
        .map_or_else(|| name.to_owned(), |p| (*p).to_owned())
}

const AGGREGATES: [&str; 5] = ["COUNT", "AVG", "SUM", "MIN", "MAX"];

const COMPARISON_EXPECTED: &str = "a comparison operator (=, !=, <>, <, <=, >, >=), IN or NIN";

type Result<T> = std::result::Result<T, QueryError>;

/// Parses `SELECT … FROM devices …`.
pub(crate) fn parse_query(input: &str, dialect: Dialect) -> Result<Query> {
    let mut p = Parser::new(input, dialect)?;
    let query = p.query()?;
    Ok(query)
}

/// Parses a bare condition.
pub(crate) fn parse_condition(input: &str, dialect: Dialect) -> Result<Condition> {
    let mut p = Parser::new(input, dialect)?;
    let condition = p.condition()?;
    if !p.at(&TokenKind::End) {
        return Err(p.expected("AND, OR or the end of the condition"));
    }
    Ok(condition)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    dialect: Dialect,
}

/// A select item and where it was written, for the checks made after parsing.
struct PlacedItem {
    item: SelectItem,
    column: usize,
}

impl Parser {
    fn new(input: &str, dialect: Dialect) -> Result<Self> {
        let length = input.chars().count();
        if length > MAX_QUERY_CHARS {
            return Err(QueryError::new(
                MAX_QUERY_CHARS + 1,
                format!(
                    "the query is {length} characters long; IoT Hub accepts at most {MAX_QUERY_CHARS}"
                ),
            ));
        }
        Ok(Parser {
            tokens: tokenize(input)?,
            pos: 0,
            depth: 0,
            dialect,
        })
    }

    // --- token helpers ---------------------------------------------------------------------

    fn peek(&self) -> &Token {
        // The token list always ends with `End`, and `advance` never moves past it.
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn peek_at(&self, ahead: usize) -> &Token {
        &self.tokens[(self.pos + ahead).min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if token.kind != TokenKind::End {
            self.pos += 1;
        }
        token
    }

    fn at(&self, kind: &TokenKind) -> bool {
        &self.peek().kind == kind
    }

    fn at_keyword(&self, kw: &str) -> bool {
        self.peek().is_keyword(kw)
    }

    fn eat(&mut self, kind: &TokenKind) -> bool {
        if self.at(kind) {
            self.advance();
            true
        } else {
            false
        }
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        if self.at_keyword(kw) {
            self.advance();
            true
        } else {
            false
        }
    }

    /// An error at the current token: "expected {what}, found {token}".
    fn expected(&self, what: &str) -> QueryError {
        let token = self.peek();
        QueryError::new(
            token.column,
            format!("expected {what}, found {}", token.describe()),
        )
    }

    fn expect(&mut self, kind: &TokenKind, what: &str) -> Result<()> {
        if self.eat(kind) {
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    fn expect_keyword(&mut self, kw: &str, what: &str) -> Result<()> {
        if self.eat_keyword(kw) {
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    /// Enters one nesting level (parenthesis, NOT, unary minus, call, array).
    fn nest(&mut self) -> Result<()> {
        if self.depth >= MAX_NESTING {
            return Err(QueryError::new(
                self.peek().column,
                format!(
                    "the query nests too deeply: at most {MAX_NESTING} levels of parentheses, \
                     arithmetic operators, NOT, minus signs, calls and arrays"
                ),
            ));
        }
        self.depth += 1;
        Ok(())
    }

    fn unnest(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    // --- query -----------------------------------------------------------------------------

    fn query(&mut self) -> Result<Query> {
        self.expect_keyword("SELECT", "SELECT at the start of the query")?;
        let top = if self.eat_keyword("TOP") {
            Some(self.top_count()?)
        } else {
            None
        };
        let select = if self.eat(&TokenKind::Star) {
            None
        } else {
            Some(self.select_items()?)
        };
        self.expect_keyword(
            "FROM",
            if select.is_some() {
                "',' or FROM after the select list"
            } else {
                "FROM after 'SELECT *'"
            },
        )?;
        let from = self.collection()?;
        let condition = if self.eat_keyword("WHERE") {
            Some(self.condition()?)
        } else {
            None
        };
        let group_column = self.peek().column;
        let mut group_by = Vec::new();
        if self.eat_keyword("GROUP") {
            self.expect_keyword("BY", "BY after GROUP")?;
            loop {
                group_by.push(self.group_path()?);
                if !self.eat(&TokenKind::Comma) {
                    break;
                }
            }
        }
        if !self.at(&TokenKind::End) {
            let what = match (condition.is_some(), group_by.is_empty()) {
                (_, false) => "',' or the end of the query after GROUP BY",
                (true, true) => "AND, OR, GROUP BY or the end of the query",
                (false, true) => "WHERE, GROUP BY or the end of the query",
            };
            return Err(self.expected(what));
        }
        let select = match select {
            None if !group_by.is_empty() => {
                return Err(QueryError::new(
                    group_column,
                    "GROUP BY cannot be used with SELECT *; select the grouped attributes and aggregates instead",
                ));
            }
            None => Select::All,
            Some(items) => {
                check_projection(&items, &group_by)?;
                Select::Items(items.into_iter().map(|p| p.item).collect())
            }
        };
        Ok(Query {
            top,
            select,
            from,
            condition,
            group_by,
        })
    }

    fn top_count(&mut self) -> Result<u64> {
        let token = self.peek().clone();
        match token.kind {
            TokenKind::Number(n) if n.fract() == 0.0 && n <= 9_007_199_254_740_992.0 => {
                self.advance();
                // Exact: a whole, non-negative number within 2^53.
                Ok(n as u64)
            }
            _ => Err(self.expected("a whole number after TOP")),
        }
    }

    fn collection(&mut self) -> Result<Collection> {
        if !self.at_keyword("devices") {
            return Err(self.expected("'devices' after FROM"));
        }
        let start = self.advance();
        if self.at(&TokenKind::Dot) {
            let sub = self.peek_at(1).text.clone();
            return Err(QueryError::new(
                start.column,
                format!("FROM devices.{sub} is not supported; only FROM devices (device twins) is"),
            ));
        }
        Ok(Collection::Devices)
    }

    fn select_items(&mut self) -> Result<Vec<PlacedItem>> {
        let mut items = Vec::new();
        loop {
            let column = self.peek().column;
            if self.at(&TokenKind::Star) {
                return Err(QueryError::new(
                    column,
                    "'*' must be the whole select list (SELECT * FROM devices)",
                ));
            }
            let value = match self.aggregate()? {
                Some(aggregate) => Projection::Aggregate(aggregate),
                None => Projection::Expr(self.expr()?),
            };
            let alias = if self.eat_keyword("AS") {
                Some(self.alias()?)
            } else {
                None
            };
            items.push(PlacedItem {
                item: SelectItem { value, alias },
                column,
            });
            if !self.eat(&TokenKind::Comma) {
                return Ok(items);
            }
        }
    }

    /// `COUNT()`, `AVG(path)`, … when the next tokens are one; `None` otherwise.
    fn aggregate(&mut self) -> Result<Option<Aggregate>> {
        let TokenKind::Ident(name) = &self.peek().kind else {
            return Ok(None);
        };
        if self.peek_at(1).kind != TokenKind::LParen {
            return Ok(None);
        }
        let Some(upper) = AGGREGATES
            .iter()
            .find(|a| a.eq_ignore_ascii_case(name))
            .copied()
        else {
            return Ok(None);
        };
        self.advance();
        self.advance();
        if upper == "COUNT" {
            self.expect(
                &TokenKind::RParen,
                "')' after 'COUNT(' (COUNT takes no argument)",
            )?;
            return Ok(Some(Aggregate::Count));
        }
        if !matches!(self.peek().kind, TokenKind::Ident(_)) {
            return Err(self.expected(&format!("a property path inside {upper}(…)")));
        }
        let path = self.path()?;
        self.expect(
            &TokenKind::RParen,
            &format!("')' after the argument of {upper}"),
        )?;
        Ok(Some(match upper {
            "AVG" => Aggregate::Avg(path),
            "SUM" => Aggregate::Sum(path),
            "MIN" => Aggregate::Min(path),
            _ => Aggregate::Max(path),
        }))
    }

    fn alias(&mut self) -> Result<String> {
        match &self.peek().kind {
            TokenKind::Ident(word) if !is_keyword(word) => {
                let word = word.clone();
                self.advance();
                Ok(word)
            }
            TokenKind::Ident(_) => {
                let token = self.peek();
                Err(QueryError::new(
                    token.column,
                    format!(
                        "{} is a reserved word and cannot be an alias",
                        token.describe()
                    ),
                ))
            }
            _ => Err(self.expected("a name after AS")),
        }
    }

    fn group_path(&mut self) -> Result<Path> {
        match &self.peek().kind {
            TokenKind::Ident(word) if !is_keyword(word) => self.path(),
            _ => Err(self.expected("a property path in GROUP BY")),
        }
    }

    // --- conditions ------------------------------------------------------------------------

    fn condition(&mut self) -> Result<Condition> {
        let mut operands = vec![self.and_condition()?];
        while self.eat_keyword("OR") {
            operands.push(self.and_condition()?);
        }
        Ok(if operands.len() == 1 {
            operands.swap_remove(0)
        } else {
            Condition::Or(operands)
        })
    }

    fn and_condition(&mut self) -> Result<Condition> {
        let mut operands = vec![self.not_condition()?];
        while self.eat_keyword("AND") {
            operands.push(self.not_condition()?);
        }
        Ok(if operands.len() == 1 {
            operands.swap_remove(0)
        } else {
            Condition::And(operands)
        })
    }

    fn not_condition(&mut self) -> Result<Condition> {
        if self.at_keyword("NOT") {
            self.nest()?;
            self.advance();
            let inner = self.not_condition()?;
            self.unnest();
            return Ok(Condition::Not(Box::new(inner)));
        }
        self.atom_condition()
    }

    /// Whether the current token continues an expression into a comparison: a comparison or
    /// arithmetic operator, IN or NIN.
    fn at_operator(&self) -> bool {
        matches!(
            self.peek().kind,
            TokenKind::Eq
                | TokenKind::Ne
                | TokenKind::Lt
                | TokenKind::Le
                | TokenKind::Gt
                | TokenKind::Ge
                | TokenKind::Plus
                | TokenKind::Minus
                | TokenKind::Star
                | TokenKind::Slash
                | TokenKind::Percent
        ) || self.at_keyword("IN")
            || self.at_keyword("NIN")
    }

    fn atom_condition(&mut self) -> Result<Condition> {
        // `(` opens either a condition, `(a = 1 OR b = 2)`, or an expression, `(a + 1) > 2`.
        // Try the condition first; fall back to the expression when that fails, or when the
        // closing parenthesis is followed by an operator.
        let mut condition_error = None;
        if self.at(&TokenKind::LParen) {
            let (start, depth) = (self.pos, self.depth);
            self.nest()?;
            self.advance();
            let attempt = self.condition().and_then(|c| {
                self.expect(&TokenKind::RParen, "AND, OR or ')'")
                    .map(|()| c)
            });
            match attempt {
                Ok(c) if !self.at_operator() => {
                    self.unnest();
                    return Ok(c);
                }
                Ok(_) => {
                    let token = self.peek();
                    condition_error = Some(QueryError::new(
                        token.column,
                        format!(
                            "a parenthesised condition cannot be an operand of {}",
                            token.describe()
                        ),
                    ));
                }
                Err(e) => condition_error = Some(e),
            }
            self.pos = start;
            self.depth = depth;
        }
        // Report whichever attempt got further; the condition's error on a tie.
        let furthest = |e: QueryError, other: Option<QueryError>| match other {
            Some(o) if o.column >= e.column => o,
            _ => e,
        };
        let left = match self.expr() {
            Ok(left) => left,
            Err(e) => return Err(furthest(e, condition_error)),
        };
        let op = match self.peek().kind {
            TokenKind::Eq => Some(CompareOp::Eq),
            TokenKind::Ne => Some(CompareOp::Ne),
            TokenKind::Lt => Some(CompareOp::Lt),
            TokenKind::Le => Some(CompareOp::Le),
            TokenKind::Gt => Some(CompareOp::Gt),
            TokenKind::Ge => Some(CompareOp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            self.advance();
            let right = self.expr().map_err(|e| furthest(e, condition_error))?;
            return Ok(Condition::Compare(left, op, right));
        }
        let negated = self.at_keyword("NIN");
        if negated || self.at_keyword("IN") {
            let keyword = if negated { "NIN" } else { "IN" };
            self.advance();
            if !self.at(&TokenKind::LBracket) {
                return Err(self.expected(&format!(
                    "an array constant after {keyword}, such as ['a', 'b']"
                )));
            }
            let list = self.array()?;
            return Ok(Condition::In {
                expr: left,
                negated,
                list,
            });
        }
        match left {
            Expr::Call(call) if call.function.is_boolean() => Ok(Condition::Call(call)),
            Expr::Literal(Literal::Bool(b)) => Ok(Condition::Bool(b)),
            left => {
                let e = self.expected(&format!("{COMPARISON_EXPECTED} after '{left}'"));
                Err(furthest(e, condition_error))
            }
        }
    }

    // --- expressions -----------------------------------------------------------------------

    // Each operator of a chain such as `a + b + c` adds a level to the (left-deep) tree, so
    // counts against the nesting limit like a parenthesis: that bounds evaluation's recursion.

    fn expr(&mut self) -> Result<Expr> {
        let depth = self.depth;
        let mut left = self.term()?;
        loop {
            let op = match self.peek().kind {
                TokenKind::Plus => ArithOp::Add,
                TokenKind::Minus => ArithOp::Sub,
                _ => {
                    self.depth = depth;
                    return Ok(left);
                }
            };
            self.nest()?;
            self.advance();
            let right = self.term()?;
            left = Expr::Binary(Box::new(left), op, Box::new(right));
        }
    }

    fn term(&mut self) -> Result<Expr> {
        let depth = self.depth;
        let mut left = self.unary()?;
        loop {
            let op = match self.peek().kind {
                TokenKind::Star => ArithOp::Mul,
                TokenKind::Slash => ArithOp::Div,
                TokenKind::Percent => ArithOp::Rem,
                _ => {
                    self.depth = depth;
                    return Ok(left);
                }
            };
            self.nest()?;
            self.advance();
            let right = self.unary()?;
            left = Expr::Binary(Box::new(left), op, Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr> {
        if !self.at(&TokenKind::Minus) {
            return self.primary();
        }
        if let TokenKind::Number(n) = self.peek_at(1).kind {
            self.advance();
            self.advance();
            return Ok(Expr::Literal(Literal::Number(-n)));
        }
        self.nest()?;
        self.advance();
        let inner = self.unary()?;
        self.unnest();
        Ok(Expr::Negate(Box::new(inner)))
    }

    fn primary(&mut self) -> Result<Expr> {
        const VALUE: &str = "a value (a property path, a literal, a function call or '(')";
        let token = self.peek().clone();
        match &token.kind {
            TokenKind::Number(n) => {
                self.advance();
                Ok(Expr::Literal(Literal::Number(*n)))
            }
            TokenKind::Str(s) => {
                self.advance();
                Ok(Expr::Literal(Literal::String(s.clone())))
            }
            TokenKind::LBracket => Ok(Expr::Literal(Literal::Array(self.array()?))),
            TokenKind::LParen => {
                self.nest()?;
                self.advance();
                let inner = self.expr()?;
                self.expect(&TokenKind::RParen, "')'")?;
                self.unnest();
                Ok(inner)
            }
            TokenKind::Ident(word) => {
                if let Some(literal) = keyword_literal(word) {
                    self.advance();
                    return Ok(Expr::Literal(literal));
                }
                if is_keyword(word) {
                    return Err(self.expected(VALUE));
                }
                if self.peek_at(1).kind == TokenKind::LParen {
                    return Ok(Expr::Call(self.call()?));
                }
                Ok(Expr::Path(self.path()?))
            }
            _ => Err(self.expected(VALUE)),
        }
    }

    fn call(&mut self) -> Result<Call> {
        let name = self.advance();
        let Some(function) = Function::from_name(&name.text) else {
            let message = if AGGREGATES
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&name.text))
            {
                format!(
                    "{}() is an aggregate, allowed only in the SELECT list",
                    name.text.to_ascii_uppercase()
                )
            } else {
                let known: Vec<&str> = Function::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown function '{}'; supported: {}",
                    name.text,
                    known.join(", ")
                )
            };
            return Err(QueryError::new(name.column, message));
        };
        if self.dialect == Dialect::Azure && function != Function::IsDefined {
            return Err(QueryError::new(
                name.column,
                format!(
                    "{} is not supported in IoT Hub twin queries: Azure IoT Hub accepts only \
                     IS_DEFINED there ({} is a message-routing function, and Azure answers 400); \
                     rewrite the condition with comparisons, IN or IS_DEFINED, or opt in to the \
                     local superset (casement hub --query-dialect extended)",
                    function.name(),
                    function.name()
                ),
            ));
        }
        self.nest()?;
        self.advance(); // `(`
        let mut args = Vec::new();
        if !self.at(&TokenKind::RParen) {
            loop {
                args.push(self.expr()?);
                if !self.eat(&TokenKind::Comma) {
                    break;
                }
            }
        }
        self.expect(&TokenKind::RParen, "',' or ')' in the argument list")?;
        self.unnest();
        let arity = function.arity();
        if args.len() != arity {
            return Err(QueryError::new(
                name.column,
                format!(
                    "{} takes {arity} argument{}, found {}",
                    function.name(),
                    if arity == 1 { "" } else { "s" },
                    args.len()
                ),
            ));
        }
        Ok(Call { function, args })
    }

    /// A path; the current token is its first word, which is not a keyword.
    fn path(&mut self) -> Result<Path> {
        let first = self.advance();
        let mut segments = vec![canonical_first_segment(&first.text)];
        loop {
            if self.eat(&TokenKind::Dot) {
                match &self.peek().kind {
                    // After a dot the extended dialect takes any word as a key, keywords
                    // included (`tags.select`); Azure refuses a bare reserved word.
                    TokenKind::Ident(word) => {
                        if self.dialect == Dialect::Azure && is_keyword(word) {
                            let token = self.peek();
                            return Err(QueryError::new(
                                token.column,
                                format!(
                                    "{} is a reserved word, and Azure IoT Hub refuses it as a bare \
                                     property name; escape it as [[{word}]] (as in tags.[[{word}]])",
                                    token.describe()
                                ),
                            ));
                        }
                        segments.push(word.clone());
                        self.advance();
                    }
                    TokenKind::Escaped(word) => {
                        segments.push(word.clone());
                        self.advance();
                    }
                    _ => return Err(self.expected("a property name after '.'")),
                }
            } else if self.at(&TokenKind::LBracket) {
                self.advance();
                match &self.peek().kind {
                    TokenKind::Str(key) => {
                        segments.push(key.clone());
                        self.advance();
                    }
                    _ => return Err(self.expected("a quoted property name inside […]")),
                }
                self.expect(&TokenKind::RBracket, "']' after the property name")?;
            } else {
                return Ok(Path { segments });
            }
        }
    }

    /// An array constant; the current token is `[`.
    fn array(&mut self) -> Result<Vec<Literal>> {
        self.nest()?;
        self.advance();
        let mut items = Vec::new();
        if !self.eat(&TokenKind::RBracket) {
            loop {
                items.push(self.constant()?);
                if self.eat(&TokenKind::RBracket) {
                    break;
                }
                self.expect(&TokenKind::Comma, "',' or ']' in the array")?;
            }
        }
        self.unnest();
        Ok(items)
    }

    /// One element of an array constant.
    fn constant(&mut self) -> Result<Literal> {
        const CONSTANT: &str = "a constant (string, number, true, false, null or array)";
        let token = self.peek().clone();
        let literal = match &token.kind {
            TokenKind::Number(n) => Literal::Number(*n),
            TokenKind::Str(s) => Literal::String(s.clone()),
            TokenKind::Minus => match self.peek_at(1).kind {
                TokenKind::Number(n) => {
                    self.advance();
                    Literal::Number(-n)
                }
                _ => {
                    self.advance();
                    return Err(self.expected("a number after '-'"));
                }
            },
            TokenKind::LBracket => return Ok(Literal::Array(self.array()?)),
            TokenKind::Ident(word) => match keyword_literal(word) {
                Some(Literal::Undefined) => {
                    return Err(QueryError::new(
                        token.column,
                        "undefined cannot be an array element",
                    ));
                }
                Some(literal) => literal,
                None => return Err(self.expected(CONSTANT)),
            },
            _ => return Err(self.expected(CONSTANT)),
        };
        self.advance();
        Ok(literal)
    }
}

/// `true`, `false`, `null` and `undefined`, in any case.
fn keyword_literal(word: &str) -> Option<Literal> {
    [
        ("true", Literal::Bool(true)),
        ("false", Literal::Bool(false)),
        ("null", Literal::Null),
        ("undefined", Literal::Undefined),
    ]
    .into_iter()
    .find(|(k, _)| k.eq_ignore_ascii_case(word))
    .map(|(_, literal)| literal)
}

/// The checks on a select list that need the whole query: unique output names, and — when the
/// query aggregates — every plain item is a GROUP BY attribute.
fn check_projection(items: &[PlacedItem], group_by: &[Path]) -> Result<()> {
    let plain: Vec<SelectItem> = items.iter().map(|p| p.item.clone()).collect();
    let names = output_names(&plain);
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Err(QueryError::new(
                items[i].column,
                format!("duplicate output name '{name}'; rename one of them with AS"),
            ));
        }
    }
    let aggregating = !group_by.is_empty()
        || plain
            .iter()
            .any(|i| matches!(i.value, Projection::Aggregate(_)));
    if aggregating {
        for placed in items {
            if let Projection::Expr(expr) = &placed.item.value {
                let grouped = matches!(expr, Expr::Path(p) if group_by.contains(p));
                if !grouped {
                    let why = if group_by.is_empty() {
                        "must be inside an aggregate (or listed in GROUP BY) when the query has aggregates"
                    } else {
                        "must be listed in GROUP BY (or be inside an aggregate)"
                    };
                    return Err(QueryError::new(placed.column, format!("'{expr}' {why}")));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // These tests cover the whole language, so they parse the extended dialect; the Azure
    // dialect's refusals are tested in `iothub/tests/integration/dialect.rs`.
    fn parse_query(input: &str) -> Result<Query> {
        super::parse_query(input, Dialect::Extended)
    }

    fn parse_condition(input: &str) -> Result<Condition> {
        super::parse_condition(input, Dialect::Extended)
    }

    fn path(s: &str) -> Path {
        Path {
            segments: s.split('.').map(str::to_owned).collect(),
        }
    }

    fn cond(s: &str) -> Condition {
        parse_condition(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> QueryError {
        parse_query(s).expect_err(s)
    }

    fn cond_err(s: &str) -> QueryError {
        parse_condition(s).expect_err(s)
    }

    fn cmp(p: &str, op: CompareOp, lit: Literal) -> Condition {
        Condition::Compare(Expr::Path(path(p)), op, Expr::Literal(lit))
    }

    #[test]
    fn precedence_not_and_or() {
        let a = || cmp("tags.a", CompareOp::Eq, Literal::Number(1.0));
        let b = || cmp("tags.b", CompareOp::Eq, Literal::Number(2.0));
        let c = || cmp("tags.c", CompareOp::Eq, Literal::Number(3.0));
        let not = |c: Condition| Condition::Not(Box::new(c));
        assert_eq!(
            cond("tags.a = 1 OR tags.b = 2 AND tags.c = 3"),
            Condition::Or(vec![a(), Condition::And(vec![b(), c()])])
        );
        assert_eq!(
            cond("(tags.a = 1 OR tags.b = 2) AND tags.c = 3"),
            Condition::And(vec![Condition::Or(vec![a(), b()]), c()])
        );
        assert_eq!(
            cond("NOT tags.a = 1 AND tags.b = 2"),
            Condition::And(vec![not(a()), b()])
        );
        assert_eq!(
            cond("NOT (tags.a = 1 AND tags.b = 2)"),
            not(Condition::And(vec![a(), b()]))
        );
        // A chain is one node; parentheses keep their grouping.
        assert_eq!(
            cond("tags.a = 1 OR tags.b = 2 OR tags.c = 3"),
            Condition::Or(vec![a(), b(), c()])
        );
        assert_eq!(
            cond("(tags.a = 1 OR tags.b = 2) OR tags.c = 3"),
            Condition::Or(vec![Condition::Or(vec![a(), b()]), c()])
        );
        assert_eq!(
            cond("(tags.a = 1 OR tags.b = 2) OR tags.c = 3").to_string(),
            "(tags.a = 1 OR tags.b = 2) OR tags.c = 3"
        );
    }

    #[test]
    fn arithmetic_precedence_and_parenthesised_operands() {
        let n = |v: f64| Box::new(Expr::Literal(Literal::Number(v)));
        let x = || Box::new(Expr::Path(path("tags.x")));
        assert_eq!(
            cond("tags.x + 2 * 3 > 1"),
            Condition::Compare(
                Expr::Binary(
                    x(),
                    ArithOp::Add,
                    Box::new(Expr::Binary(n(2.0), ArithOp::Mul, n(3.0)))
                ),
                CompareOp::Gt,
                Expr::Literal(Literal::Number(1.0))
            )
        );
        assert_eq!(
            cond("(tags.x + 2) * 3 > 1"),
            Condition::Compare(
                Expr::Binary(
                    Box::new(Expr::Binary(x(), ArithOp::Add, n(2.0))),
                    ArithOp::Mul,
                    n(3.0)
                ),
                CompareOp::Gt,
                Expr::Literal(Literal::Number(1.0))
            )
        );
        assert_eq!(
            cond("((tags.x)) = -1"),
            Condition::Compare(
                Expr::Path(path("tags.x")),
                CompareOp::Eq,
                Expr::Literal(Literal::Number(-1.0))
            )
        );
        assert_eq!(
            cond("-tags.x = 1 - -2"),
            Condition::Compare(
                Expr::Negate(x()),
                CompareOp::Eq,
                Expr::Binary(n(1.0), ArithOp::Sub, n(-2.0))
            )
        );
    }

    #[test]
    fn both_not_equal_spellings() {
        assert_eq!(cond("status != 'enabled'"), cond("status <> 'enabled'"));
    }

    #[test]
    fn keywords_functions_and_system_properties_ignore_case() {
        let q = parse_query("select top 5 DeviceId, LASTACTIVITYTIME from DEVICES where Is_Defined(Tags.env) and NOT STATUS in ['x'] group by deviceid").unwrap_err();
        // … but the plain items must be grouped: checked after parsing, so the rest parsed.
        assert!(q.message.contains("GROUP BY"), "{q}");
        let q = parse_query("select top 5 DeviceId, LASTACTIVITYTIME from DEVICES where Is_Defined(Tags.env) and NOT STATUS nin ['x']").unwrap();
        assert_eq!(
            q.to_string(),
            "SELECT TOP 5 deviceId, lastActivityTime FROM devices WHERE IS_DEFINED(tags.env) AND NOT status NIN ['x']"
        );
    }

    #[test]
    fn keys_under_tags_and_properties_keep_their_case() {
        assert_eq!(
            cond("tags.Env = 'a'"),
            cmp("tags.Env", CompareOp::Eq, Literal::String("a".into()))
        );
        assert_eq!(
            cond("Properties.reported.Fw = 'a'"),
            cmp(
                "properties.reported.Fw",
                CompareOp::Eq,
                Literal::String("a".into())
            )
        );
    }

    #[test]
    fn bracketed_keys_and_keyword_segments() {
        assert_eq!(
            cond("tags['my-key'].select = 1"),
            Condition::Compare(
                Expr::Path(Path {
                    segments: vec!["tags".into(), "my-key".into(), "select".into()]
                }),
                CompareOp::Eq,
                Expr::Literal(Literal::Number(1.0))
            )
        );
        assert_eq!(
            cond("properties.desired.$version >= 2"),
            cmp(
                "properties.desired.$version",
                CompareOp::Ge,
                Literal::Number(2.0)
            )
        );
    }

    #[test]
    fn literals() {
        assert_eq!(
            cond("tags.x IN ['a', \"b\", 1, -2.5, 0x10, true, false, null, [1, [2]]]"),
            Condition::In {
                expr: Expr::Path(path("tags.x")),
                negated: false,
                list: vec![
                    Literal::String("a".into()),
                    Literal::String("b".into()),
                    Literal::Number(1.0),
                    Literal::Number(-2.5),
                    Literal::Number(16.0),
                    Literal::Bool(true),
                    Literal::Bool(false),
                    Literal::Null,
                    Literal::Array(vec![
                        Literal::Number(1.0),
                        Literal::Array(vec![Literal::Number(2.0)])
                    ]),
                ]
            }
        );
        assert_eq!(
            cond("tags.x = undefined"),
            cmp("tags.x", CompareOp::Eq, Literal::Undefined)
        );
        assert_eq!(
            cond("tags.x NIN []"),
            Condition::In {
                expr: Expr::Path(path("tags.x")),
                negated: true,
                list: vec![]
            }
        );
        assert_eq!(cond("TRUE"), Condition::Bool(true));
        assert_eq!(cond("(false)"), Condition::Bool(false));
    }

    #[test]
    fn the_documented_error_shape() {
        let e = cond_err("tags.role = 'gateway' AND tags.env prod");
        assert_eq!(e.column, 36);
        assert_eq!(
            e.to_string(),
            "column 36: expected a comparison operator (=, !=, <>, <, <=, >, >=), IN or NIN after 'tags.env', found 'prod'"
        );
    }

    #[test]
    fn condition_errors() {
        let e = cond_err("tags.env = 'prod' tags.x = 1");
        assert_eq!(
            (e.column, e.message.as_str()),
            (
                19,
                "expected AND, OR or the end of the condition, found 'tags'"
            )
        );
        let e = cond_err("tags.env =");
        assert_eq!(e.column, 11);
        assert!(e.message.ends_with("found end of input"), "{e}");
        let e = cond_err("(tags.a = 1 OR tags.b = 2");
        assert_eq!(e.column, 26);
        assert!(e.message.contains("')'"), "{e}");
        let e = cond_err("(tags.a = 1) = true");
        assert_eq!(e.column, 14);
        assert!(e.message.contains("parenthesised condition"), "{e}");
        let e = cond_err("tags.x IN 'a'");
        assert_eq!(e.column, 11);
        assert!(e.message.contains("array constant after IN"), "{e}");
        let e = cond_err("tags.x IN [tags.y]");
        assert_eq!(e.column, 12);
        assert!(e.message.starts_with("expected a constant"), "{e}");
        let e = cond_err("tags.x IN [undefined]");
        assert_eq!(e.message, "undefined cannot be an array element");
        let e = cond_err("FOO(tags.x)");
        assert_eq!(e.column, 1);
        assert!(
            e.message
                .starts_with("unknown function 'FOO'; supported: IS_DEFINED"),
            "{e}"
        );
        let e = cond_err("is_defined(tags.x, tags.y)");
        assert_eq!(e.message, "IS_DEFINED takes 1 argument, found 2");
        let e = cond_err("starts_with(tags.x)");
        assert_eq!(e.message, "STARTS_WITH takes 2 arguments, found 1");
        let e = cond_err("count() > 1");
        assert_eq!(
            e.message,
            "COUNT() is an aggregate, allowed only in the SELECT list"
        );
        let e = cond_err("lower(tags.x)");
        assert!(e.message.contains("after 'LOWER(tags.x)'"), "{e}");
        let e = cond_err("tags. = 1");
        assert_eq!(
            (e.column, e.message.as_str()),
            (7, "expected a property name after '.', found '='")
        );
        let e = cond_err("tags.x = = 1");
        assert!(e.message.starts_with("expected a value"), "{e}");
        let e = cond_err("");
        assert_eq!(
            (e.column, e.message.as_str()),
            (
                1,
                "expected a value (a property path, a literal, a function call or '('), found end of input"
            )
        );
        let e = cond_err("select = 1");
        assert_eq!(e.column, 1);
    }

    #[test]
    fn query_shapes() {
        let q = parse_query("SELECT * FROM devices").unwrap();
        assert_eq!(
            q,
            Query {
                top: None,
                select: Select::All,
                from: Collection::Devices,
                condition: None,
                group_by: vec![]
            }
        );
        let q = parse_query("SELECT TOP 0x10 * FROM devices").unwrap();
        assert_eq!(q.top, Some(16));
        let q = parse_query(
            "SELECT properties.reported.telemetryConfig.status AS status, COUNT() AS numberOfDevices FROM devices GROUP BY properties.reported.telemetryConfig.status",
        )
        .unwrap();
        assert_eq!(
            q.group_by,
            [path("properties.reported.telemetryConfig.status")]
        );
        assert_eq!(
            q.select,
            Select::Items(vec![
                SelectItem {
                    value: Projection::Expr(Expr::Path(path(
                        "properties.reported.telemetryConfig.status"
                    ))),
                    alias: Some("status".into())
                },
                SelectItem {
                    value: Projection::Aggregate(Aggregate::Count),
                    alias: Some("numberOfDevices".into())
                },
            ])
        );
        let q = parse_query("SELECT AVG(tags.a), sum(tags.a) AS s, Min(tags.a) AS lo, MAX(tags.a) AS hi FROM devices").unwrap();
        assert_eq!(
            q.to_string(),
            "SELECT AVG(tags.a), SUM(tags.a) AS s, MIN(tags.a) AS lo, MAX(tags.a) AS hi FROM devices"
        );
    }

    #[test]
    fn query_errors() {
        let e = err("SELEC * FROM devices");
        assert_eq!(
            (e.column, e.message.as_str()),
            (
                1,
                "expected SELECT at the start of the query, found 'SELEC'"
            )
        );
        let e = err("SELECT * FROM devices.jobs");
        assert_eq!(
            (e.column, e.message.as_str()),
            (
                15,
                "FROM devices.jobs is not supported; only FROM devices (device twins) is"
            )
        );
        let e = err("SELECT * FROM devices.modules");
        assert!(e.message.contains("not supported"), "{e}");
        let e = err("SELECT * FROM twins");
        assert_eq!(
            (e.column, e.message.as_str()),
            (15, "expected 'devices' after FROM, found 'twins'")
        );
        let e = err("SELECT TOP x * FROM devices");
        assert_eq!(
            (e.column, e.message.as_str()),
            (12, "expected a whole number after TOP, found 'x'")
        );
        assert!(
            err("SELECT TOP 1.5 * FROM devices")
                .message
                .contains("whole number")
        );
        assert!(
            err("SELECT TOP -1 * FROM devices")
                .message
                .contains("whole number")
        );
        let e = err("SELECT * devices");
        assert_eq!(
            (e.column, e.message.as_str()),
            (10, "expected FROM after 'SELECT *', found 'devices'")
        );
        let e = err("SELECT deviceId status FROM devices");
        assert_eq!(
            (e.column, e.message.as_str()),
            (
                17,
                "expected ',' or FROM after the select list, found 'status'"
            )
        );
        let e = err("SELECT deviceId, * FROM devices");
        assert_eq!(e.column, 18);
        let e = err("SELECT * FROM devices WHERE tags.a = 1 ORDER BY deviceId");
        assert_eq!(
            (e.column, e.message.as_str()),
            (
                40,
                "expected AND, OR, GROUP BY or the end of the query, found 'ORDER'"
            )
        );
        let e = err("SELECT * FROM devices extra");
        assert_eq!(
            e.message,
            "expected WHERE, GROUP BY or the end of the query, found 'extra'"
        );
        let e = err("SELECT * FROM devices GROUP BY tags.a");
        assert_eq!(e.column, 23);
        assert!(e.message.contains("SELECT *"), "{e}");
        let e = err("SELECT tags.a, COUNT() AS n FROM devices");
        assert_eq!(e.column, 8);
        assert!(
            e.message.contains("'tags.a' must be inside an aggregate"),
            "{e}"
        );
        let e = err("SELECT tags.b, COUNT() AS n FROM devices GROUP BY tags.a");
        assert_eq!(
            e.message,
            "'tags.b' must be listed in GROUP BY (or be inside an aggregate)"
        );
        let e = err("SELECT tags.a.x, tags.b.x FROM devices");
        assert_eq!(
            (e.column, e.message.as_str()),
            (18, "duplicate output name 'x'; rename one of them with AS")
        );
        let e = err("SELECT COUNT(tags.a) FROM devices");
        assert!(e.message.contains("COUNT takes no argument"), "{e}");
        let e = err("SELECT SUM() FROM devices");
        assert_eq!(
            e.message,
            "expected a property path inside SUM(…), found ')'"
        );
        let e = err("SELECT deviceId AS from FROM devices");
        assert_eq!(
            e.message,
            "'from' is a reserved word and cannot be an alias"
        );
        let e = err("SELECT * FROM devices GROUP tags.a");
        assert_eq!(e.message, "expected BY after GROUP, found 'tags'");
    }

    #[test]
    fn length_limit() {
        let pad = " ".repeat(MAX_QUERY_CHARS - "SELECT * FROM devices".len());
        assert!(parse_query(&format!("SELECT * FROM devices{pad}")).is_ok());
        let e = parse_query(&format!("SELECT * FROM devices{pad} ")).unwrap_err();
        assert_eq!(e.column, MAX_QUERY_CHARS + 1);
        assert!(e.message.contains("at most 8192"), "{e}");
        // Characters, not bytes.
        let s = format!("tags.x = '{}'", "é".repeat(MAX_QUERY_CHARS - 11));
        assert_eq!(s.chars().count(), MAX_QUERY_CHARS);
        assert!(parse_condition(&s).is_ok());
    }

    #[test]
    fn nesting_limit() {
        let ok = format!(
            "{}tags.x = 1{}",
            "(".repeat(MAX_NESTING),
            ")".repeat(MAX_NESTING)
        );
        assert!(parse_condition(&ok).is_ok());
        let deep = format!(
            "{}tags.x = 1{}",
            "(".repeat(MAX_NESTING + 1),
            ")".repeat(MAX_NESTING + 1)
        );
        assert!(
            parse_condition(&deep)
                .unwrap_err()
                .message
                .contains("nests too deeply")
        );
        let nots = format!("{}tags.x = 1", "NOT ".repeat(MAX_NESTING + 1));
        assert!(
            parse_condition(&nots)
                .unwrap_err()
                .message
                .contains("nests too deeply")
        );
        let minus = format!("{}tags.x = 1", "-".repeat(MAX_NESTING + 1));
        assert!(
            parse_condition(&minus)
                .unwrap_err()
                .message
                .contains("nests too deeply")
        );
    }

    #[test]
    fn long_flat_chains_do_not_exhaust_the_stack() {
        // As many ORs as fit in the length limit: a left-deep tree some thousand levels tall.
        let mut s = String::from("tags.a = 1");
        while s.len() + " OR a = 1".len() <= MAX_QUERY_CHARS {
            s.push_str(" OR a = 1");
        }
        let c = parse_condition(&s).unwrap();
        assert!(!c.matches(&serde_json::json!({})));
        assert_eq!(parse_condition(&c.to_string()).unwrap(), c);
    }
}

#[cfg(test)]
mod depth_tests {
    use super::*;

    fn parse_condition(input: &str) -> Result<Condition> {
        super::parse_condition(input, Dialect::Azure)
    }

    #[test]
    fn arithmetic_chains_count_as_nesting() {
        let chain = |n: usize| format!("tags.x = 1{}", "+1".repeat(n));
        assert!(parse_condition(&chain(MAX_NESTING)).is_ok());
        let e = parse_condition(&chain(MAX_NESTING + 1)).unwrap_err();
        assert!(e.message.contains("nests too deeply"), "{e}");
        // The depth of one operand does not leak into the next one.
        let many = vec![chain(MAX_NESTING / 2); 50].join(" AND ");
        assert!(parse_condition(&many).is_ok());
    }

    #[test]
    fn the_deepest_accepted_tree_evaluates_and_prints() {
        // Every kind of nesting at once, as deep as allowed: `NOT (` and `-(` are two levels
        // each; the `+` chain sits inside the NOTs' parentheses only.
        let n = MAX_NESTING / 4;
        let s = format!(
            "{}{}tags.x{} = 1{}{}",
            "NOT (".repeat(n),
            "-(".repeat(n),
            ")".repeat(n),
            "+1".repeat(MAX_NESTING - 2 * n),
            ")".repeat(n),
        );
        let c = parse_condition(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
        let twin = serde_json::json!({"tags": {"x": -5}});
        let _ = c.matches(&twin);
        assert_eq!(parse_condition(&c.to_string()).unwrap(), c);
    }
}
