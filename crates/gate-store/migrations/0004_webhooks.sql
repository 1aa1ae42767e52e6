-- Signed webhooks (Standard Webhooks): endpoints per org, and the durable delivery queue the
-- control plane's delivery worker drains. Same portable subset as 0001: TEXT and BIGINT
-- only, times in unix milliseconds, JSON in TEXT, booleans as 0/1 BIGINT.

CREATE TABLE webhook_endpoints (
    org_id                     TEXT   NOT NULL REFERENCES orgs (id),
    id                         TEXT   NOT NULL,
    url                        TEXT   NOT NULL,
    description                TEXT   NOT NULL,
    -- JSON list of event types or patterns ("access.approved", "session.*", "*").
    events                     TEXT   NOT NULL,
    disabled                   BIGINT NOT NULL,
    -- Why it was disabled (set by an admin or by a receiver answering 410 Gone).
    disabled_reason            TEXT,
    -- The signing secrets, `whsec_<base64>`. Signing needs them in plain text, so they are
    -- stored as given: access to this table is access to the secrets.
    secret                     TEXT   NOT NULL,
    -- The secret replaced by the last rotation, valid (signing too) until the time below.
    previous_secret            TEXT,
    previous_secret_expires_at BIGINT,
    created_at                 BIGINT NOT NULL,
    updated_at                 BIGINT NOT NULL,
    PRIMARY KEY (org_id, id)
);

-- One row per (endpoint, event): the queue and the delivery history.
CREATE TABLE webhook_deliveries (
    org_id          TEXT   NOT NULL,
    id              TEXT   NOT NULL,
    endpoint_id     TEXT   NOT NULL,
    -- The event's id, sent as `webhook-id` on every attempt (receivers deduplicate on it).
    event_id        TEXT   NOT NULL,
    event_type      TEXT   NOT NULL,
    -- The request body, exactly as signed and sent.
    payload         TEXT   NOT NULL,
    status          TEXT   NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        BIGINT NOT NULL,
    -- When a pending delivery is due; while an attempt is in flight, when its lease ends.
    next_attempt_at BIGINT NOT NULL,
    last_attempt_at BIGINT,
    -- The receiver's HTTP status of the last attempt (none: no response).
    last_status     BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    PRIMARY KEY (org_id, id),
    UNIQUE (org_id, endpoint_id, event_id),
    FOREIGN KEY (org_id, endpoint_id) REFERENCES webhook_endpoints (org_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (org_id, endpoint_id, created_at);
