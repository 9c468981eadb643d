"""The throw-away PKI lives in :mod:`devtools.pki` (shared with the demo)."""

from devtools.pki import NOW, Ca, Issued

__all__ = ["NOW", "Ca", "Issued"]
