//! Slack approvals: the message each access request was posted as.
//!
//! The control plane posts a request to a Slack channel once and remembers the message's
//! channel and `ts` here, so that every later transition can `chat.update` the same
//! message. One message per request: the first one recorded wins (`ON CONFLICT DO
//! NOTHING`), so a post that was retried — or a click on a message this process did not
//! record — never replaces the message already known.

use crate::{OrgId, Result, RowExt as _, Store, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use uuid::Uuid;

/// Where an access request's approval message lives in Slack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackMessage {
    pub org_id: OrgId,
    pub access_request_id: Uuid,
    /// Slack's channel id (`C…`, `G…`, `D…`).
    pub channel: String,
    /// The message's timestamp, Slack's message id within the channel.
    pub ts: String,
    pub created_at: i64,
}

fn message_from_row(row: &AnyRow) -> Result<SlackMessage> {
    Ok(SlackMessage {
        org_id: row.org_id("org_id")?,
        access_request_id: row.uuid("access_request_id")?,
        channel: row.text("channel")?,
        ts: row.text("ts")?,
        created_at: row.int("created_at")?,
    })
}

/// Channel ids and timestamps are short ASCII tokens; anything else is not from Slack.
fn validate_token(what: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > 100 || value.chars().any(|c| c.is_control()) {
        return Err(StoreError::Invalid(format!(
            "Slack {what} must be 1 to 100 characters without control characters"
        )));
    }
    Ok(())
}

impl Store {
    /// Remembers where `request`'s message was posted. Returns `false` (and changes
    /// nothing) when a message was already recorded for it.
    pub async fn record_slack_message(
        &self,
        org: OrgId,
        request: Uuid,
        channel: &str,
        ts: &str,
        now: i64,
    ) -> Result<bool> {
        validate_token("channel", channel)?;
        validate_token("ts", ts)?;
        let done = sqlx::query(
            "INSERT INTO slack_messages (org_id, access_request_id, channel, ts, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org_id, access_request_id) DO NOTHING",
        )
        .bind(org.to_string())
        .bind(request.to_string())
        .bind(channel)
        .bind(ts)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The message `request` was posted as, if any.
    pub async fn get_slack_message(
        &self,
        org: OrgId,
        request: Uuid,
    ) -> Result<Option<SlackMessage>> {
        let row = sqlx::query(
            "SELECT org_id, access_request_id, channel, ts, created_at FROM slack_messages \
             WHERE org_id = $1 AND access_request_id = $2",
        )
        .bind(org.to_string())
        .bind(request.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(message_from_row).transpose()
    }
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreOptions};
    use uuid::Uuid;

    #[tokio::test]
    async fn first_message_wins_and_orgs_are_separate() {
        let store = Store::connect(&StoreOptions::new("sqlite::memory:"))
            .await
            .unwrap();
        let org = store.create_org("acme").await.unwrap().id;
        let other = store.create_org("other").await.unwrap().id;
        let id = Uuid::now_v7();
        assert_eq!(store.get_slack_message(org, id).await.unwrap(), None);
        assert!(
            store
                .record_slack_message(org, id, "C1", "1700000000.000100", 5)
                .await
                .unwrap()
        );
        assert!(
            !store
                .record_slack_message(org, id, "C2", "1700000000.000200", 6)
                .await
                .unwrap()
        );
        let m = store.get_slack_message(org, id).await.unwrap().unwrap();
        assert_eq!(
            (m.channel.as_str(), m.ts.as_str(), m.created_at),
            ("C1", "1700000000.000100", 5)
        );
        assert_eq!(m.access_request_id, id);
        assert_eq!(store.get_slack_message(other, id).await.unwrap(), None);
        assert!(
            store
                .record_slack_message(org, Uuid::now_v7(), "", "1.2", 1)
                .await
                .is_err()
        );
        store.close().await;
    }
}
