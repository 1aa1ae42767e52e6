//! What Slack shows: the approval message (Block Kit) and the requester's notifications.
//!
//! A pending request is a summary, its details and an actions block with **Approve** and
//! **Deny** buttons. Each button's `value` is `"<org_id>:<request_id>"` — enough to find
//! the request, nothing more: a click is still decided by the service, with the clicker's
//! own identity. Once the request is decided (or expires, is cancelled, or revoked) the
//! same message is re-rendered without the buttons, saying what happened, who decided and
//! when.
//!
//! Everything that comes from people (names, reasons) is escaped for Slack's mrkdwn (`&`,
//! `<`, `>`), so a reason cannot mention `@channel` or forge a link.

use gate_store::time::format_rfc3339_ms;
use gate_store::{AccessRequest, AccessStatus, OrgId};
use serde_json::{Value, json};
use uuid::Uuid;

/// `action_id` of the Approve button.
pub const APPROVE_ACTION: &str = "gate_access_approve";
/// `action_id` of the Deny button.
pub const DENY_ACTION: &str = "gate_access_deny";
/// `block_id` prefix of the actions block (followed by the request id).
pub const ACTIONS_BLOCK_PREFIX: &str = "gate_access_actions:";

/// Escapes text for mrkdwn, as Slack asks: `&`, `<` and `>`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to at most `max` characters (Slack limits section text to 3000).
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `2026-11-21 10:04:05 UTC`.
pub fn utc(ms: i64) -> String {
    let rfc = format_rfc3339_ms(ms);
    match rfc.get(..19) {
        Some(s) => format!("{} UTC", s.replace('T', " ")),
        None => rfc,
    }
}

/// A time in the reader's own time zone, falling back to UTC text.
pub fn when(ms: i64) -> String {
    format!(
        "<!date^{}^{{date_short_pretty}} at {{time}}|{}>",
        ms.div_euclid(1000),
        utc(ms)
    )
}

/// `1h 30m`.
pub fn duration(s: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(s.max(0).unsigned_abs())).to_string()
}

/// The button value for a request.
pub fn button_value(org: OrgId, id: Uuid) -> String {
    format!("{org}:{id}")
}

/// Parses a button value back into `(org, request)`.
pub fn parse_button_value(value: &str) -> Option<(OrgId, Uuid)> {
    let (org, id) = value.split_once(':')?;
    let org: Uuid = org.trim().parse().ok()?;
    let id: Uuid = id.trim().parse().ok()?;
    Some((OrgId(org), id))
}

fn scopes(r: &AccessRequest) -> String {
    match r.scopes.as_object() {
        Some(o) if !o.is_empty() => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}: {s}"),
                v => format!("{k}: {v}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "everything".to_string(),
    }
}

/// What happened to a request that is no longer pending, in one mrkdwn line.
pub fn outcome(r: &AccessRequest) -> Option<String> {
    let by = |who: &Option<String>| escape(who.as_deref().unwrap_or("someone"));
    let at = |ms: Option<i64>| ms.map(when).unwrap_or_else(|| "an unknown time".into());
    let reason = |why: &Option<String>| match why.as_deref().map(str::trim) {
        Some(w) if !w.is_empty() => format!("\n>{}", escape(w)),
        _ => String::new(),
    };
    Some(match r.status {
        AccessStatus::Pending => return None,
        AccessStatus::Approved => format!(
            ":white_check_mark: *Approved* by *{}* at {}. Access until {}.{}",
            by(&r.decided_by),
            at(r.decided_at),
            at(r.expires_at),
            reason(&r.decision_reason)
        ),
        AccessStatus::Denied => format!(
            ":no_entry: *Denied* by *{}* at {}.{}",
            by(&r.decided_by),
            at(r.decided_at),
            reason(&r.decision_reason)
        ),
        AccessStatus::Cancelled => format!(
            ":leftwards_arrow_with_hook: *Cancelled* by *{}* at {}.",
            by(&r.decided_by),
            at(r.decided_at)
        ),
        AccessStatus::Expired if r.decided_by.is_some() => format!(
            ":hourglass: *Expired*: the grant approved by *{}* ended at {}.",
            by(&r.decided_by),
            at(r.expires_at)
        ),
        AccessStatus::Expired => format!(
            ":hourglass: *Expired* without a decision at {}.",
            at(r.decided_at.or(Some(r.pending_expires_at)))
        ),
        AccessStatus::Revoked => format!(
            ":no_entry_sign: *Revoked* by *{}* at {} (approved by *{}*).{}",
            by(&r.revoked_by),
            at(r.revoked_at),
            by(&r.decided_by),
            reason(&r.revoke_reason)
        ),
    })
}

/// The approval message for `r` as it is now: `{text, blocks}` for `chat.postMessage` and
/// `chat.update`. Pending requests get the buttons; any other state gets the outcome.
pub fn request_message(org: OrgId, org_name: &str, r: &AccessRequest) -> Value {
    let summary = format!(
        "*{}* requests access to *{}* for *{}*",
        escape(&r.requester),
        escape(&r.resource),
        duration(r.requested_duration_s)
    );
    let reason = match r.reason.trim() {
        "" => "_no reason given_".to_string(),
        why => format!(">{}", escape(why).replace('\n', "\n>")),
    };
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn",
            "text": clip(&format!("{summary}\n{reason}"), 3000)}}),
        json!({"type": "section", "fields": [
            {"type": "mrkdwn", "text": clip(&format!("*Requester*\n{}", escape(&r.requester)), 2000)},
            {"type": "mrkdwn", "text": clip(&format!("*Resource*\n{}", escape(&r.resource)), 2000)},
            {"type": "mrkdwn", "text": format!("*Duration*\n{}", duration(r.requested_duration_s))},
            {"type": "mrkdwn", "text": clip(&format!("*Scope*\n{}", escape(&scopes(r))), 2000)},
        ]}),
    ];
    let status = match outcome(r) {
        None => {
            blocks.push(
                json!({"type": "context", "elements": [{"type": "mrkdwn", "text":
                clip(&format!("Organization {} · request `{}` · expires unanswered at {}",
                    escape(org_name), r.id, when(r.pending_expires_at)), 3000)}]}),
            );
            let value = button_value(org, r.id);
            blocks.push(json!({
                "type": "actions",
                "block_id": format!("{ACTIONS_BLOCK_PREFIX}{}", r.id),
                "elements": [
                    {"type": "button", "action_id": APPROVE_ACTION, "style": "primary",
                     "text": {"type": "plain_text", "text": "Approve"}, "value": value},
                    {"type": "button", "action_id": DENY_ACTION, "style": "danger",
                     "text": {"type": "plain_text", "text": "Deny"}, "value": value},
                ],
            }));
            "pending".to_string()
        }
        Some(outcome) => {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn",
                "text": clip(&outcome, 3000)}}));
            blocks.push(
                json!({"type": "context", "elements": [{"type": "mrkdwn", "text":
                clip(&format!("Organization {} · request `{}`", escape(org_name), r.id), 3000)}]}),
            );
            r.status.as_str().to_string()
        }
    };
    // The fallback text (notifications, screen readers) is mrkdwn too: escaped as well.
    let text = clip(
        &format!(
            "Access request: {} → {} for {} ({status}{})",
            escape(&r.requester),
            escape(&r.resource),
            duration(r.requested_duration_s),
            escape(&decided_by_suffix(r))
        ),
        3000,
    );
    json!({"text": text, "blocks": blocks})
}

fn decided_by_suffix(r: &AccessRequest) -> String {
    let who = match r.status {
        AccessStatus::Revoked => r.revoked_by.as_ref(),
        AccessStatus::Pending | AccessStatus::Expired => None,
        _ => r.decided_by.as_ref(),
    };
    who.map(|w| format!(" by {w}")).unwrap_or_default()
}

/// The direct message telling a requester what became of their request, for the
/// transitions they are told about (approved, denied, expired, revoked).
pub fn requester_notice(r: &AccessRequest) -> Option<Value> {
    let resource = escape(&r.resource);
    let text = match r.status {
        AccessStatus::Approved => format!(
            ":white_check_mark: Your access request for *{resource}* was *approved* by *{}*. \
             Access until {}.",
            escape(r.decided_by.as_deref().unwrap_or("an approver")),
            r.expires_at.map(when).unwrap_or_default()
        ),
        AccessStatus::Denied => format!(
            ":no_entry: Your access request for *{resource}* was *denied* by *{}*.{}",
            escape(r.decided_by.as_deref().unwrap_or("an approver")),
            r.decision_reason
                .as_deref()
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .map(|w| format!("\n>{}", escape(w)))
                .unwrap_or_default()
        ),
        AccessStatus::Expired if r.decided_by.is_some() => {
            format!(":hourglass: Your access to *{resource}* has *expired*.")
        }
        AccessStatus::Expired => format!(
            ":hourglass: Your access request for *{resource}* *expired* without a decision."
        ),
        AccessStatus::Revoked => format!(
            ":no_entry_sign: Your access to *{resource}* was *revoked* by *{}*.{}",
            escape(r.revoked_by.as_deref().unwrap_or("an approver")),
            r.revoke_reason
                .as_deref()
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .map(|w| format!("\n>{}", escape(w)))
                .unwrap_or_default()
        ),
        AccessStatus::Pending | AccessStatus::Cancelled => return None,
    };
    let text = clip(&format!("{text}\nRequest `{}`", r.id), 3000);
    Some(json!({
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(status: AccessStatus) -> AccessRequest {
        AccessRequest {
            id: Uuid::now_v7(),
            org_id: OrgId::new(),
            requester: "alice".into(),
            resource: "prod-db".into(),
            reason: "incident <!channel> & more".into(),
            requested_duration_s: 5400,
            scopes: json!({"operation": "read"}),
            status,
            created_at: 1_700_000_000_000,
            decided_at: Some(1_700_000_060_000),
            decided_by: Some("bob".into()),
            decision_reason: Some("approved in Slack".into()),
            expires_at: Some(1_700_005_460_000),
            pending_expires_at: 1_700_003_600_000,
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
        }
    }

    #[test]
    fn pending_has_buttons_with_the_request() {
        let org = OrgId::new();
        let r = request(AccessStatus::Pending);
        let m = request_message(org, "acme", &r);
        let text = m.to_string();
        assert!(text.contains("&lt;!channel&gt; &amp; more"), "{text}");
        assert!(!text.contains("<!channel>"));
        // Names in the fallback text are escaped too.
        let mut named = r.clone();
        named.requester = "<!here>".into();
        named.resource = "a&b".into();
        let fallback = request_message(org, "acme", &named)["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            fallback.contains("&lt;!here&gt; → a&amp;b") && !fallback.contains("<!here>"),
            "{fallback}"
        );
        assert!(text.contains("1h 30m"));
        let actions = m["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "actions")
            .unwrap();
        let value = format!("{org}:{}", r.id);
        assert_eq!(actions["elements"][0]["action_id"], APPROVE_ACTION);
        assert_eq!(actions["elements"][0]["value"], value.as_str());
        assert_eq!(actions["elements"][1]["action_id"], DENY_ACTION);
        assert_eq!(parse_button_value(&value), Some((org, r.id)));
        assert_eq!(parse_button_value("x:y"), None);
        assert_eq!(parse_button_value(&r.id.to_string()), None);
    }

    #[test]
    fn decided_messages_say_who_and_when_without_buttons() {
        let org = OrgId::new();
        let m = request_message(org, "acme", &request(AccessStatus::Approved));
        let text = m.to_string();
        assert!(!text.contains("\"actions\""));
        assert!(text.contains("*Approved* by *bob*"), "{text}");
        assert!(text.contains("2023-11-14 22:14:20 UTC"), "{text}");
        assert!(m["text"].as_str().unwrap().contains("approved by bob"));
        let m = request_message(org, "acme", &request(AccessStatus::Denied));
        assert!(m.to_string().contains("*Denied* by *bob*"));
        let mut expired = request(AccessStatus::Expired);
        expired.decided_by = None;
        assert!(
            request_message(org, "acme", &expired)
                .to_string()
                .contains("without a decision")
        );
    }

    #[test]
    fn notices() {
        assert!(requester_notice(&request(AccessStatus::Pending)).is_none());
        assert!(requester_notice(&request(AccessStatus::Cancelled)).is_none());
        let n = requester_notice(&request(AccessStatus::Approved)).unwrap();
        assert!(n["text"].as_str().unwrap().contains("*approved* by *bob*"));
        let mut revoked = request(AccessStatus::Revoked);
        revoked.revoked_by = Some("carol".into());
        let n = requester_notice(&revoked).unwrap();
        assert!(n["text"].as_str().unwrap().contains("*revoked* by *carol*"));
    }
}
