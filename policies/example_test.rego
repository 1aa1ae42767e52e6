# Tests for example.rego: `gate-policy test policies/example.rego policies/example_test.rego`
package formal.v2_test

import rego.v1

import data.formal.v2

alice := {"sub": "u-1", "name": "alice", "email": "alice@example.com", "groups": ["dev"]}

test_session_allows_everyone if {
	v2.session.action == "allow" with input as {"user": alice}
}

test_drop_is_blocked if {
	d := v2.pre_request with input as {"user": alice, "query": {"type": "drop", "statement": "DROP TABLE t", "tables": ["t"]}}
	d.action == "block"
	contains(d.reason, "DROP")
}

test_select_is_allowed if {
	d := v2.pre_request with input as {"user": alice, "query": {"type": "select", "statement": "SELECT 1", "tables": []}}
	d.action == "allow"
}

test_email_and_ssn_are_masked if {
	d := v2.post_request with input as {"user": alice, "columns": [{"name": "id"}, {"name": "EMAIL"}, {"name": "ssn"}]}
	d.action == "mask"
	{"column": "email", "strategy": "partial"} in d.masks
	{"column": "ssn", "strategy": "redact"} in d.masks
	count(d.masks) == 2
}

test_no_sensitive_columns_no_masks if {
	d := v2.post_request with input as {"user": alice, "columns": [{"name": "id"}]}
	d.action == "allow"
}

# COPY … TO STDOUT has no visible columns: reading a sensitive table asks for the masks, so
# Gate refuses the COPY rather than streaming raw values.
test_copy_of_a_sensitive_table_asks_for_masks if {
	d := v2.post_request with input as {"user": alice, "columns": [], "query": {"type": "copy", "statement": "COPY users TO STDOUT", "tables": ["users"]}}
	d.action == "mask"
	count(d.masks) == 2
}

test_copy_of_other_tables_is_allowed if {
	d := v2.post_request with input as {"user": alice, "columns": [], "query": {"type": "copy", "statement": "COPY items TO STDOUT", "tables": ["items"]}}
	d.action == "allow"
}
