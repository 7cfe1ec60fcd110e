"""`bfcl-mt`: BFCL multi-turn (base, miss_func, miss_param, long_context), played over MCP and scored by
`bfcl-eval`'s own `multi_turn_checker`."""
