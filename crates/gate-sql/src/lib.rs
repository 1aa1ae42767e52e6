//! Request facts for SQL text, shared by the PostgreSQL and MySQL handlers.
//!
//! [`analyze`] turns the text of a simple query (possibly several statements) into one
//! [`QueryFacts`] per statement: its class (`input.query.type`), the tables it touches
//! (`input.query.tables`) and its own original text (`input.query.statement`).
//!
//! Security rules this module follows, because policy decisions rest on them:
//!
//! - Text the parser cannot read is never dropped: it becomes one `unknown` fact carrying the
//!   whole text, so a policy can still block it (fail closed).
//! - A statement is classified by the most dangerous operation it *executes*, not by its
//!   outermost keyword: `WITH d AS (DELETE …) SELECT …` is a `delete`, `EXPLAIN ANALYZE
//!   DELETE …` is a `delete`, `SELECT … INTO t` is a `create`.
//! - Table names are reported the way the server resolves them, so that quoting or case
//!   cannot dodge a policy that names a table (see [`analyze`]).

mod cache;

pub use cache::FactsCache;

use std::ops::ControlFlow;

use gate_core::{QueryFacts, QueryType};
use sqlparser::ast::{
    CopySource, Expr, GrantObjects, Ident, MergeAction, ObjectName, ObjectNamePart, ObjectType,
    Select, Statement, Visit, Visitor,
};
use sqlparser::dialect::{Dialect, MySqlDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

/// Which server's SQL the text is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SqlDialect {
    Postgres,
    Mysql,
}

static POSTGRES: PostgreSqlDialect = PostgreSqlDialect {};
static MYSQL: MySqlDialect = MySqlDialect {};

impl SqlDialect {
    fn parser_dialect(self) -> &'static dyn Dialect {
        match self {
            SqlDialect::Postgres => &POSTGRES,
            SqlDialect::Mysql => &MYSQL,
        }
    }

    /// PostgreSQL folds unquoted identifiers to lower case; MySQL's table-name case rules
    /// depend on the server (`lower_case_table_names`), so names are left as written there.
    fn folds_unquoted_identifiers(self) -> bool {
        matches!(self, SqlDialect::Postgres)
    }
}

/// Analyzes a (possibly multi-statement) SQL text; one [`QueryFacts`] per statement.
///
/// - `statement` is the statement's own slice of the original text: everything between the
///   previous `;` (or the start) and its terminating `;` (or the end), trimmed of whitespace.
///   Comments inside that range are kept, so nothing the client sent disappears from the audit
///   trail except separators and whitespace (and comments after the last `;`).
/// - Empty, whitespace-only and comment-only text gives an empty `Vec`.
/// - Text the parser rejects (anywhere, in any statement) gives exactly one fact of type
///   [`QueryType::Unknown`] with the whole text, trimmed, and no tables. So does text of more
///   than 2^20 tokens (whitespace included), which is not parsed at all.
/// - `tables` lists every relation the statement touches, in order of first appearance,
///   deduplicated; schema-qualified when the client qualified it. Quotes are removed and, for
///   PostgreSQL, unquoted identifiers are folded to lower case as the server does, so
///   `"accounts"`, `ACCOUNTS` and `accounts` all report `accounts` while `"Accounts"` reports
///   `Accounts`. CTE names referenced in `FROM` are reported too (over-reporting is the safe
///   side for a policy that blocks tables).
///
/// Type mapping: queries (`SELECT`, `VALUES`, `WITH … SELECT`) → `select`; `INSERT`,
/// `UPDATE`, `DELETE` → their own type; `MERGE` → the most dangerous of its actions;
/// `DROP …` → `drop`; `CREATE …` and `SELECT … INTO table` → `create`; `ALTER …` and
/// `RENAME TABLE` → `alter`; `TRUNCATE` → `truncate`; `GRANT`/`REVOKE` → `grant`; `COPY`
/// and MySQL's `LOAD DATA` (bulk load from a file; sqlparser reads only some forms of it, the
/// rest are `unknown`) → `copy`; everything else → `other`.
/// `EXPLAIN` (with or without `ANALYZE`) and `PREPARE` take the type of the statement they
/// wrap: `EXPLAIN ANALYZE` executes it, `EXPLAIN (ANALYZE …)` option syntax varies too much
/// to tell reliably, and `PREPARE` + `EXECUTE` would otherwise hide any statement behind
/// `other`. When a statement executes several operations (data-modifying CTEs, `COPY
/// (DELETE … RETURNING) TO STDOUT`), the most dangerous one wins, in the order
/// drop > truncate > delete > update > insert > alter > grant > create > copy > other >
/// select. Statements inside routine bodies (`CREATE FUNCTION/PROCEDURE/TRIGGER`) are not
/// executed by the `CREATE`, so they do not raise its type.
pub fn analyze(sql: &str, dialect: SqlDialect) -> Vec<QueryFacts> {
    analyze_inner(sql, dialect).unwrap_or_else(|| {
        vec![QueryFacts {
            query_type: QueryType::Unknown,
            statement: sql.trim().into(),
            tables: Vec::new(),
        }]
    })
}

/// Texts of at most this many tokens are analyzed on the caller's stack.
const INLINE_TOKENS: usize = 8 * 1024;
/// Stack reserved per token for larger texts (the most measured is ~50 bytes, debug build).
const STACK_PER_TOKEN: usize = 128;
/// Texts of more tokens than this are not parsed: one `unknown` fact (fail closed).
const MAX_TOKENS: usize = 1 << 20;

/// `None` means "the parser rejected the text" (or it is too large to parse, see below).
///
/// sqlparser parses operator chains (`1+1+…`, `a[1][1]…`, `… UNION SELECT …`, `a::t::t…`)
/// iteratively, but dropping and visiting the resulting tree recurse once per level, about one
/// level per two tokens: ~65k tokens overflow a 2 MiB thread stack, which aborts the whole
/// process. The token count bounds the depth, so a text too large to be safe on the caller's
/// stack is analyzed on a thread whose stack is sized from it.
fn analyze_inner(sql: &str, dialect: SqlDialect) -> Option<Vec<QueryFacts>> {
    let tokens = Tokenizer::new(dialect.parser_dialect(), sql)
        .tokenize_with_location()
        .ok()?;
    if tokens.len() <= INLINE_TOKENS {
        return analyze_tokens(sql, dialect, tokens);
    }
    if tokens.len() > MAX_TOKENS {
        return None;
    }
    let stack = (1 << 20) + tokens.len() * STACK_PER_TOKEN;
    std::thread::scope(|scope| {
        let analysis = std::thread::Builder::new()
            .name("gate-sql-analyze".into())
            .stack_size(stack)
            .spawn_scoped(scope, || analyze_tokens(sql, dialect, tokens))
            .ok()?;
        analysis
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn analyze_tokens(
    sql: &str,
    dialect: SqlDialect,
    tokens: Vec<TokenWithSpan>,
) -> Option<Vec<QueryFacts>> {
    let mut parser = Parser::new(dialect.parser_dialect()).with_tokens_with_locations(tokens);
    let mut positions = PositionCursor::new(sql);
    let mut facts = Vec::new();
    // Byte offset where the next statement's text begins: just after the previous `;`.
    let mut segment_start = Some(0);
    // Set when a `;` cannot be located in the source text (see `semicolon_offset`).
    let mut misaligned = false;
    loop {
        // Mirrors `Parser::parse_statements`, which we cannot use because it does not tell
        // where each statement ends in the source text (and `Statement::span()` is empty or
        // partial for many statement kinds).
        while parser.peek_token_ref().token == Token::SemiColon {
            segment_start = positions
                .semicolon_offset(parser.peek_token_ref().span.start)
                .map(|at| at + 1);
            parser.advance_token();
        }
        if parser.peek_token_ref().token == Token::EOF {
            break;
        }
        let statement = parser.parse_statement().ok()?;
        let next = parser.peek_token_ref();
        let segment_end = match next.token {
            Token::EOF => Some(sql.len()),
            // Unlike `parse_statements`, anything else here (including the `END` that it
            // silently stops at) is an error: we never ignore trailing text.
            Token::SemiColon => positions.semicolon_offset(next.span.start),
            _ => return None,
        };
        let text = match (segment_start, segment_end) {
            (Some(start), Some(end)) if start <= end => &sql[start..end],
            _ => {
                misaligned = true;
                ""
            }
        };
        facts.push(facts_for(&statement, text.trim(), dialect));
    }
    // sqlparser gives tokens re-read from MySQL `/*! … */` comments approximate locations, so
    // a separator inside one has no reliable place in the text (it may even land on another
    // `;`). The facts themselves are right; give each the whole text rather than a wrong slice.
    let hints = dialect == SqlDialect::Mysql && facts.len() > 1 && sql.contains("/*!");
    if misaligned || hints {
        for fact in &mut facts {
            fact.statement = sql.trim().into();
        }
    }
    Some(facts)
}

fn facts_for(statement: &Statement, text: &str, dialect: SqlDialect) -> QueryFacts {
    let mut collector = Collector {
        fold: dialect.folds_unquoted_identifiers(),
        mysql: dialect == SqlDialect::Mysql,
        tables: Vec::new(),
        rank: None,
        inert_depth: 0,
    };
    let _ = statement.visit(&mut collector);
    QueryFacts {
        query_type: collector.rank.map_or(QueryType::Other, Rank::query_type),
        statement: text.into(),
        tables: collector.tables,
    }
}

/// Danger order used to pick one type for a statement that executes several operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Select,
    Other,
    Copy,
    Create,
    Grant,
    Alter,
    Insert,
    Update,
    Delete,
    Truncate,
    Drop,
}

impl Rank {
    fn query_type(self) -> QueryType {
        match self {
            Rank::Select => QueryType::Select,
            Rank::Other => QueryType::Other,
            Rank::Copy => QueryType::Copy,
            Rank::Create => QueryType::Create,
            Rank::Grant => QueryType::Grant,
            Rank::Alter => QueryType::Alter,
            Rank::Insert => QueryType::Insert,
            Rank::Update => QueryType::Update,
            Rank::Delete => QueryType::Delete,
            Rank::Truncate => QueryType::Truncate,
            Rank::Drop => QueryType::Drop,
        }
    }
}

/// The operation a statement performs by itself, ignoring what it contains. `None` for
/// wrappers (`EXPLAIN`, `PREPARE`) whose type is that of the statement they wrap.
fn own_rank(statement: &Statement) -> Option<Rank> {
    use Statement as S;
    Some(match statement {
        S::Query(_) => Rank::Select,
        S::Insert(_) => Rank::Insert,
        S::Update(_) => Rank::Update,
        S::Delete(_) => Rank::Delete,
        S::Merge(merge) => merge
            .clauses
            .iter()
            .filter_map(|clause| match clause.action {
                MergeAction::Insert(_) => Some(Rank::Insert),
                MergeAction::Update(_) => Some(Rank::Update),
                MergeAction::Delete { .. } => Some(Rank::Delete),
                _ => None,
            })
            .max()
            .unwrap_or(Rank::Update),
        S::Drop { .. }
        | S::DropFunction(_)
        | S::DropDomain(_)
        | S::DropProcedure { .. }
        | S::DropSecret { .. }
        | S::DropPolicy(_)
        | S::DropConnector { .. }
        | S::DropExtension(_)
        | S::DropOperator(_)
        | S::DropOperatorFamily(_)
        | S::DropOperatorClass(_)
        | S::DropTrigger(_) => Rank::Drop,
        S::CreateView(_)
        | S::CreateTable(_)
        | S::CreateVirtualTable { .. }
        | S::CreateIndex(_)
        | S::CreateRole(_)
        | S::CreateSecret { .. }
        | S::CreateServer(_)
        | S::CreatePolicy(_)
        | S::CreateConnector(_)
        | S::CreateOperator(_)
        | S::CreateOperatorFamily(_)
        | S::CreateOperatorClass(_)
        | S::CreateTextSearch(_)
        | S::CreateExtension(_)
        | S::CreateCollation(_)
        | S::CreateSchema { .. }
        | S::CreateDatabase { .. }
        | S::CreateFunction(_)
        | S::CreateTrigger(_)
        | S::CreateProcedure { .. }
        | S::CreateMacro { .. }
        | S::CreateStage { .. }
        | S::CreateFileFormat { .. }
        | S::CreateWarehouse(_)
        | S::CreateSequence { .. }
        | S::CreateDomain(_)
        | S::CreateType { .. }
        | S::CreateUser(_) => Rank::Create,
        S::AlterTable(_)
        | S::AlterSchema(_)
        | S::AlterIndex { .. }
        | S::AlterView { .. }
        | S::AlterFunction(_)
        | S::AlterType(_)
        | S::AlterCollation(_)
        | S::AlterOperator(_)
        | S::AlterOperatorFamily(_)
        | S::AlterOperatorClass(_)
        | S::AlterTextSearch(_)
        | S::AlterRole { .. }
        | S::AlterPolicy(_)
        | S::AlterConnector { .. }
        | S::AlterSession { .. }
        | S::AlterUser(_)
        | S::RenameTable(_) => Rank::Alter,
        S::Truncate(_) => Rank::Truncate,
        S::Grant(_) | S::Revoke(_) | S::Deny(_) => Rank::Grant,
        S::Copy { .. } | S::CopyIntoSnowflake { .. } | S::LoadData { .. } | S::Unload { .. } => {
            Rank::Copy
        }
        S::Explain { .. } | S::Prepare { .. } => return None,
        _ => Rank::Other,
    })
}

/// Routine bodies are stored, not executed, by the statement that contains them.
fn has_inert_body(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::CreateFunction(_)
            | Statement::CreateProcedure { .. }
            | Statement::CreateTrigger(_)
            | Statement::CreateMacro { .. }
    )
}

/// One pass over the AST collects both the tables and the statement type.
struct Collector {
    fold: bool,
    mysql: bool,
    tables: Vec<String>,
    rank: Option<Rank>,
    /// > 0 while inside a routine body (see [`has_inert_body`]).
    inert_depth: u32,
}

impl Collector {
    fn raise(&mut self, rank: Rank) {
        if self.inert_depth == 0 && self.rank.is_none_or(|r| rank > r) {
            self.rank = Some(rank);
        }
    }

    fn add_table(&mut self, name: &ObjectName) {
        let mut rendered = String::new();
        for (i, part) in name.0.iter().enumerate() {
            if i > 0 {
                rendered.push('.');
            }
            match part {
                ObjectNamePart::Identifier(ident) => self.render_ident(&mut rendered, ident),
                other => rendered.push_str(&other.to_string()),
            }
        }
        self.push_table(rendered);
    }

    fn add_ident_path(&mut self, idents: &[Ident]) {
        let mut rendered = String::new();
        for (i, ident) in idents.iter().enumerate() {
            if i > 0 {
                rendered.push('.');
            }
            self.render_ident(&mut rendered, ident);
        }
        self.push_table(rendered);
    }

    fn render_ident(&self, out: &mut String, ident: &Ident) {
        if self.fold && ident.quote_style.is_none() {
            out.extend(ident.value.chars().map(|c| c.to_ascii_lowercase()));
        } else {
            out.push_str(&ident.value);
        }
    }

    fn push_table(&mut self, rendered: String) {
        if !rendered.is_empty() && !self.tables.contains(&rendered) {
            self.tables.push(rendered);
        }
    }

    /// Names the AST holds outside `visit_relation`, which sqlparser's relation visitor misses.
    fn add_statement_tables(&mut self, statement: &Statement) {
        match statement {
            Statement::Drop {
                object_type,
                names,
                table,
                ..
            } => {
                if matches!(
                    object_type,
                    ObjectType::Table | ObjectType::View | ObjectType::MaterializedView
                ) {
                    names.iter().for_each(|n| self.add_table(n));
                }
                if let Some(table) = table {
                    self.add_table(table);
                }
            }
            Statement::Copy {
                source: CopySource::Table { table_name, .. },
                ..
            } => self.add_table(table_name),
            Statement::RenameTable(renames) => {
                for rename in renames {
                    self.add_table(&rename.old_name);
                    self.add_table(&rename.new_name);
                }
            }
            Statement::Grant(sqlparser::ast::Grant {
                objects: Some(GrantObjects::Tables(names)),
                ..
            })
            | Statement::Revoke(sqlparser::ast::Revoke {
                objects: Some(GrantObjects::Tables(names)),
                ..
            }) => names.iter().for_each(|n| self.add_table(n)),
            Statement::LockTables { tables } => tables
                .iter()
                .for_each(|t| self.add_ident_path(std::slice::from_ref(&t.table))),
            _ => {}
        }
    }

    /// `SELECT … INTO t` creates `t` (PostgreSQL). MySQL's `INTO @var` only assigns
    /// variables; its `INTO OUTFILE/DUMPFILE` writes a file on the server (like `COPY TO`).
    fn select_into(&mut self, select: &Select) {
        let Some(into) = &select.into else { return };
        let mut writes_file = false;
        let mut creates = false;
        for target in &into.targets {
            match target {
                Expr::Identifier(ident) if self.mysql && ident.value.starts_with('@') => {}
                Expr::Identifier(ident) => {
                    creates = true;
                    self.add_ident_path(std::slice::from_ref(ident));
                }
                Expr::CompoundIdentifier(idents) => {
                    creates = true;
                    self.add_ident_path(idents);
                }
                _ if self.mysql => writes_file = true,
                _ => creates = true,
            }
        }
        if creates {
            self.raise(Rank::Create);
        }
        if writes_file {
            self.raise(Rank::Copy);
        }
    }
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        self.add_table(relation);
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        if let Some(rank) = own_rank(statement) {
            self.raise(rank);
        }
        self.add_statement_tables(statement);
        if has_inert_body(statement) {
            self.inert_depth += 1;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        if has_inert_body(statement) {
            self.inert_depth -= 1;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        self.select_into(select);
        ControlFlow::Continue(())
    }
}

/// Converts sqlparser's (line, column) locations to byte offsets. Columns count `char`s and
/// a `\n` starts a new line, exactly as sqlparser's tokenizer counts. Lookups are expected in
/// increasing order (we only ask for `;` positions, left to right), so the cursor walks the
/// text once in total; a backwards lookup restarts from the beginning.
struct PositionCursor<'a> {
    sql: &'a str,
    byte: usize,
    line: u64,
    column: u64,
}

impl<'a> PositionCursor<'a> {
    fn new(sql: &'a str) -> Self {
        PositionCursor {
            sql,
            byte: 0,
            line: 1,
            column: 1,
        }
    }

    /// The byte offset of the `;` token found at `target`, or `None` when there is no `;`
    /// there (a separator inside a MySQL `/*! … */` comment).
    fn semicolon_offset(&mut self, target: Location) -> Option<usize> {
        let at = self.byte_offset(target)?;
        (self.sql.as_bytes().get(at) == Some(&b';')).then_some(at)
    }

    fn byte_offset(&mut self, target: Location) -> Option<usize> {
        if target.line == 0 {
            return None;
        }
        if (target.line, target.column) < (self.line, self.column) {
            *self = PositionCursor::new(self.sql);
        }
        let rest = self.sql.get(self.byte..)?;
        for c in rest.chars() {
            if (self.line, self.column) >= (target.line, target.column) {
                break;
            }
            self.byte += c.len_utf8();
            if c == '\n' {
                self.line += 1;
                self.column = 1;
            } else {
                self.column += 1;
            }
        }
        ((self.line, self.column) == (target.line, target.column)).then_some(self.byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`fuzz/`, target `sql_facts`): long operator chains built deep trees
    /// whose drop overflowed the stack and aborted the process. Test threads have 2 MiB
    /// stacks, like tokio's workers, so without the fix this test aborts the test binary.
    #[test]
    fn long_operator_chains_do_not_overflow_the_stack() {
        let chains = [
            format!("SELECT 1{}", "+1".repeat(25_000)),
            format!("SELECT a{}", "[1]".repeat(25_000)),
            format!("SELECT 1{}", " UNION SELECT 1".repeat(25_000)),
            format!("SELECT 1 FROM t WHERE a{}", " AND a".repeat(25_000)),
        ];
        for sql in &chains {
            for dialect in [SqlDialect::Postgres, SqlDialect::Mysql] {
                let facts = analyze(sql, dialect);
                assert_eq!(facts.len(), 1);
                assert_eq!(&*facts[0].statement, sql.trim());
            }
        }
        assert_eq!(
            analyze(&chains[0], SqlDialect::Postgres)[0].query_type,
            QueryType::Select
        );
    }

    #[test]
    fn texts_beyond_the_token_limit_are_unknown() {
        let sql = format!("{}SELECT 1", " ".repeat(MAX_TOKENS));
        let facts = analyze(&sql, SqlDialect::Postgres);
        assert_eq!(facts.len(), 1);
        assert_eq!(facts[0].query_type, QueryType::Unknown);
        assert_eq!(&*facts[0].statement, "SELECT 1");
    }
}
