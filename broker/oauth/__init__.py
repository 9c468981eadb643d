"""OAuth 2.1 / OIDC client side: one module per spec, one verb per operation."""
