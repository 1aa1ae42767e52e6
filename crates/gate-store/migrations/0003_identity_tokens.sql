-- Identity tokens also sign people in to the control plane (`gate login`): look them up by
-- digest. Tokens are random, so a digest belongs to one identity across all orgs.
CREATE INDEX identities_token ON identities (token_sha256);
