-- Just-in-time access: access requests (which become grants when approved) and the
-- org's approval rules. Same portable subset as 0001: TEXT and BIGINT only, times in unix
-- milliseconds, JSON in TEXT.

CREATE TABLE access_requests (
    org_id               TEXT   NOT NULL REFERENCES orgs (id),
    id                   TEXT   NOT NULL,
    -- Identity and resource by name: what people type and what connectors match on.
    requester            TEXT   NOT NULL,
    resource             TEXT   NOT NULL,
    reason               TEXT   NOT NULL,
    requested_duration_s BIGINT NOT NULL,
    -- JSON object, e.g. {"operation": "read"} or {"operation": "tool", "target": "x"}.
    scopes               TEXT   NOT NULL,
    status               TEXT   NOT NULL CHECK (status IN
        ('pending', 'approved', 'denied', 'expired', 'cancelled', 'revoked')),
    created_at           BIGINT NOT NULL,
    decided_at           BIGINT,
    decided_by           TEXT,
    decision_reason      TEXT,
    -- When the grant ends (set on approval).
    expires_at           BIGINT,
    -- When a still-pending request expires (the pending TTL, not the access duration).
    pending_expires_at   BIGINT NOT NULL,
    revoked_at           BIGINT,
    revoked_by           TEXT,
    revoke_reason        TEXT,
    PRIMARY KEY (org_id, id)
);
CREATE INDEX access_requests_status ON access_requests (org_id, status);
CREATE INDEX access_requests_requester ON access_requests (org_id, requester);

-- One row per org: the approval rules as a JSON document (see `ApprovalRules`).
CREATE TABLE approval_rules (
    org_id     TEXT   NOT NULL PRIMARY KEY REFERENCES orgs (id),
    rules      TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);
