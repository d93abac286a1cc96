"""The Revor sandbox: a local, faithful imitation of the Revor API v1 with fault injection.

`core.Sandbox` holds the behaviour (keys, accounts, validation, idempotency, pacing, job
lifecycle, rate limits, faults); `app.create_sandbox_app` puts HTTP in front of it;
`server.SandboxServer` runs it on loopback, in a thread or in the foreground.
"""
