"""The broker: an HSM-backed OAuth 2.1 / OpenID Connect token broker for the DOME Verifier."""

__version__ = "0.1.0"
