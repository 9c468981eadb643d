"""The PostgreSQL driver is the optional ``postgres`` extra of the distribution.

psycopg is imported only when ``[store] kind = "postgres"`` is configured: serve and the doctor
call :func:`require_postgres_driver` before they import :mod:`broker.tokens.stores.postgres`, so an
installation without the extra runs the SQLite store and fails a postgres configuration with a
:class:`ConfigError` naming the extra, not an ImportError from deep inside the store.
"""

from __future__ import annotations

import importlib

from broker.errors import ConfigError

DRIVER = "psycopg"
INSTALL_HINT = "pip install 'dome-token-broker[postgres]'"


def require_postgres_driver() -> None:
    """Import psycopg or raise :class:`ConfigError` (not retryable: installing the extra is an
    operator's change)."""
    try:
        importlib.import_module(DRIVER)
    except ImportError as exc:
        raise ConfigError(
            '[store] kind = "postgres" needs the PostgreSQL driver (psycopg), which is not '
            f"installed: install the distribution's postgres extra ({INSTALL_HINT}) or use "
            'kind = "sqlite"',
            reason="missing_extra",
        ) from exc
