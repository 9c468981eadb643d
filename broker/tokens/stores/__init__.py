"""Grant stores: the :class:`~broker.tokens.stores.base.GrantStore` protocol and its roles
(``base``), the at-rest form of a grant (``sealing``), the deployment binding (``deployment``,
``identities``), the login store role (``logins``) and the implementations: ``memory``,
``sqlite`` (+ ``sqlite_file``, ``sqlite_logins``) and ``postgres`` (+ ``postgres_driver``,
``postgres_logins``). Nothing is re-exported here: importing the package loads no driver.
"""
