"""HTTP API and CLI tests against real server processes."""
