"""Key ceremonies: the ``broker keys ...`` commands, their output and the TSL entry.

One module per concern: ``backend`` (which key store a key URI opens), ``commands`` (argparse
registration and the command bodies), ``output`` (human and ``--json`` rendering), ``tsl`` (the
DOME Trusted Services List entry), ``selftest`` (sign in the token, verify with the did).
Every step is recorded in the hash-chained audit log of :mod:`broker.audit`.
"""
