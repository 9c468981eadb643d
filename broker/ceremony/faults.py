"""TEST-ONLY crash points inside the key ceremonies (never set this in production).

``BROKER_TEST_ONLY_CEREMONY_FAULT=<how>:<step>`` makes a creating ceremony (generate, import,
generate-sealing-key) stop itself at a named step, so a test can prove that a ceremony killed
anywhere leaves a state the next run detects and recovers:

* ``<how>``: ``kill`` (SIGKILL to itself: the process dies at once, like ``kill -9`` or a power
  cut) or ``stop`` (SIGSTOP to itself: the process freezes until SIGCONT, so a test can send it
  SIGINT inside the critical section without racing it).
* ``<step>``: ``after-intent`` (intent record written, key not created), ``after-create`` (key
  in the token, completion record not written), ``after-completion`` (both written, output not
  printed yet).

The hook can do nothing but kill or freeze the process it runs in: it reads no other input,
writes nothing, and a malformed value is refused before the token is touched.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from broker.errors import ConfigError

FAULT_ENV = "BROKER_TEST_ONLY_CEREMONY_FAULT"
STEPS = ("after-intent", "after-create", "after-completion")
_SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


@dataclass(frozen=True)
class CrashPoint:
    """Where (``step``) and how (``signal``) the ceremony stops itself; ``None`` step: never."""

    step: str | None = None
    signal: signal.Signals = signal.SIGKILL

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> CrashPoint:
        value = environ.get(FAULT_ENV)
        if not value:
            return cls()
        how, _, step = value.partition(":")
        if how not in _SIGNALS or step not in STEPS:
            raise ConfigError(
                f"{FAULT_ENV} (test only) must be kill:<step> or stop:<step> with <step> one "
                f"of {', '.join(STEPS)}"
            )
        return cls(step=step, signal=_SIGNALS[how])

    def reached(self, step: str) -> None:
        """Kill or freeze this process if ``step`` is the configured crash point."""
        if step == self.step:
            os.kill(os.getpid(), self.signal)
