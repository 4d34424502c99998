"""Pure parts of the PostgreSQL protocol client (relay/postgres/wire.py)."""

from __future__ import annotations

import base64

import pytest

from transactional_outbox.exceptions import ConfigurationError
from transactional_outbox.relay.postgres import wire
from transactional_outbox.relay.postgres.wire import (
    error_of,
    format_lsn,
    parse_lsn,
    quote_ident,
    quote_literal,
)


def test_lsn_text_round_trips() -> None:
    for lsn in (0, 1, 0x16B3748, 0xFFFFFFFF, 0x1_0000_0000, (0xABCDEF << 32) | 0x12):
        assert parse_lsn(format_lsn(lsn)) == lsn
    assert format_lsn(0x1_0000_00AB) == "1/AB"
    for bad in ("", "12", "/1", "1/", "x/y"):
        with pytest.raises(ValueError):
            parse_lsn(bad)


def test_quoting() -> None:
    assert quote_literal("it's") == "'it''s'"
    assert quote_ident('a"b') == '"a""b"'
    with pytest.raises(ValueError):
        quote_literal("a\0b")


def test_error_response_fields() -> None:
    exc = error_of(b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0")
    assert (exc.code, exc.severity, exc.message) == ("28P01", "FATAL", exc.message)
    assert "password authentication failed" in str(exc)


def test_scram_sha_256_matches_rfc_7677() -> None:
    # RFC 7677 section 3 (PostgreSQL sends "n=" as the user; the math is the same).
    scram = wire._Scram("pencil")
    scram.nonce = "rOprNGfwEbeRWgbNEkqO"
    scram.first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert scram.client_final(server_first) == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    scram.verify_server(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    with pytest.raises(ConfigurationError, match="signature is wrong"):
        scram.verify_server(b"v=" + base64.b64encode(bytes(32)))


def test_scram_refuses_a_nonce_that_is_not_ours() -> None:
    scram = wire._Scram("pencil")
    with pytest.raises(ConfigurationError, match="nonce"):
        scram.client_final(b"r=someone-else,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
