//! What of a SQL request a policy can see, read from its source.
//!
//! A `pre_request` decision is a pure function of the input when the policy calls no
//! nondeterministic builtin. The user, resource and session parts of the input do not
//! change within a session, so when the policies read nothing of `input.query` but its
//! `type` and `tables`, the decision for a statement is the decision for any statement of
//! the same type on the same tables: a session may evaluate once per (type, tables) and
//! reuse the result, instead of once per statement.
//!
//! The reading is a conservative scan of the source text (comments and strings removed):
//! every `input` reference must be a plain field path, and paths under `input.query` must
//! name `type` or `tables`. Anything else — the statement text, `input.query` or `input`
//! as a whole, an indexed `input[…]`, `import input`, an unknown top-level field, or a
//! builtin whose result changes between calls (`time.now_ns`, `rand.*`, `http.send`, …) —
//! makes the policy [`QueryDependence::Any`], and every statement is evaluated.

/// How a set of policies depends on `input.query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryDependence {
    /// Decisions depend on nothing of the query but these fields (and the session).
    Fields { query_type: bool, tables: bool },
    /// Decisions may depend on anything: evaluate every request.
    Any,
}

impl QueryDependence {
    /// The dependence of several policies evaluated together.
    pub fn and(self, other: QueryDependence) -> QueryDependence {
        match (self, other) {
            (
                QueryDependence::Fields {
                    query_type: a,
                    tables: b,
                },
                QueryDependence::Fields {
                    query_type: c,
                    tables: d,
                },
            ) => QueryDependence::Fields {
                query_type: a || c,
                tables: b || d,
            },
            _ => QueryDependence::Any,
        }
    }

    pub fn none() -> QueryDependence {
        QueryDependence::Fields {
            query_type: false,
            tables: false,
        }
    }
}

/// Builtins whose result can differ between two calls with the same arguments.
const NONDETERMINISTIC: [&str; 8] = [
    "time.now_ns",
    "rand.",
    "http.send",
    "uuid.rfc4122",
    "opa.runtime",
    "net.lookup",
    "io.jwt.decode_verify",
    "crypto.x509.parse_and_verify",
];

/// Top-level input fields that are constant within a session for SQL requests (`columns`
/// and `ssh` are absent from a SQL `pre_request` input).
const SESSION_FIELDS: [&str; 5] = ["user", "resource", "session", "columns", "ssh"];

/// Reads one policy's source.
pub fn query_dependence(source: &str) -> QueryDependence {
    let code = strip_comments_and_strings(source);
    if NONDETERMINISTIC.iter().any(|b| code.contains(b)) {
        return QueryDependence::Any;
    }
    let bytes = code.as_bytes();
    let mut dep = QueryDependence::none();
    let mut from = 0;
    while let Some(pos) = code[from..].find("input") {
        let start = from + pos;
        let end = start + "input".len();
        from = end;
        let before = start.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(end).copied();
        if before.is_some_and(|b| is_ident(b) || b == b'.') || after.is_some_and(is_ident) {
            continue; // part of another name (`my_input`, `data.input`, `inputs`)
        }
        let path = field_path(&code[end..], 2);
        let Some(first) = path.first() else {
            return QueryDependence::Any; // `input` used whole, indexed, or imported
        };
        if *first == "query" {
            match path.get(1).copied() {
                Some("type") => {
                    dep = dep.and(QueryDependence::Fields {
                        query_type: true,
                        tables: false,
                    })
                }
                Some("tables") => {
                    dep = dep.and(QueryDependence::Fields {
                        query_type: false,
                        tables: true,
                    })
                }
                _ => return QueryDependence::Any,
            }
        } else if !SESSION_FIELDS.contains(first) {
            return QueryDependence::Any;
        }
    }
    dep
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Up to `n` `.name` segments at the start of `rest` (whitespace between them is not Rego).
fn field_path(rest: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = rest;
    while out.len() < n {
        let Some(after_dot) = rest.strip_prefix('.') else {
            break;
        };
        let len = after_dot.bytes().take_while(|b| is_ident(*b)).count();
        if len == 0 {
            break;
        }
        out.push(&after_dot[..len]);
        rest = &after_dot[len..];
    }
    out
}

/// The source with `#` comments and string literals (`"…"`, `` `…` ``) blanked out, so
/// only code is scanned. An unterminated string blanks the rest.
fn strip_comments_and_strings(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                out.push(' ');
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push(' ');
            }
            '`' => {
                out.push(' ');
                for c in chars.by_ref() {
                    if c == '`' {
                        break;
                    }
                }
                out.push(' ');
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(query_type: bool, tables: bool) -> QueryDependence {
        QueryDependence::Fields { query_type, tables }
    }

    #[test]
    fn the_example_policy_reads_type_and_tables() {
        let example = include_str!("../../../policies/example.rego");
        assert_eq!(query_dependence(example), fields(true, true));
    }

    #[test]
    fn session_facts_alone_are_constant() {
        let src = r#"
package p
import rego.v1
pre_request := {"action": "block"} if { not "dba" in input.user.groups }
pre_request := false if input.resource.name == "prod"
"#;
        assert_eq!(query_dependence(src), QueryDependence::none());
    }

    #[test]
    fn anything_that_may_read_more_is_any() {
        for src in [
            "pre_request := false if contains(input.query.statement, \"x\")",
            "pre_request := false if { q := input.query; q.statement == \"\" }",
            "pre_request := false if input[\"query\"].type == \"drop\"",
            "pre_request := false if walk(input, _)",
            "import input.query as q\npre_request := false if q.statement",
            "pre_request := false if input.http.path == \"/\"",
            "pre_request := false if time.now_ns() > 0",
            "pre_request := false if rand.intn(\"x\", 2) == 0",
            "pre_request := false if input .query.type",
        ] {
            assert_eq!(query_dependence(src), QueryDependence::Any, "{src}");
        }
    }

    #[test]
    fn comments_strings_and_other_names_are_not_references() {
        let src = r#"
package p
# input.query.statement is not read here; neither is time.now_ns()
my_input := 1
data_input := data.input.x
msg := "input.query.statement time.now_ns"
raw := `input[0]`
pre_request := false if input.query.type == "drop"
"#;
        assert_eq!(query_dependence(src), fields(true, false));
    }

    #[test]
    fn dependences_combine() {
        assert_eq!(
            fields(true, false).and(fields(false, true)),
            fields(true, true)
        );
        assert_eq!(
            fields(true, false).and(QueryDependence::Any),
            QueryDependence::Any
        );
    }
}
