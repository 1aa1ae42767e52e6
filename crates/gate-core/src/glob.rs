//! Shell-style globs for resource targeting (`prod-*`, `*-staging`, `db-??`, `web-[ab]`).
//!
//! The whole name must match. `*` matches any run of characters (including none), `?`
//! exactly one, `[abc]` / `[a-z]` one of a set, `[!abc]` one not in it. Anything else
//! matches itself; a pattern without special characters is an exact name. A malformed
//! class (`[` without `]`) matches a literal `[`.

/// Whether `name` matches `pattern`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point for the last `*`: linear for the
    // patterns people write, never exponential.
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => {
                pi += 1;
                ni += 1;
                continue;
            }
            Some('[') => {
                if let Some((matched, len)) = class(&p[pi..], n[ni])
                    && matched
                {
                    pi += len;
                    ni += 1;
                    continue;
                } else if class(&p[pi..], n[ni]).is_none() && n[ni] == '[' {
                    pi += 1;
                    ni += 1;
                    continue;
                }
            }
            Some(c) if *c == n[ni] => {
                pi += 1;
                ni += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class at the start of `p` (which begins with `[`).
/// `Some((matched, length of the class in p))`, or `None` when the class is malformed.
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let ch = *p.get(i)?;
        if ch == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|e| *e != ']') {
            let hi = p[i + 2];
            if ch <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if ch == c {
                matched = true;
            }
            i += 1;
        }
    }
}

/// Whether `name` is targeted by any of `targets` (an empty list targets everything).
pub fn targets_match(targets: &[String], name: &str) -> bool {
    targets.is_empty() || targets.iter().any(|t| glob_match(t, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("prod-db", "prod-db", true),
            ("prod-db", "prod-db2", false),
            ("prod-*", "prod-db", true),
            ("prod-*", "prod-", true),
            ("prod-*", "staging-db", false),
            ("*-staging", "api-staging", true),
            ("*-staging", "api-staging-2", false),
            ("db-??", "db-01", true),
            ("db-??", "db-1", false),
            ("db-??", "db-001", false),
            ("web-[ab]", "web-a", true),
            ("web-[ab]", "web-c", false),
            ("web-[a-c]", "web-c", true),
            ("web-[!a-c]", "web-c", false),
            ("web-[!a-c]", "web-d", true),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("[", "[", true),
            ("x[", "x[", true),
            ("**", "anything", true),
        ] {
            assert_eq!(glob_match(p, n), want, "{p:?} vs {n:?}");
        }
    }

    #[test]
    fn long_inputs_stay_fast() {
        let name = "a".repeat(10_000);
        let pattern = format!("{}b", "*a".repeat(50));
        assert!(!glob_match(&pattern, &name));
    }

    #[test]
    fn empty_targets_mean_everything() {
        assert!(targets_match(&[], "anything"));
        assert!(targets_match(&["prod-*".into()], "prod-1"));
        assert!(!targets_match(&["prod-*".into()], "dev-1"));
    }
}
