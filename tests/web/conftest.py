"""The web app's tests drive the login service: they share its fixtures."""

from tests.login.conftest import clock, fake_client, service, signer, sink

__all__ = ["clock", "fake_client", "service", "signer", "sink"]
