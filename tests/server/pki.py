"""The throw-away PKI lives in :mod:`broker.devtools.pki` (shared with the demo)."""

from broker.devtools.pki import NOW, Ca, Issued

__all__ = ["NOW", "Ca", "Issued"]
