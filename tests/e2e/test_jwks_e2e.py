"""``broker serve`` publishes the client key set on its HTTPS listener (issue 10 section 3):
the default ``[web].jwks_path``, the bare-did kid of ``[oauth].kid_format`` (DOME default), the
key of the configured did:key, and a login whose client assertion the peer accepted."""

from __future__ import annotations

import ssl

import httpx
from jwcrypto import jwk

from broker.keys.didkey import jwk_from_did
from tests.stacks import Stacks, login


def test_i02_serve_publishes_the_client_key_under_the_did_kid(stacks: Stacks) -> None:
    stack = stacks.up()
    url = f"https://127.0.0.1:{stack.web_port}/.well-known/jwks.json"
    verify = ssl.create_default_context(cafile=str(stack.ca_file))
    resp = httpx.get(url, verify=verify, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/jwk-set+json"
    assert resp.headers["cache-control"] == "public, max-age=300"
    key_set = jwk.JWKSet.from_json(resp.content)
    key = key_set.get_key(stack.did)
    assert key is not None and not key.has_private
    ours = jwk_from_did(stack.did)
    assert key.export_public(as_dict=True)["x"] == ours["x"]
    assert key.export_public(as_dict=True)["y"] == ours["y"]
    assert login(stack)  # and the peer still accepts the assertions signed under that kid
