"""Key ceremony parts: what the ``broker keys ...`` commands (:mod:`broker.cli.keys`) build on.

No argparse here. One module per concern: ``backend`` (which key store a key URI opens;
``pkcs11_backend`` the real one), ``orphans`` (which keys of a token the audit log accounts
for), ``output`` (human and ``--json`` rendering), ``tsl`` (the DOME Trusted Services List
entry), ``selftest`` (sign in the token, verify with the did), ``signals`` (SIGINT/SIGTERM
deferred in a critical section), ``faults`` (the test-only crash hook). Every ceremony is
recorded in the hash-chained audit log of :mod:`broker.audit`.
"""
