"""Development tools used by the demo and the tests (not by the service itself)."""
