"""Access policies and groups: CRUD services, resolution to a RowFilter, and explanation.

Services follow the rest of tidegate: they take the caller's session (one transaction per
request), an `actor` (None for the operator CLI) and an optional RequestContext, raise
tidegate.errors, and add one audit event per change inside the caller's transaction.
Policies and groups are looked up org-scoped (`get_policy`, `get_group`); every id a service
receives in a list is resolved against the organization of the object it is attached to, so
nothing crosses organizations.

The package, one concern a module:
- `validation`: names, descriptions, row filters, column rules, source ids, id lists;
- `changes`: the shapes the services share (field updates, add/remove links);
- `crud`: policies, their user assignments, and the org's deny-by-default setting;
- `groups`: groups, their members and policies;
- `resolution`: the policies reaching a user or key -> a RowFilter (every data request);
- `explanation`: the same resolution as a typed `Explanation` for people, and `where_clause`.

Callers use the names below (`from tidegate.access import policies`; `policies.create_policy`).
"""

from __future__ import annotations

from tidegate.access.policies.crud import (
    AssignResult,
    RemoveResult,
    ReplaceResult,
    assign_users,
    create_policy,
    delete_policy,
    direct_policy_ids,
    get_policy,
    list_policies,
    policy_user_counts,
    policy_user_ids,
    remove_user,
    replace_user_policies,
    set_deny_by_default,
    update_policy,
)
from tidegate.access.policies.explanation import (
    Explanation,
    effective_access,
    explain_key,
    explain_user,
    filter_columns,
    quote_identifier,
    quote_literal,
    resolve_key_view,
    resolve_view,
    where_clause,
)
from tidegate.access.policies.groups import (
    add_group_members,
    assign_group_policies,
    create_group,
    delete_group,
    get_group,
    group_member_ids,
    group_policy_ids,
    list_groups,
    policy_group_ids,
    remove_group_member,
    remove_group_policy,
    update_group,
)
from tidegate.access.policies.resolution import resolve_key_filter, resolve_user_filter
from tidegate.access.policies.validation import (
    MAX_COLUMN,
    MAX_COLUMN_RULES,
    MAX_DESCRIPTION,
    MAX_FILTERS,
    MAX_IDS_PER_CALL,
    MAX_NAME,
    MAX_SOURCE_ID,
    MAX_SOURCE_IDS,
    MAX_VALUE,
    MAX_VALUES,
    UNSET,
    normalize_column_rules,
    normalize_row_filters,
    normalize_source_ids,
    resolve_user_ids,
    validate_policy_ids,
)

__all__ = [
    "AssignResult",
    "Explanation",
    "MAX_COLUMN",
    "MAX_COLUMN_RULES",
    "MAX_DESCRIPTION",
    "MAX_FILTERS",
    "MAX_IDS_PER_CALL",
    "MAX_NAME",
    "MAX_SOURCE_ID",
    "MAX_SOURCE_IDS",
    "MAX_VALUE",
    "MAX_VALUES",
    "RemoveResult",
    "ReplaceResult",
    "UNSET",
    "add_group_members",
    "assign_group_policies",
    "assign_users",
    "create_group",
    "create_policy",
    "delete_group",
    "delete_policy",
    "direct_policy_ids",
    "effective_access",
    "explain_key",
    "explain_user",
    "filter_columns",
    "get_group",
    "get_policy",
    "group_member_ids",
    "group_policy_ids",
    "list_groups",
    "list_policies",
    "normalize_column_rules",
    "normalize_row_filters",
    "normalize_source_ids",
    "policy_group_ids",
    "policy_user_counts",
    "policy_user_ids",
    "quote_identifier",
    "quote_literal",
    "remove_group_member",
    "remove_group_policy",
    "remove_user",
    "replace_user_policies",
    "resolve_key_filter",
    "resolve_key_view",
    "resolve_user_filter",
    "resolve_user_ids",
    "resolve_view",
    "set_deny_by_default",
    "update_group",
    "update_policy",
    "validate_policy_ids",
    "where_clause",
]
