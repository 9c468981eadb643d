"""How the login service runs its logins: one frozen value, built by the composition root
(:func:`broker.app.wiring.login_settings`) from ``[web]`` and ``[oauth]``; tests build it
directly."""

from __future__ import annotations

from dataclasses import dataclass

from broker.errors import InvalidArgument
from broker.login.restarts import MAX_RESTARTS

MAX_PENDING_LOGINS = 10_000


@dataclass(frozen=True)
class LoginSettings:
    """``public_base_url``: where the broker's HTTPS listener is reached (absolute, no trailing
    ``/``); request objects are published under it. ``login_ttl``: seconds a login stays
    pending. ``label_default``: the label of a login started without one. ``max_pending``: the
    most pending logins at once (more are refused, retryably). ``retention``: seconds an ended
    login stays visible to queries (``None``: ``login_ttl``). ``max_restarts``: how often one
    login restarts after a curable exchange failure (:mod:`broker.login.restarts`)."""

    public_base_url: str
    login_ttl: float = 600.0
    label_default: str = "default"
    max_pending: int = MAX_PENDING_LOGINS
    retention: float | None = None
    max_restarts: int = MAX_RESTARTS

    def __post_init__(self) -> None:
        base = self.public_base_url
        if not base.startswith(("https://", "http://")) or base.endswith("/"):
            raise InvalidArgument("public_base_url must be an absolute URL without a trailing '/'")
        if self.login_ttl <= 0:
            raise InvalidArgument("login_ttl must be positive")
        if self.max_pending < 1:
            raise InvalidArgument("max_pending must be at least 1")
        if self.max_restarts < 0:
            raise InvalidArgument("max_restarts must not be negative")

    @property
    def kept_for(self) -> float:
        """Seconds an ended login stays visible (``retention``, else ``login_ttl``)."""
        return self.login_ttl if self.retention is None else self.retention
