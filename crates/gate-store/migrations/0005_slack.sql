-- Slack approvals: where the approval message of each access request was posted, so later
-- transitions (decided in Slack, through the API, by expiry or revocation) update that
-- message instead of leaving a stale "pending" in the channel. Same portable subset as
-- 0001: TEXT and BIGINT only, times in unix milliseconds.
--
-- No foreign key to orgs: like audit_events, these rows are a record of something that
-- happened outside the store, and they must not keep an org from being deleted.

CREATE TABLE slack_messages (
    org_id            TEXT   NOT NULL,
    access_request_id TEXT   NOT NULL,
    -- Slack's channel id (C…, G…, D…) and message timestamp ("1700000000.000100"), which
    -- together name a message in chat.update.
    channel           TEXT   NOT NULL,
    ts                TEXT   NOT NULL,
    created_at        BIGINT NOT NULL,
    PRIMARY KEY (org_id, access_request_id)
);
