"""Key custody in a PKCS#11 token, one concept per module.

- :mod:`~broker.keys.pkcs11.lib`: the process-wide library cache, its lock and fork handling;
- :mod:`~broker.keys.pkcs11.recovery`: the one ``CKR_*`` -> recovery action table;
- :mod:`~broker.keys.pkcs11.session`: the logged-in session, re-login, re-find, counters;
- :mod:`~broker.keys.pkcs11.objects`: finding objects by label, the per-session handle cache;
- :mod:`~broker.keys.pkcs11.store`: :class:`Pkcs11KeyStore`, opening the token, lookup;
- :mod:`~broker.keys.pkcs11.lifecycle`: generating, importing and deleting keys;
- :mod:`~broker.keys.pkcs11.signer`: :class:`Pkcs11Signer` (ES256, ``CKM_ECDSA[_SHA256]``);
- :mod:`~broker.keys.pkcs11.sealing`: :class:`Pkcs11Sealer` (AES-256-GCM in the token).
"""

from broker.keys.pkcs11.sealing import Pkcs11Sealer
from broker.keys.pkcs11.signer import Pkcs11Signer
from broker.keys.pkcs11.store import Pkcs11KeyStore

__all__ = ["Pkcs11KeyStore", "Pkcs11Sealer", "Pkcs11Signer"]
