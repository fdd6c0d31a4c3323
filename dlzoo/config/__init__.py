"""Configs: the typed schema, composing conf/ with overrides (compose), checking the result (validate) and the
resolvers and launcher facts sweeps need (launch)."""
