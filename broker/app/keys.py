"""The client key of ``broker serve``: the token of ``[key] uri`` opened, the key self-tested
(fail closed, TEST-CATALOGUE D11) and the sealing key found."""

from __future__ import annotations

from broker.app.settings import kid_format
from broker.ceremony.selftest import run_selftest
from broker.clock import Clock
from broker.config import Settings
from broker.errors import ConfigError
from broker.keys.api import Sealer, Signer
from broker.keys.health import HsmHealth
from broker.keys.kid import with_kid_format
from broker.keys.pkcs11 import Pkcs11KeyStore
from broker.keys.uri import parse_key_uri


def open_key(
    settings: Settings, clock: Clock, health: HsmHealth | None = None
) -> tuple[Pkcs11KeyStore, Signer, str, Sealer]:
    """Open the token, self-test the client key (fail closed) and find the sealing key. The
    signer names the key by ``[oauth].kid_format``."""
    ref = parse_key_uri(settings.key.uri)
    if ref.object is None:
        raise ConfigError("[key].uri must name the key with object=<label>")
    keystore = Pkcs11KeyStore.from_ref(ref, health=health)
    try:
        info = keystore.get(ref.object)
        key_signer = keystore.signer(ref.object)
        run_selftest(key_signer, info, clock=clock)
        signer = with_kid_format(key_signer, info.public_key, kid_format(settings))
        if settings.key.sealing_key_label is None:
            raise ConfigError("[key].sealing_key_label is required (tokens are sealed at rest)")
        sealer = keystore.sealer(settings.key.sealing_key_label)
    except BaseException:
        keystore.close()
        raise
    return keystore, signer, info.did, sealer
