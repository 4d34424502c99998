"""The relay's own binlog reader: the dump protocol (:mod:`.protocol`), the wire
format (:mod:`.format`), the event parser (:mod:`.events`) and the outbox table's
layout (:mod:`.tablemap`)."""
