"""HSM resilience: one UP/DOWN state per token, busy retries, a per-operation timeout and a
background recovery probe (TEST-CATALOGUE D02, D03, D08).

- **Busy** (D08): ``CKR_FUNCTION_FAILED`` and ``CKR_OPERATION_ACTIVE`` (how AWS CloudHSM reports
  throttling) and the table's ``BUSY`` rows are retried at most :attr:`HsmHealth.busy_retries`
  times with exponential backoff (an injected ``sleep``) before the call fails with a retryable
  :class:`broker.errors.HsmUnavailable`. The rule's own recovery (new session, re-init) still runs
  before each retry, so a session whose operation failed is never reused (D06).
- **Timeout** (D08): :meth:`HsmHealth.bounded` runs a device call in a small worker pool and gives
  up after ``op_timeout`` seconds with ``HsmUnavailable``; the stuck device call keeps its thread.
  :meth:`HsmHealth.run_async` is the same bound for async callers: one hop from the event loop
  into that pool, awaited there with the timeout. A call to :meth:`HsmHealth.bounded` made on one
  of the pool's own workers runs inline (it is already bounded): a whole async signature, metrics
  and all, makes exactly one thread hop.
- **DOWN** (D02, D03): when a recovery fails (the device, library or token is gone) the store
  calls :meth:`HsmHealth.mark_down`: the first error is logged once, every further call fails
  fast in :meth:`HsmHealth.check` without touching the device, and a probe thread retries the
  store's ``probe`` (``C_Finalize`` + ``C_Initialize``, find the token by label, log in, re-find
  the keys) with backoff 2 s x1.5 up to 30 s until it succeeds; then the state is UP again.

Listeners (:meth:`HsmHealth.add_listener`) are told of each change; they run on the thread that
made the change (a caller's worker thread or the probe thread) and must not block or call the
key store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from broker.backoff import BackoffPolicy
from broker.clock import Clock, SystemClock
from broker.errors import BrokerError, HsmUnavailable, InvalidArgument

T = TypeVar("T")

log = logging.getLogger("broker.keys.health")


class HsmState(enum.Enum):
    UP = "up"
    DOWN = "down"


BUSY_BACKOFF = BackoffPolicy(initial=0.05, factor=2.0, maximum=1.0)
PROBE_BACKOFF = BackoffPolicy(initial=2.0, factor=1.5, maximum=30.0)
DEFAULT_BUSY_RETRIES = 3
DEFAULT_OP_TIMEOUT = 10.0
_POOL_WORKERS = 4

Listener = Callable[[HsmState], None]
Probe = Callable[[], None]

# Which HsmHealth owns the pool the current thread is a worker of (set by the pool initializer).
_WORKER = threading.local()


def _mark_worker(owner: HsmHealth) -> None:
    _WORKER.owner = owner


class HsmHealth:
    """The health of one PKCS#11 token, shared by the store that owns it and the service.

    Injected into :class:`broker.keys.pkcs11.Pkcs11KeyStore` (``health=``); the store binds its
    probe with :meth:`bind`. ``sleep`` is used for busy backoff, ``wait(delay) -> stopped`` for
    the probe backoff (default: an event wait that :meth:`stop` interrupts).
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
        wait: Callable[[float], bool] | None = None,
        busy_retries: int = DEFAULT_BUSY_RETRIES,
        busy_backoff: BackoffPolicy = BUSY_BACKOFF,
        probe_backoff: BackoffPolicy = PROBE_BACKOFF,
        op_timeout: float | None = DEFAULT_OP_TIMEOUT,
    ) -> None:
        if busy_retries < 0:
            raise InvalidArgument("busy_retries must be >= 0")
        if op_timeout is not None and op_timeout <= 0:
            raise InvalidArgument("op_timeout must be positive (or None for no bound)")
        if busy_backoff.initial <= 0 or probe_backoff.initial <= 0:
            raise InvalidArgument("HSM back-off delays must be positive (a zero delay spins)")
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._stopped = threading.Event()
        self._wait = wait or self._stopped.wait
        self.busy_retries = busy_retries
        self._busy_backoff = busy_backoff
        self._probe_backoff = probe_backoff
        self.op_timeout = op_timeout
        self._lock = threading.Lock()
        self._state = HsmState.UP
        self._listeners: list[Listener] = []
        self._probe: Probe | None = None
        self._probe_thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        self.down_since: float | None = None  # monotonic time of the last UP -> DOWN
        self.last_error: str | None = None  # class name of the error that took the HSM down
        self.downs = 0  # UP -> DOWN transitions
        self.probes = 0  # probe attempts (failed and successful)
        self.fast_failures = 0  # calls refused while DOWN

    def __repr__(self) -> str:
        return f"HsmHealth(state={self._state.value})"

    # --- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> HsmState:
        return self._state

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(new_state)`` on every change; returns a function that removes it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def bind(self, probe: Probe) -> None:
        """The store's recovery probe: raises a :class:`BrokerError` while the HSM is gone."""
        self._probe = probe

    def _ensure_process(self) -> None:
        """After a fork (D12) the parent's lock may be held by a thread that does not exist here,
        and its worker pool and probe thread are gone: start afresh in the child. While DOWN,
        the child probes on its own (its PKCS#11 library re-initialises lazily)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pool = None
        self._probe_thread = None
        if self._state is HsmState.DOWN and self._probe is not None and not self._stopped.is_set():
            self._probe_thread = threading.Thread(
                target=self._probe_loop, name="hsm-probe", daemon=True
            )
            self._probe_thread.start()

    def check(self) -> None:
        """Fail fast (no device call) while DOWN."""
        self._ensure_process()
        if self._state is HsmState.DOWN:
            self.fast_failures += 1
            raise HsmUnavailable("the HSM is down; a background probe is trying to recover it")

    def mark_down(self, error: BaseException) -> None:
        """Enter DOWN after a failed recovery: log the first error once, start the probe."""
        self._ensure_process()
        with self._lock:
            if self._state is HsmState.DOWN or self._stopped.is_set():
                return
            self._state = HsmState.DOWN
            self.downs += 1
            self.down_since = self._clock.monotonic()
            self.last_error = type(error).__name__
            reason = error.reason if isinstance(error, BrokerError) else "unknown"
            log.error(
                "HSM down: %s (%s); failing fast until a probe recovers it",
                self.last_error,
                reason,
            )
            if self._probe is not None:
                self._probe_thread = threading.Thread(
                    target=self._probe_loop, name="hsm-probe", daemon=True
                )
                self._probe_thread.start()
        self._notify(HsmState.DOWN)

    def _mark_up(self) -> None:
        with self._lock:
            if self._state is HsmState.UP:
                return
            self._state = HsmState.UP
            since = self.down_since
        downtime = self._clock.monotonic() - since if since is not None else 0.0
        log.warning("HSM recovered after %.1f s and %d probe(s)", downtime, self.probes)
        self._notify(HsmState.UP)

    def _notify(self, state: HsmState) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(state)
            except Exception:
                log.exception("HSM health listener failed")

    # --- probe ---------------------------------------------------------------------------------

    def probe_now(self) -> bool:
        """One probe attempt; True (and UP) if it succeeded. Used by the probe thread."""
        probe = self._probe
        if probe is None:
            return False
        self.probes += 1
        try:
            probe()
        except Exception as exc:
            reason = exc.reason if isinstance(exc, BrokerError) else "unexpected"
            log.info("HSM probe %d failed: %s (%s)", self.probes, type(exc).__name__, reason)
            return False
        self._mark_up()
        return True

    def _probe_loop(self) -> None:
        for delay in self._probe_backoff.delays():
            if self._wait(delay) or self._stopped.is_set():
                return
            if self.probe_now():
                return

    # --- busy retries and the per-operation bound ------------------------------------------------

    def busy_delays(self) -> Iterator[float]:
        """The backoff delays of one call: at most ``busy_retries`` of them."""
        delays = self._busy_backoff.delays()
        for _ in range(self.busy_retries):
            yield next(delays)

    def sleep(self, seconds: float) -> None:
        self._sleep(seconds)

    def _worker_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        self._ensure_process()
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=_POOL_WORKERS,
                    thread_name_prefix="hsm-op",
                    initializer=_mark_worker,
                    initargs=(self,),
                )
            return self._pool

    def _timed_out(self, operation: str) -> HsmUnavailable:
        return HsmUnavailable(f"PKCS#11 {operation} took longer than {self.op_timeout:g} s")

    def bounded(self, operation: str, fn: Callable[[], T]) -> T:
        """``fn()`` in a worker; :class:`HsmUnavailable` after ``op_timeout`` seconds.

        Inline when there is no bound, or when called on a worker of this pool (the caller is
        already bounded: no second hop)."""
        if self.op_timeout is None or getattr(_WORKER, "owner", None) is self:
            return fn()
        future = self._worker_pool().submit(fn)
        try:
            return future.result(timeout=self.op_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # not started yet: never runs
            raise self._timed_out(operation) from None

    async def run_async(self, operation: str, fn: Callable[[], T]) -> T:
        """``fn()`` on a worker of this pool (one hop from the event loop, the caller's context
        variables carried over, so spans nest), :class:`HsmUnavailable` after ``op_timeout``
        seconds; without a bound, on the loop's default executor."""
        if self.op_timeout is None:
            return await asyncio.to_thread(fn)
        loop = asyncio.get_running_loop()
        future = self._worker_pool().submit(contextvars.copy_context().run, fn)
        waiter = asyncio.wrap_future(future, loop=loop)  # its cancel cancels a queued call
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            waiter.cancel()

        # A timer on the waiter rather than asyncio.wait_for: same bound, a quarter of the cost
        # of the hop (wait_for adds a future, a task wake-up and callbacks per call).
        timer = loop.call_later(self.op_timeout, expire)
        try:
            return await waiter
        except asyncio.CancelledError:
            if expired:
                raise self._timed_out(operation) from None
            raise
        finally:
            timer.cancel()

    def stop(self) -> None:
        """Stop the probe and the worker pool (idempotent; a running device call is not waited for)."""
        self._stopped.set()
        with self._lock:
            thread, self._probe_thread = self._probe_thread, None
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if thread is not None and thread is not threading.current_thread():
            thread.join()
