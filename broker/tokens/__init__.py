"""The token core: grants, their store, freshness and single-flight refresh."""
