"""RQ jobs, one module per stage; each job is idempotent and safe to run twice."""
