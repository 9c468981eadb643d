"""``requests`` authentication that sends the broker's token (needs the ``requests`` extra).

Each request gets ``Authorization: Bearer <token>`` from a :class:`TokenSource`; a ``401``
answer is retried once with a token asked of the broker again (``refresh``), when the body can
be sent again (none, bytes or str; a stream or generator body cannot, and its 401 is returned as
it is). A second ``401`` is returned to the caller.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.auth import AuthBase

from broker_client.token import AccessToken
from broker_client.token_source import TokenSource

UNAUTHORIZED = 401


class BrokerAuth(AuthBase):
    """Bearer authentication from a broker :class:`TokenSource`, with one retry on 401."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.source.token()
        r.headers["Authorization"] = token.authorization
        r.register_hook("response", self._retry_on_401(token))  # type: ignore[no-untyped-call]
        return r

    def _retry_on_401(self, token: AccessToken) -> Any:
        def hook(response: requests.Response, **kwargs: Any) -> requests.Response:
            request = response.request
            if response.status_code != UNAUTHORIZED or not _resendable(request.body):
                return response
            fresh = self.source.refresh(token)
            _ = response.content  # drain, so the connection can go back to the pool
            response.close()
            retry = request.copy()
            retry.hooks["response"] = []  # once only
            retry.headers["Authorization"] = fresh.authorization
            second: requests.Response = response.connection.send(retry, **kwargs)
            second.history.append(response)
            second.request = retry
            return second

        return hook


def _resendable(body: object) -> bool:
    return body is None or isinstance(body, bytes | str)
