"""Interactive login: the authorization code flow with request objects by reference.

An application service with state (the pending logins), kept out of the stateless protocol
package :mod:`broker.oauth`. It uses oauth's verbs to build, sign and exchange; it keeps its
pending logins in a :class:`broker.tokens.stores.logins.LoginStore`; it hands each new grant to a
:class:`broker.login.ports.GrantSink` (the token core implements it); it writes the runtime
audit trail of :mod:`broker.audit`. Modules: ``service`` (:class:`LoginService`: start, request
objects, queries), ``completion`` (the authorization response and the code exchange), ``views``
(what callers see), ``ports`` (what it needs), ``restarts`` (when a failed exchange restarts),
``settings`` (:class:`LoginSettings`: base URL, lifetime, limits; built by the composition root).

One login = one authorization request (RFC 6749 section 4.1, OIDC Core 3.1.2) whose parameters
travel in an HSM-signed request object (RFC 9101) that the broker publishes at a fresh,
unguessable, one-login ``request_uri`` on its HTTPS listener (or pushes with PAR, RFC 9126,
when configured and advertised). The authorization response (RFC 6749 section 4.1.2, RFC 9207
``iss``) is checked against the pending login found by its single-use ``state`` (RFC 9700
section 2.1), and the code is exchanged at once (DOME-PROFILE.md: codes are exchanged
immediately) inside the client's exchange gate, so that no refresh of the same client runs
between the code's issue and its exchange (DOME Verifier bug 1).

Where logins live: in a :class:`broker.tokens.stores.logins.LoginStore` (the grant store: SQLite or
PostgreSQL; a process-local memory store by default). Any replica on the same store serves a
login's ``request_uri`` and completes its callback, and a login survives a restart of the
replica that started it. Only digests of ``state`` and of the ``request_uri`` reference are
lookup keys; nonce, PKCE verifier, request object and authorization URL are sealed at rest.
A response is claimed in the store (``pending`` -> ``exchanging``, compare-and-set) before its
code is exchanged: of two responses racing on two replicas, one exchanges, one grant is stored.

Ownership: a login belongs to the caller that started it (``owner``, the caller identity the
gRPC adapter names). Asked on behalf of an owner, :meth:`LoginService.get` and
:meth:`LoginService.complete` see only that owner's logins; another owner's login is
indistinguishable from an unknown one (:class:`LoginNotFound`, same message). The browser
callback on the HTTPS listener asks on behalf of no owner: there the ``state`` itself is the
capability.

A rejected authorization response (unknown state, other owner, label refused, wrong or missing
``iss``, no code) changes nothing: the login stays pending with its state, request object and
authorization URL. Only an outcome that ends this login changes it: the AS's ``error=`` answer
(with an acceptable ``iss``), a failed code exchange, a failed grant store.

Restarts: when the code exchange fails in a way a new authorization can cure, the login
restarts in the same browser: a new request object, state, nonce and PKCE verifier under the
same login id, and the callback answers with a redirect to the new authorization URL. This
happens for a transient failure of the token endpoint (5xx, an empty 500, timeout, connection
error: the code may be spent or not, either way a new one is needed) and, in DOME
compatibility mode, for ``invalid_grant`` on a fresh code (the Verifier overwrote the pending
authorization). Both share one budget (``LoginSettings.max_restarts``, default 1) per login.

Secrets (code, state, nonce, code verifier, request objects, authorization URLs) never appear in
a log, an exception message or a ``repr``.
"""

from broker.login.ports import GrantSink, LabelCheck, LoginClient
from broker.login.service import LoginService
from broker.login.settings import LoginSettings
from broker.login.views import LoginState, LoginView

__all__ = [
    "GrantSink",
    "LabelCheck",
    "LoginClient",
    "LoginService",
    "LoginSettings",
    "LoginState",
    "LoginView",
]
