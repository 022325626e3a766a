"""Development helpers that are not part of the installed snsd: LocalStack on the host without
Docker (``localstack``) and ``make run``'s driver (``run``).

They live beside the package, not in it, so the wheel ships what an operator runs against their
own topic (the daemon, ``snsd-admin``, ``snsd-wire``, ``snsd-publish``, ``snsd-post``).  A checkout's
editable install puts this directory on ``sys.path``, so tests, benchmarks and the Makefile import
them as ``snsd_devtools.*``.
"""
