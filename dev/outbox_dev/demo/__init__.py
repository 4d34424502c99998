"""The demo behind ``./dev/demo``: API -> MariaDB (row + event, one transaction) -> binlog
-> relay -> Kafka -> consumer -> read model, on the local stack; or the same on its
PostgreSQL (``--database postgresql``: WAL -> logical replication slot -> relay).

    ./dev/demo                          # run the scenario, then keep running until Ctrl-C
    ./dev/demo --database postgresql    # the same on PostgreSQL
    ./dev/demo --database postgresql --outbox-mode message  # events as WAL messages, no table
    ./dev/demo --once                   # run the scenario, clean up, exit (0 = read model right)
    ./dev/demo --once --restart-relay-midway
    ./dev/demo --summary-json out.json  # also write the final summary there

Each run is isolated: its own databases (``demo_<run>`` for orders + outbox,
``demo_<run>_read`` for the read model), topic (``demo_<run>.outbox.event.order``),
relay name and Redis key prefix, consumer group; on PostgreSQL a publication and a
replication slot ``demo_<run>``. They are removed at the end (not with ``--keep``); the
stack itself stays up (``./dev/stack stop`` stops it).

The last line printed is ``DEMO_SUMMARY {json}``: the read model, the one expected
from the API's answers, and counts of events, Kafka records and inbox rows.

Modules: ``driver`` (the run, step by step: scenario, report, cleanup), ``resources``
(the run's databases, topic and Redis keys), ``databases`` (what differs between MariaDB
and PostgreSQL: URLs, creating and dropping, where the relay starts), ``processes``
(relay, api-server and consumer as child processes), ``kafka_view`` (the topic as the
demo shows it), ``expected`` (the read model the API's answers imply), ``console``
(output, errors).
"""
