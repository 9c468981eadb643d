"""The broker's machine credential: the LEARCredentialMachine the DOME Issuer gives its did:key.

:mod:`broker.credentials.lear` parses and verifies it; :mod:`broker.credentials.store` keeps it
on disk. Not secret: a Verifiable Credential is shown to the Verifier inside every VP.
"""
