# Example Gate policy: the one configs/ loads by default.
#
# Gate evaluates one rule per stage in this package:
#   session       once, when a session opens (after authentication)
#   pre_request   before each request (SQL statement, command, tool call) is forwarded
#   post_request  once per result shape (e.g. a row description), to plan masking
# (`request` / `response` are accepted as aliases of pre_request / post_request.)
#
# A rule may produce a decision object
#   {"action": "allow"|"block"|"rewrite"|"mask"|"filter", "reason": ..., "query": ...,
#    "masks": [{"column": ..., "strategy": "redact"|"partial"|"hash"|"email"}], "filters": [...]}
# (`action` may be left out: it is then "mask" when masks are given, otherwise "allow"),
# or a boolean (true = allow, false = block), or stay undefined (no opinion = allow).
# Anything else, and any evaluation error, blocks the request (Gate fails closed).
#
# Input: input.user.{sub,name,email,groups}, input.resource.{name,protocol,database},
# input.session.{id,client_addr}, input.query.{type,statement,tables} (pre_request on SQL),
# input.query.{type,tables} and input.columns[_].name (post_request: planned once per result
# shape, so it does not see the statement text).
package formal.v2

import rego.v1

# Everyone who authenticated and holds a grant may open a session.
session := {"action": "allow"}

# DROP statements never go through Gate.
default pre_request := {"action": "allow"}

pre_request := {
	"action": "block",
	"reason": "DROP statements are not allowed through Gate",
} if {
	input.query.type == "drop"
}

# Sensitive columns and how they are masked.
sensitive_columns := {
	"email": "partial",
	"ssn": "redact",
}

# Masks are planned only for the sensitive columns that are actually in the result
# (column names compare case-insensitively), so results without them stay "allow".
# The mask uses the policy's canonical column name; Gate matches it case-insensitively.
masks contains {"column": name, "strategy": strategy} if {
	some col in input.columns
	some name, strategy in sensitive_columns
	lower(col.name) == name
}

# COPY … TO STDOUT streams rows whose columns Gate cannot see (input.columns is empty), so it
# cannot mask them one by one. Asking for the masks whenever a COPY reads a table that holds
# sensitive columns makes Gate refuse that COPY instead of letting the raw values out.
tables_with_sensitive_columns := {"users", "public.users"}

masks contains {"column": name, "strategy": strategy} if {
	input.query.type == "copy"
	some table in input.query.tables
	lower(table) in tables_with_sensitive_columns
	some name, strategy in sensitive_columns
}

default post_request := {"action": "allow"}

post_request := {"action": "mask", "masks": masks} if {
	count(masks) > 0
}
