//! The mask plan: which strategy applies to which column of one result shape.

use gate_core::{MaskRule, MaskStrategy};

/// Which columns of one result shape are masked, and how.
///
/// Built once per shape (e.g. per PostgreSQL RowDescription) from the `post_request`
/// decision's rules, then consulted for every row by column index, so matching names and
/// resolving conflicts never happens per row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaskPlan {
    /// Indexed by column position; `None` = pass the value through.
    by_column: Vec<Option<MaskStrategy>>,
    /// The same information, only the masked columns, in column order.
    masked: Vec<(usize, MaskStrategy)>,
}

impl MaskPlan {
    /// Matches `rules` against the shape's column names.
    ///
    /// - Names match case-insensitively (Unicode lower case), so `EMAIL` in a result is
    ///   masked by a rule for `email`: a policy must not be dodged by an alias in capitals.
    /// - A rule written `table.column` matches columns named `column`: result shapes do not
    ///   reliably say which table a column came from (PostgreSQL gives only an OID), and a
    ///   rule that silently matched nothing would leak the data it was written to hide. It
    ///   can over-mask a same-named column of another table, which is the safe direction.
    /// - Every column with a matching name is masked, including duplicates
    ///   (`SELECT email, email`).
    /// - When several rules match one column, the most protective strategy wins:
    ///   redact > hash > partial > email (the order of how much of the value survives).
    /// - Rules naming no column of this shape are ignored.
    pub fn build<'a>(
        rules: &[MaskRule],
        column_names: impl IntoIterator<Item = &'a str>,
    ) -> MaskPlan {
        let mut plan = MaskPlan::empty();
        for (index, name) in column_names.into_iter().enumerate() {
            let strategy = rules
                .iter()
                .filter(|rule| rule_matches(&rule.column, name))
                .map(|rule| rule.strategy)
                .max_by_key(|s| protection(*s));
            plan.by_column.push(strategy);
            if let Some(strategy) = strategy {
                plan.masked.push((index, strategy));
            }
        }
        plan
    }

    /// A plan that masks nothing, for results no rule applies to.
    pub fn empty() -> MaskPlan {
        MaskPlan::default()
    }

    /// True when no column is masked: the caller can forward rows untouched.
    pub fn is_empty(&self) -> bool {
        self.masked.is_empty()
    }

    /// The strategy for the column at `column_index`, `None` to pass it through (also for
    /// indexes beyond the shape).
    pub fn strategy_for(&self, column_index: usize) -> Option<MaskStrategy> {
        self.by_column.get(column_index).copied().flatten()
    }

    /// Both plans at once, column by column, the more protective strategy winning: for a
    /// shape that is known under two names per column (MySQL's alias and original name), so
    /// an alias cannot hide a masked column.
    pub fn union(&self, other: &MaskPlan) -> MaskPlan {
        let len = self.by_column.len().max(other.by_column.len());
        let mut plan = MaskPlan::empty();
        for index in 0..len {
            let strategy = [self.strategy_for(index), other.strategy_for(index)]
                .into_iter()
                .flatten()
                .max_by_key(|s| protection(*s));
            plan.by_column.push(strategy);
            if let Some(strategy) = strategy {
                plan.masked.push((index, strategy));
            }
        }
        plan
    }

    /// The masked columns and their strategies, in column order.
    pub fn masked_columns(&self) -> impl Iterator<Item = (usize, MaskStrategy)> + '_ {
        self.masked.iter().copied()
    }
}

/// How much a strategy hides; higher wins when rules conflict.
fn protection(strategy: MaskStrategy) -> u8 {
    match strategy {
        MaskStrategy::Email => 0,
        MaskStrategy::Partial => 1,
        MaskStrategy::Hash => 2,
        MaskStrategy::Redact => 3,
    }
}

fn rule_matches(rule_column: &str, column_name: &str) -> bool {
    if eq_ignore_case(rule_column, column_name) {
        return true;
    }
    match rule_column.rsplit_once('.') {
        Some((_, column)) => eq_ignore_case(column, column_name),
        None => false,
    }
}

/// Case-insensitive comparison without allocating.
fn eq_ignore_case(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(column: &str, strategy: MaskStrategy) -> MaskRule {
        MaskRule {
            column: column.into(),
            strategy,
        }
    }

    #[test]
    fn matches_case_insensitively_and_ignores_unknown_columns() {
        let rules = [
            rule("Email", MaskStrategy::Email),
            rule("ssn", MaskStrategy::Redact),
            rule("not_in_result", MaskStrategy::Hash),
        ];
        let plan = MaskPlan::build(&rules, ["id", "EMAIL", "name", "SSN"]);
        assert!(!plan.is_empty());
        assert_eq!(plan.strategy_for(0), None);
        assert_eq!(plan.strategy_for(1), Some(MaskStrategy::Email));
        assert_eq!(plan.strategy_for(2), None);
        assert_eq!(plan.strategy_for(3), Some(MaskStrategy::Redact));
        assert_eq!(plan.strategy_for(99), None);
        let masked: Vec<_> = plan.masked_columns().collect();
        assert_eq!(
            masked,
            [(1, MaskStrategy::Email), (3, MaskStrategy::Redact)]
        );
    }

    #[test]
    fn non_ascii_names_match_case_insensitively() {
        let plan = MaskPlan::build(&[rule("ÉTAT", MaskStrategy::Hash)], ["état"]);
        assert_eq!(plan.strategy_for(0), Some(MaskStrategy::Hash));
    }

    #[test]
    fn duplicate_columns_are_all_masked() {
        let plan = MaskPlan::build(
            &[rule("email", MaskStrategy::Hash)],
            ["email", "x", "email"],
        );
        let masked: Vec<_> = plan.masked_columns().collect();
        assert_eq!(masked, [(0, MaskStrategy::Hash), (2, MaskStrategy::Hash)]);
    }

    #[test]
    fn duplicate_rules_keep_the_most_protective() {
        let rules = [
            rule("email", MaskStrategy::Email),
            rule("EMAIL", MaskStrategy::Hash),
            rule("email", MaskStrategy::Partial),
            rule("phone", MaskStrategy::Partial),
            rule("phone", MaskStrategy::Redact),
        ];
        let plan = MaskPlan::build(&rules, ["email", "phone"]);
        assert_eq!(plan.strategy_for(0), Some(MaskStrategy::Hash));
        assert_eq!(plan.strategy_for(1), Some(MaskStrategy::Redact));
    }

    #[test]
    fn table_qualified_rules_match_the_column_name() {
        let plan = MaskPlan::build(&[rule("users.email", MaskStrategy::Email)], ["Email", "id"]);
        assert_eq!(plan.strategy_for(0), Some(MaskStrategy::Email));
        assert_eq!(plan.strategy_for(1), None);
    }

    #[test]
    fn empty_plans() {
        assert!(MaskPlan::empty().is_empty());
        assert_eq!(MaskPlan::empty().strategy_for(0), None);
        assert!(MaskPlan::build(&[], ["a", "b"]).is_empty());
        assert!(MaskPlan::build(&[rule("z", MaskStrategy::Redact)], ["a"]).is_empty());
        assert_eq!(MaskPlan::empty().masked_columns().count(), 0);
    }

    #[test]
    fn builds_from_owned_names() {
        let names = [String::from("a"), String::from("secret")];
        let plan = MaskPlan::build(
            &[rule("secret", MaskStrategy::Redact)],
            names.iter().map(String::as_str),
        );
        assert_eq!(plan.strategy_for(1), Some(MaskStrategy::Redact));
    }

    #[test]
    fn union_takes_the_more_protective_strategy_per_column() {
        let rule = |c: &str, s| MaskRule {
            column: c.into(),
            strategy: s,
        };
        let by_alias =
            MaskPlan::build(&[rule("contact", MaskStrategy::Partial)], ["id", "contact"]);
        let by_origin = MaskPlan::build(
            &[
                rule("email", MaskStrategy::Redact),
                rule("id", MaskStrategy::Hash),
            ],
            ["id", "email"],
        );
        let u = by_alias.union(&by_origin);
        assert_eq!(u.strategy_for(0), Some(MaskStrategy::Hash));
        assert_eq!(u.strategy_for(1), Some(MaskStrategy::Redact));
        assert_eq!(u.masked_columns().count(), 2);
        assert!(MaskPlan::empty().union(&MaskPlan::empty()).is_empty());
    }
}
