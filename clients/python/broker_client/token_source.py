"""``TokenSource``: the current access token of one grant, for blocking code.

A background thread keeps a ``WatchAccessToken`` stream open and caches every token it
delivers; :meth:`TokenSource.token` serves the cache while the token is valid for more than
``margin`` seconds and otherwise (stream down, token about to expire) calls ``GetAccessToken``
before answering. An expired token, or one inside the margin, is never returned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from broker_client.backoff import DEFAULT_BACKOFF, Backoff
from broker_client.channel import secure_channel
from broker_client.client import BrokerClient, TokenStream
from broker_client.errors import BrokerClientError, SourceClosed, TokenExpired
from broker_client.token import DEFAULT_MARGIN, AccessToken, newer

log = logging.getLogger("broker_client")

# Asked of the broker on top of the margin, so a fetched token outlives the margin by this much
# once it arrives (transit time, clock granularity).
FETCH_SLACK = 5.0
_JOIN_TIMEOUT = 5.0


def fetch_min_ttl(margin: float) -> float:
    return min(margin + FETCH_SLACK, 3600.0)


def check_usable(token: AccessToken, now: float, margin: float) -> AccessToken:
    if not token.usable(now, margin):
        raise TokenExpired(
            f"the broker's token for grant {token.grant_id} expires within {margin:.0f} s "
            "(caller and broker clocks may disagree)"
        )
    return token


class TokenSource:
    """Keeps the current token of ``grant_id``; thread-safe; ``close()`` or use as a context
    manager. ``clock`` returns epoch seconds (tests pass a fake one)."""

    def __init__(
        self,
        client: BrokerClient,
        grant_id: str,
        *,
        margin: float = DEFAULT_MARGIN,
        watch: bool = True,
        backoff: Backoff = DEFAULT_BACKOFF,
        clock: Callable[[], float] = time.time,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if margin < 0:
            raise ValueError("margin must not be negative")
        self.grant_id = grant_id
        self.margin = margin
        self._client = client
        self._backoff = backoff
        self._clock = clock
        self._on_close = on_close
        self._lock = threading.Lock()  # guards _current and _stream
        self._fetch_lock = threading.Lock()  # one GetAccessToken at a time
        self._closed = threading.Event()
        self._current: AccessToken | None = None
        self._stream: TokenStream | None = None
        self._watching = False
        self._thread: threading.Thread | None = None
        if watch:
            self._thread = threading.Thread(
                target=self._watch_loop, name=f"broker-watch-{grant_id}", daemon=True
            )
            self._thread.start()

    @classmethod
    def connect(
        cls,
        target: str,
        grant_id: str,
        *,
        ca: str | Path,
        cert: str | Path,
        key: str | Path,
        server_name: str | None = None,
        margin: float = DEFAULT_MARGIN,
        clock: Callable[[], float] = time.time,
    ) -> TokenSource:
        """A source on its own mTLS channel to ``target``, closed with the source."""
        channel = secure_channel(target, ca=ca, cert=cert, key=key, server_name=server_name)
        return cls(
            BrokerClient(channel), grant_id, margin=margin, clock=clock, on_close=channel.close
        )

    # --- serving ------------------------------------------------------------------------------

    @property
    def cached(self) -> AccessToken | None:
        """The cached token, whatever its state (no call to the broker)."""
        return self._current

    @property
    def watching(self) -> bool:
        """Whether the watch stream has delivered a token since it was last (re)opened."""
        return self._watching

    def token(self) -> AccessToken:
        """A token valid for more than ``margin`` seconds; calls ``GetAccessToken`` (blocking)
        when the cache has none. Raises :class:`~broker_client.errors.BrokerClientError`."""
        self._check_open()
        current = self._current
        if current is not None and current.usable(self._clock(), self.margin):
            return current
        with self._fetch_lock:
            current = self._current  # another thread may have fetched meanwhile
            if current is not None and current.usable(self._clock(), self.margin):
                return current
            fetched = self._fetch()
            with self._lock:
                self._current = newer(self._current, fetched)
                return self._current

    def refresh(self, rejected: AccessToken | None = None) -> AccessToken:
        """Ask the broker again (e.g. after a resource server answered 401 to ``rejected``).

        When the cache already holds another usable token than ``rejected``, that one is
        returned without a call: a burst of 401s for one token makes one call.
        """
        self._check_open()
        with self._fetch_lock:
            current = self._current
            if (
                rejected is not None
                and current is not None
                and current.access_token != rejected.access_token
                and current.usable(self._clock(), self.margin)
            ):
                return current
            fetched = self._fetch()
            with self._lock:
                self._current = fetched  # the broker's answer wins over the rejected token
            return fetched

    def _fetch(self) -> AccessToken:
        fetched = self._client.get_access_token(self.grant_id, min_ttl=fetch_min_ttl(self.margin))
        return check_usable(fetched, self._clock(), self.margin)

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise SourceClosed(f"token source for grant {self.grant_id} is closed")

    # --- the watch stream ---------------------------------------------------------------------

    def _watch_loop(self) -> None:
        delay: float | None = None
        while not self._closed.is_set():
            retryable = True
            try:
                stream = self._client.watch_access_token(self.grant_id)
                with self._lock:
                    self._stream = stream
                if self._closed.is_set():
                    stream.cancel()
                    break
                for tok in stream:
                    with self._lock:
                        self._current = newer(self._current, tok)
                    self._watching = True
                    delay = None
            except BrokerClientError as exc:
                if self._closed.is_set():
                    break
                retryable = exc.retryable
                log.warning(
                    "broker watch stream for grant %s failed: %s (%s); serving from "
                    "GetAccessToken until it is back",
                    self.grant_id,
                    type(exc).__name__,
                    exc.reason or (exc.code.name if exc.code else "-"),
                )
            finally:
                self._watching = False
                with self._lock:
                    self._stream = None
            delay = self._backoff.next(delay, retryable=retryable)
            self._closed.wait(Backoff.jittered(delay))

    # --- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the watch stream (and close the channel :meth:`connect` opened). Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT)
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> TokenSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
