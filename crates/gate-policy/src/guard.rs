//! Decides whether a policy may run on regorus' RVM without changing its meaning.
//!
//! In OPA (and regorus' interpreter) a complete rule or function that produces two different
//! values is an evaluation error, so Gate denies. regorus 0.14.1's RVM does not report that:
//! it makes a rule whose definitions disagree *undefined* ("no opinion", i.e. allow) and lets
//! an iterating body pick one of its values. Both can turn a deny into an allow, so a policy
//! that could produce such a conflict runs on the interpreter instead. The check is
//! syntactic and conservative: it may send a conflict-free policy to the (slower)
//! interpreter, never a conflict-prone one to the RVM.
//!
//! A rule is conflict-prone when
//! - it has several definitions (outside `else` chains) whose values are not all the same
//!   constant, or
//! - one of its bodies iterates (`some`, or a reference indexed by a variable such as
//!   `input.tables[_]`) and its value (or its object key) is not a constant, or
//! - its value or key expression itself enumerates a collection (`p := input.xs[_]`).
//!
//! Partial set rules (`contains`) accumulate and cannot conflict.

use std::collections::BTreeMap;

use regorus::unstable::{Expr, Literal, Module, Query, Rule, RuleHead};

/// Returns why the module must not run on the RVM, or `None` when it is safe.
pub(crate) fn rvm_conflict_risk(module: &Module) -> Option<String> {
    // head text → the constant text of each definition's value (None: not constant)
    let mut definitions: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for rule in &module.policy {
        let Rule::Spec { head, bodies, .. } = rule.as_ref() else {
            continue; // `default` rules have constant values and never conflict
        };
        let (refr, head_value, is_function) = match head {
            RuleHead::Compr { refr, assign, .. } => {
                (refr, assign.as_ref().map(|a| &a.value), false)
            }
            RuleHead::Func { refr, assign, .. } => (refr, assign.as_ref().map(|a| &a.value), true),
            RuleHead::Set { .. } => continue,
        };
        let name = refr.span().text().to_string();
        let key_is_constant = is_function || ref_is_constant(refr);
        // A rule without a value (`allow if ...`) has the constant value `true`.
        let head_constant = head_value.map_or(Some("true".to_string()), |v| constant_text(v));
        // A value or key that itself enumerates (`p := input.xs[_]`) may yield several.
        if head_value.is_some_and(|v| expr_iterates(v))
            || (!is_function && expr_iterates(refr))
            || bodies
                .iter()
                .any(|b| b.assign.as_ref().is_some_and(|a| expr_iterates(&a.value)))
        {
            return Some(format!(
                "the value of rule `{name}` enumerates a collection, so it may produce \
                 several values"
            ));
        }
        for body in bodies {
            let value_constant = match &body.assign {
                Some(assign) => constant_text(&assign.value),
                None => head_constant.clone(),
            };
            if (value_constant.is_none() || !key_is_constant) && query_iterates(&body.query) {
                return Some(format!(
                    "rule `{name}` computes its value in a body that iterates, so it may \
                     produce several values"
                ));
            }
        }
        definitions.entry(name).or_default().push(head_constant);
    }
    for (name, values) in definitions {
        if values.len() > 1 && (values.iter().any(Option::is_none) || !all_equal(&values)) {
            return Some(format!(
                "rule `{name}` has {} definitions that may produce different values",
                values.len()
            ));
        }
    }
    None
}

fn all_equal(values: &[Option<String>]) -> bool {
    values.windows(2).all(|w| w[0] == w[1])
}

fn is_constant(expr: &Expr) -> bool {
    match expr {
        Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. } => true,
        Expr::Array { items, .. } | Expr::Set { items, .. } => items.iter().all(|i| is_constant(i)),
        Expr::Object { fields, .. } => fields
            .iter()
            .all(|(_, k, v)| is_constant(k) && is_constant(v)),
        _ => false,
    }
}

fn constant_text(expr: &Expr) -> Option<String> {
    is_constant(expr).then(|| expr.span().text().to_string())
}

/// `a.b["c"]` is a constant path; `a[x]` (a partial object key) is not.
fn ref_is_constant(expr: &Expr) -> bool {
    match expr {
        Expr::Var { .. } => true,
        Expr::RefDot { refr, .. } => ref_is_constant(refr),
        Expr::RefBrack { refr, index, .. } => is_constant(index) && ref_is_constant(refr),
        _ => false,
    }
}

fn query_iterates(query: &Query) -> bool {
    query.stmts.iter().any(|stmt| match &stmt.literal {
        Literal::SomeVars { .. } | Literal::SomeIn { .. } => true,
        Literal::Expr { expr, .. } => expr_iterates(expr),
        // Negation and `every` bind nothing outside themselves.
        Literal::NotExpr { .. } | Literal::Every { .. } => false,
    })
}

fn expr_iterates(expr: &Expr) -> bool {
    match expr {
        Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. }
        | Expr::Var { .. } => false,
        // A comprehension collects its iterations into one value.
        Expr::ArrayCompr { .. } | Expr::SetCompr { .. } | Expr::ObjectCompr { .. } => false,
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            items.iter().any(|i| expr_iterates(i))
        }
        Expr::Object { fields, .. } => fields
            .iter()
            .any(|(_, k, v)| expr_iterates(k) || expr_iterates(v)),
        Expr::Call { params, .. } => params.iter().any(|p| expr_iterates(p)),
        Expr::UnaryExpr { expr, .. } => expr_iterates(expr),
        Expr::RefDot { refr, .. } => expr_iterates(refr),
        // `xs[_]`, `xs[i]`: a non-constant index may enumerate the collection.
        Expr::RefBrack { refr, index, .. } => {
            !is_constant(index) || expr_iterates(refr) || expr_iterates(index)
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => expr_iterates(lhs) || expr_iterates(rhs),
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            key.as_ref().is_some_and(|k| expr_iterates(k))
                || expr_iterates(value)
                || expr_iterates(collection)
        }
        // Variants behind optional regorus features (e.g. `rego-extensions`): assume the
        // worst.
        #[allow(unreachable_patterns)]
        _ => true,
    }
}
