"""``broker doctor``: one command an operator runs before go-live (issue 5).

Each check is a small function returning :class:`broker.doctor.result.CheckResult` and never
raising; :func:`broker.doctor.runner.run_doctor` runs them in dependency order. The command
itself (arguments, output, exit status) is :mod:`broker.cli.doctor`.
"""
