"""Dev tooling of transactional-outbox, shared by tests, benchmarks and the demo.

* :mod:`outbox_dev.stack`: the local stack of real servers (``./dev/stack``);
* :mod:`outbox_dev.scratch`: restartable servers of their own and a relay child process,
  for fault runs (``bench/chaos.py``, the least-privilege and chaos tests);
* :mod:`outbox_dev.tcp_proxy`: a loopback proxy a test can cut or stall;
* :mod:`outbox_dev.demo`: the driver behind ``./dev/demo``.

Installed editable by ``./dev/bootstrap`` (``dev/pyproject.toml``); not part of the SDK.
"""
