"""Which stored copy of the checkpoint a start uses (relay/checkpoint_choice.py)."""

from __future__ import annotations

import pytest

from transactional_outbox.exceptions import CheckpointError, ConfigurationError
from transactional_outbox.relay.checkpoint_choice import (
    CheckpointCopy,
    KafkaCopies,
    choose_copy,
    decode_copy,
    encode_copy,
    fold_records,
)

WHERE = "Kafka topic 'cp' (key 'k')"


def record(token: int, seq: int, value: str) -> bytes:
    return encode_copy(token=token, seq=seq, value=value)


def redis(token: int | None, seq: int, value: str = "R") -> CheckpointCopy:
    return CheckpointCopy("Redis", token, seq, value)


def choose(
    r: CheckpointCopy | None,
    k: KafkaCopies,
    *,
    ran: bool = False,
    explicit: bool = False,
    ignore: bool = False,
) -> CheckpointCopy | None:
    return choose_copy(
        r,
        k,
        ran_before_in_redis=ran,
        explicit_start=explicit,
        ignore_checkpoint=ignore,
        relay="r1",
        where="Redis or Kafka",
    )


def test_a_record_round_trips() -> None:
    copy = decode_copy(record(7, 3, '{"v":1}'), where=WHERE)
    assert copy == CheckpointCopy("Kafka", 7, 3, '{"v":1}')


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"{}", b'{"v":2,"token":1,"seq":1,"checkpoint":"x"}', b'{"v":1,"token":"1"}'],
)
def test_a_foreign_record_is_an_error_naming_the_topic(raw: bytes) -> None:
    with pytest.raises(CheckpointError, match="Kafka topic 'cp'"):
        fold_records([(0, raw)], where=WHERE)


def test_the_highest_token_wins_not_the_last_record() -> None:
    # A stale leader (token 4) wrote after the newer one (token 5): the newer one wins.
    folded = fold_records([(0, record(5, 1, "new")), (0, record(4, 99, "stale"))], where=WHERE)
    assert folded.latest is not None and folded.latest.value == "new"
    assert folded.max_token == 5 and folded.seen and folded.records == 2


def test_within_a_token_the_later_save_wins() -> None:
    folded = fold_records([(0, record(5, 2, "b")), (0, record(5, 1, "a"))], where=WHERE)
    assert folded.latest is not None and folded.latest.value == "b"


def test_a_tombstone_deletes_earlier_records_but_shows_the_relay_ran() -> None:
    folded = fold_records([(0, record(5, 1, "a")), (0, None)], where=WHERE)
    assert folded.latest is None and folded.seen and folded.max_token == 5
    after = fold_records([(0, record(5, 1, "a")), (0, None), (0, record(6, 1, "b"))], where=WHERE)
    assert after.latest is not None and after.latest.value == "b"


def test_a_tombstone_deletes_only_its_own_partition() -> None:
    folded = fold_records([(1, record(5, 1, "a")), (0, None)], where=WHERE)
    assert folded.latest is not None and folded.latest.value == "a"


def test_no_records() -> None:
    assert fold_records([], where=WHERE) == KafkaCopies()


def test_kafka_newer_than_redis_wins() -> None:
    kafka = fold_records([(0, record(5, 9, "kafka"))], where=WHERE)
    chosen = choose(redis(5, 8), kafka)
    assert chosen is not None and chosen.value == "kafka"


def test_redis_wins_a_tie_and_a_higher_token() -> None:
    kafka = fold_records([(0, record(5, 9, "kafka"))], where=WHERE)
    tie = choose(redis(5, 9), kafka)
    assert tie is not None and tie.store == "Redis"
    newer = choose(redis(6, 1), kafka)
    assert newer is not None and newer.store == "Redis"


def test_a_redis_copy_without_a_token_outranks_kafka() -> None:
    kafka = fold_records([(0, record(50, 9, "kafka"))], where=WHERE)
    chosen = choose(redis(None, 0), kafka)
    assert chosen is not None and chosen.store == "Redis"


def test_only_kafka() -> None:
    kafka = fold_records([(0, record(3, 1, "kafka"))], where=WHERE)
    chosen = choose(None, kafka, ran=True)
    assert chosen is not None and chosen.value == "kafka"


def test_a_relay_never_seen_starts_at_the_start_position() -> None:
    assert choose(None, KafkaCopies()) is None


@pytest.mark.parametrize("ran, tombstone", [(True, False), (False, True), (True, True)])
def test_ran_before_without_a_checkpoint_is_exit_2_asking_for_a_position(
    ran: bool, tombstone: bool
) -> None:
    kafka = fold_records([(0, None)] if tombstone else [], where=WHERE)
    with pytest.raises(ConfigurationError) as info:
        choose(None, kafka, ran=ran)
    err = info.value
    assert err.setting == "start_position"
    assert "'r1' ran before" in str(err) and "Redis or Kafka" in str(err)
    assert "--start-position FILE:POS" in str(err) and "--ignore-checkpoint" in str(err)
    assert ("token key" in str(err)) == ran and ("Kafka has records" in str(err)) == tombstone
    assert "\n" not in str(err)


def test_an_explicit_start_or_ignore_checkpoint_is_followed() -> None:
    kafka = fold_records([(0, None)], where=WHERE)
    assert choose(None, kafka, ran=True, explicit=True) is None
    assert choose(None, kafka, ran=True, ignore=True) is None


def test_with_ignore_checkpoint_a_foreign_record_is_counted_not_fatal() -> None:
    records = [(0, record(5, 1, "a")), (0, b"not json")]
    folded = fold_records(records, where=WHERE, strict=False)
    assert folded.unreadable == 1 and folded.max_token == 5
    assert folded.latest is not None and folded.latest.value == "a"
