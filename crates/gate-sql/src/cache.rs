//! Per-session reuse of SQL facts for statements that differ only in their literals.
//!
//! A statement's type and tables do not depend on the values of its literals, so
//! `SELECT abalance FROM pgbench_accounts WHERE aid = 42` and `… WHERE aid = 7` share their
//! facts. [`FactsCache`] keys a single statement by its *fingerprint* — the text with number
//! and string literals replaced — and parses only on a miss. The fingerprint is deliberately
//! conservative: anything the small lexer here cannot be sure about (comments, dollar quoting,
//! escape strings, MySQL's backslash escapes and double quotes, which are identifiers under
//! ANSI_QUOTES) makes it give up, and the text is simply parsed. Texts with several
//! statements are never cached by fingerprint.
//!
//! Before any of that, a text identical to the previous one gets the previous facts back
//! as they are: clients of the extended protocol send the same statement text with every
//! execution, and then there is nothing to lex at all.

use std::collections::HashMap;
use std::sync::Arc;

use gate_core::{QueryFacts, QueryType};

use crate::{SqlDialect, analyze};

/// Entries kept per session before the cache starts over.
const LIMIT: usize = 128;
/// Statements longer than this are parsed every time (fingerprinting them costs memory).
const MAX_LEN: usize = 4096;

#[derive(Default)]
pub struct FactsCache {
    entries: HashMap<String, (QueryType, Vec<String>)>,
    /// The fingerprint being looked up, kept between calls so a hit allocates nothing for it.
    scratch: String,
    /// The previous text (its buffer reused), its dialect and its facts.
    last_text: String,
    last: Option<(SqlDialect, Vec<Arc<QueryFacts>>)>,
}

impl FactsCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// [`analyze`], reusing the facts of the previous text when this one is the same, or of
    /// an earlier statement with the same fingerprint.
    pub fn analyze(&mut self, sql: &str, dialect: SqlDialect) -> Vec<Arc<QueryFacts>> {
        if let Some((d, facts)) = &self.last
            && *d == dialect
            && self.last_text == sql
        {
            return facts.clone();
        }
        let mut fp = std::mem::take(&mut self.scratch);
        let facts: Vec<Arc<QueryFacts>> = self
            .analyze_with(sql, dialect, &mut fp)
            .into_iter()
            .map(Arc::new)
            .collect();
        self.scratch = fp;
        if sql.len() <= MAX_LEN {
            self.last_text.clear();
            self.last_text.push_str(sql);
            self.last = Some((dialect, facts.clone()));
        } else {
            self.last = None;
        }
        facts
    }

    fn analyze_with(&mut self, sql: &str, dialect: SqlDialect, fp: &mut String) -> Vec<QueryFacts> {
        if !fingerprint(sql, dialect, fp) {
            return analyze(sql, dialect);
        }
        if let Some((query_type, tables)) = self.entries.get(fp.as_str()) {
            return vec![QueryFacts {
                query_type: *query_type,
                statement: sql.trim().trim_end_matches(';').trim_end().into(),
                tables: tables.clone(),
            }];
        }
        let facts = analyze(sql, dialect);
        if let [single] = facts.as_slice()
            && single.query_type != QueryType::Unknown
        {
            if self.entries.len() >= LIMIT {
                self.entries.clear();
            }
            self.entries
                .insert(fp.clone(), (single.query_type, single.tables.clone()));
        }
        facts
    }
}

/// Writes the text with literals replaced by `?` into `out`; `false` when the lexer is not
/// sure (then `out` holds nothing meaningful).
fn fingerprint(sql: &str, dialect: SqlDialect, out: &mut String) -> bool {
    out.clear();
    fingerprint_into(sql, dialect, out).is_some()
}

fn fingerprint_into(sql: &str, dialect: SqlDialect, out: &mut String) -> Option<()> {
    if sql.len() > MAX_LEN {
        return None;
    }
    let b = sql.as_bytes();
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        match c {
            // Comments could hide anything; dollar quoting and escapes need a real lexer.
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b'#' if dialect == SqlDialect::Mysql => return None,
            b'\\' => return None,
            b'$' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) => return None,
            b'"' if dialect == SqlDialect::Mysql => return None,
            b'\'' => {
                // E'…', B'…', X'…', N'…' prefixes change how the literal is read: give up.
                if i > 0 && ident(b[i - 1]) {
                    return None;
                }
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => return None,
                        Some(b'\'') if b.get(j + 1) == Some(&b'\'') => j += 2,
                        Some(b'\'') => break,
                        Some(_) => j += 1,
                    }
                }
                // A word glued to the closing quote ('a'b) is not ours to judge either.
                if b.get(j + 1).is_some_and(|&c| ident(c) || c == b'\'') {
                    return None;
                }
                out.push('?');
                i = j + 1;
            }
            b'"' | b'`' => {
                // Quoted identifiers are kept verbatim: they are table and column names.
                let mut j = i + 1;
                while j < b.len() && b[j] != c {
                    j += 1;
                }
                if j >= b.len() {
                    return None;
                }
                out.push_str(&sql[i..=j]);
                i = j + 1;
            }
            b'0'..=b'9' if i == 0 || !(ident(b[i - 1]) || b[i - 1] == b'.') => {
                // digits [. digits] [e [+-] digits] — and nothing glued to it: `1from t`
                // reads as `1 FROM t`, so a literal touching a word is not ours to judge.
                let digits = |mut j: usize| {
                    while j < b.len() && b[j].is_ascii_digit() {
                        j += 1;
                    }
                    j
                };
                let mut j = digits(i);
                if b.get(j) == Some(&b'.') {
                    j = digits(j + 1);
                }
                if matches!(b.get(j), Some(b'e' | b'E')) {
                    let k = if matches!(b.get(j + 1), Some(b'+' | b'-')) {
                        j + 2
                    } else {
                        j + 1
                    };
                    if !b.get(k).is_some_and(u8::is_ascii_digit) {
                        return None;
                    }
                    j = digits(k);
                }
                if b.get(j)
                    .is_some_and(|&c| ident(c) || c == b'.' || c == b'\'' || c == b'"')
                {
                    return None;
                }
                out.push('?');
                i = j;
            }
            b';' => {
                // Only a trailing semicolon is allowed: several statements are not cached.
                if sql[i + 1..].trim().is_empty() {
                    break;
                }
                return None;
            }
            _ => {
                // Copy everything else (multi-byte characters included) unchanged.
                let ch = sql[i..].chars().next()?;
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint_of(sql: &str, dialect: SqlDialect) -> Option<String> {
        let mut out = String::from("left over from an earlier call");
        fingerprint(sql, dialect, &mut out).then_some(out)
    }

    fn owned(facts: Vec<Arc<QueryFacts>>) -> Vec<QueryFacts> {
        facts.into_iter().map(|f| (*f).clone()).collect()
    }

    #[test]
    fn the_same_text_again_gets_the_same_facts_without_lexing() {
        let mut cache = FactsCache::new();
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
        let a = cache.analyze(sql, SqlDialect::Postgres);
        let b = cache.analyze(sql, SqlDialect::Postgres);
        assert!(Arc::ptr_eq(&a[0], &b[0]), "the previous facts, not a copy");
        // Another dialect, or another text, is analyzed afresh.
        let c = cache.analyze(sql, SqlDialect::Mysql);
        assert!(!Arc::ptr_eq(&a[0], &c[0]));
        let multi = "SELECT 1; DROP TABLE users";
        assert_eq!(
            owned(cache.analyze(multi, SqlDialect::Postgres)),
            analyze(multi, SqlDialect::Postgres)
        );
        assert_eq!(
            owned(cache.analyze(multi, SqlDialect::Postgres)),
            analyze(multi, SqlDialect::Postgres)
        );
        assert_eq!(owned(cache.analyze(sql, SqlDialect::Postgres)), owned(a));
    }

    #[test]
    fn literals_vary_facts_do_not() {
        let mut cache = FactsCache::new();
        let a = cache.analyze(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            SqlDialect::Postgres,
        );
        let b = cache.analyze(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 777;",
            SqlDialect::Postgres,
        );
        assert_eq!(cache.entries.len(), 1, "one fingerprint");
        assert_eq!(a[0].tables, b[0].tables);
        assert_eq!(
            &*b[0].statement,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 777"
        );
        assert_eq!(
            owned(b),
            analyze(
                "SELECT abalance FROM pgbench_accounts WHERE aid = 777;",
                SqlDialect::Postgres
            )
        );
    }

    #[test]
    fn identifiers_and_keywords_are_never_normalised_away() {
        for (x, y) in [
            (
                "SELECT * FROM t1 WHERE a = 1",
                "SELECT * FROM t2 WHERE a = 1",
            ),
            (
                "SELECT * FROM \"users\" WHERE a = 'x'",
                "SELECT * FROM \"secret\" WHERE a = 'x'",
            ),
            ("SELECT * FROM `users`", "SELECT * FROM `secret`"),
            ("DELETE FROM t WHERE a = 1", "SELECT * FROM t WHERE a = 1"),
        ] {
            assert_ne!(
                fingerprint_of(x, SqlDialect::Postgres),
                fingerprint_of(y, SqlDialect::Postgres),
                "{x} vs {y}"
            );
        }
    }

    #[test]
    fn gives_up_when_unsure() {
        for (sql, d) in [
            ("SELECT 1 -- comment", SqlDialect::Postgres),
            ("SELECT /* c */ 1", SqlDialect::Postgres),
            ("SELECT $$x$$", SqlDialect::Postgres),
            ("SELECT E'a\\'b'", SqlDialect::Postgres),
            ("SELECT 'unterminated", SqlDialect::Postgres),
            ("SELECT 1; DROP TABLE users", SqlDialect::Postgres),
            ("SELECT * FROM \"users\"", SqlDialect::Mysql),
            ("SELECT 'a\\'b'", SqlDialect::Mysql),
            ("SELECT 1 # c", SqlDialect::Mysql),
        ] {
            assert_eq!(fingerprint_of(sql, d), None, "{sql}");
        }
        assert!(fingerprint_of("SELECT $1::int", SqlDialect::Postgres).is_some());
        // `1from t` is `1 FROM t` to PostgreSQL; it must not share a fingerprint with `1 t`.
        for sql in [
            "SELECT 1from t",
            "SELECT 1e t",
            "SELECT 1.5.5",
            "SELECT 'a'b",
            "SELECT 1'x'",
        ] {
            assert_eq!(fingerprint_of(sql, SqlDialect::Postgres), None, "{sql}");
        }
        assert_eq!(
            fingerprint_of("SELECT 1.5e-3, 2E+4, 10 FROM t", SqlDialect::Postgres).as_deref(),
            Some("SELECT ?, ?, ? FROM t")
        );
    }

    #[test]
    fn cached_facts_equal_fresh_facts() {
        let mut cache = FactsCache::new();
        let templates = [
            "SELECT email FROM users WHERE id = {}",
            "UPDATE accounts SET balance = balance + {} WHERE id = {}",
            "DROP TABLE t{}",
            "INSERT INTO logs(msg) VALUES ('{}')",
            "SELECT * FROM \"T{}\" WHERE x > {}.5",
            "DELETE FROM users WHERE name = '{}''s'",
        ];
        for round in 0..3 {
            for t in templates {
                let sql = t.replace("{}", &(round * 7 + 1).to_string());
                for d in [SqlDialect::Postgres, SqlDialect::Mysql] {
                    assert_eq!(owned(cache.analyze(&sql, d)), analyze(&sql, d), "{sql}");
                }
            }
        }
    }
}
