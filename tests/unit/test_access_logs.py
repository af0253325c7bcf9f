"""The access-log entry writer and reader, against the NLB guide's sample lines."""

import dataclasses
import gzip
from datetime import datetime, timedelta, timezone

import pytest

from infra.access_logs import (
    ALPN_LIST_LIMIT,
    FIELD_NAMES,
    AccessLogEntry,
    AccessLogParseError,
    InvalidEntryError,
    LogObjectError,
    SocketAddress,
    log_object_body,
    parse_line,
    protocol_field,
    read_log_object,
)

pytestmark = pytest.mark.unit

UTC = timezone.utc
CERT_ARN = (
    "arn:aws:acm:us-east-2:671290407336:certificate/2a108f19-aded-46b0-8493-c63eb1ef4a99"
)
DNS_NAME = "my-network-loadbalancer-c6e77e28c25b2234.elb.us-east-2.amazonaws.com"
# The documented sample line (aws-nlb.md section 6), 22 fields.
SAMPLE = (
    "tls 2.0 2018-12-20T02:59:40 net/my-network-loadbalancer/c6e77e28c25b2234 "
    "g3d4b5e8bb8464cd 72.21.218.154:51341 172.100.100.185:443 5 2 98 246 - "
    f"{CERT_ARN} - ECDHE-RSA-AES128-SHA tlsv12 - {DNS_NAME} - - - 2018-12-20T02:59:30"
)
# The NLB guide's two example entries, written before 2023: 21 fields.
LEGACY_NO_ALPN = SAMPLE.rsplit(" ", 1)[0]
LEGACY_ALPN = LEGACY_NO_ALPN[: -len("- - -")] + 'h2 h2 "h2","http/1.1"'
def make_entry(**changes) -> AccessLogEntry:
    values = dict(
        time=datetime(2024, 5, 1, 12, 3, 4, tzinfo=UTC),
        elb="net/my-nlb/57434eb4d3e0a993",
        listener="0c63aec2d168e1a0",
        client=SocketAddress("127.0.0.1", 50123),
        destination=SocketAddress("127.0.0.1", 443),
        connection_time=12,
        tls_handshake_time=3,
        received_bytes=77,
        sent_bytes=1024,
        chosen_cert_arn=CERT_ARN,
        tls_cipher="ECDHE-RSA-AES128-GCM-SHA256",
        tls_protocol_version="tlsv12",
        domain_name="www.example.test",
        alpn_fe_protocol="h2",
        alpn_client_preference_list=("h2", "http/1.1"),
        tls_connection_creation_time=datetime(2024, 5, 1, 12, 3, 2, tzinfo=UTC),
    )
    values.update(changes)
    return AccessLogEntry(**values)


# ---- the documented sample ------------------------------------------------------------------


def test_sample_line_parses_field_by_field():
    entry = parse_line(SAMPLE)
    expected = {
        "type": "tls",
        "version": "2.0",
        "time": datetime(2018, 12, 20, 2, 59, 40, tzinfo=UTC),
        "elb": "net/my-network-loadbalancer/c6e77e28c25b2234",
        "listener": "g3d4b5e8bb8464cd",
        "client": SocketAddress("72.21.218.154", 51341),
        "destination": SocketAddress("172.100.100.185", 443),
        "connection_time": 5,
        "tls_handshake_time": 2,
        "received_bytes": 98,
        "sent_bytes": 246,
        "incoming_tls_alert": None,
        "chosen_cert_arn": CERT_ARN,
        "chosen_cert_serial": None,
        "tls_cipher": "ECDHE-RSA-AES128-SHA",
        "tls_protocol_version": "tlsv12",
        "tls_named_group": None,
        "domain_name": DNS_NAME,
        "alpn_fe_protocol": None,
        "alpn_be_protocol": None,
        "alpn_client_preference_list": None,
        "tls_connection_creation_time": datetime(2018, 12, 20, 2, 59, 30, tzinfo=UTC),
    }
    got = dataclasses.asdict(entry)
    got["client"], got["destination"] = entry.client, entry.destination
    for name in FIELD_NAMES:
        assert got[name] == expected[name], (
            f"{name}: expected {expected[name]!r}, got {got[name]!r}"
        )


def test_sample_line_formats_back_byte_for_byte():
    formatted = parse_line(SAMPLE).format()
    assert formatted == SAMPLE, f"expected\n{SAMPLE}\ngot\n{formatted}"


def test_entry_has_the_22_fields_in_order():
    names = tuple(field.name for field in dataclasses.fields(AccessLogEntry))
    assert names == FIELD_NAMES and len(names) == 22, f"got {names}"


# ---- 21-field and longer lines ------------------------------------------------------------


def test_legacy_21_field_line_parses_without_creation_time():
    entry = parse_line(LEGACY_NO_ALPN)
    assert entry.tls_connection_creation_time is None
    assert entry == dataclasses.replace(parse_line(SAMPLE), tls_connection_creation_time=None)
    assert entry.format() == LEGACY_NO_ALPN + " -", f"got {entry.format()!r}"


def test_legacy_line_with_alpn_reads_the_client_list():
    entry = parse_line(LEGACY_ALPN)
    assert (entry.alpn_fe_protocol, entry.alpn_be_protocol) == ("h2", "h2")
    assert entry.alpn_client_preference_list == ("h2", "http/1.1")
    # The guide writes http/1.1 with its slash as sent: "/" is not encoded.
    assert entry.format() == LEGACY_ALPN + " -", f"got {entry.format()!r}"


def test_extra_trailing_fields_are_ignored():
    line = SAMPLE + " some-future-field 42 -"
    assert parse_line(line) == parse_line(SAMPLE)


def test_trailing_newline_is_accepted():
    assert parse_line(SAMPLE + "\n") == parse_line(SAMPLE)
    assert parse_line(SAMPLE + "\r\n") == parse_line(SAMPLE)


# ---- malformed lines ------------------------------------------------------------------------


def _replace_field(position: int, value: str) -> str:
    tokens = SAMPLE.split(" ")
    tokens[position - 1] = value
    return " ".join(tokens)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (" ".join(SAMPLE.split(" ")[:20]), "line"),
        ("", "line"),
        (_replace_field(3, "2018-12-20 02:59:40"), "field 3 (time)"),
        (_replace_field(3, "2018-12-20T02:59:40Z"), "field 3 (time)"),
        (_replace_field(3, "-"), "field 3 (time)"),
        (_replace_field(6, "72.21.218.154"), "field 6 (client)"),
        (_replace_field(6, "not-an-ip:51341"), "field 6 (client)"),
        (_replace_field(7, "172.100.100.185:70000"), "field 7 (destination)"),
        (_replace_field(8, "5.5"), "field 8 (connection_time)"),
        (_replace_field(9, "-2"), "field 9 (tls_handshake_time)"),
        (_replace_field(10, "-"), "field 10 (received_bytes)"),
        (_replace_field(12, "alert"), "field 12 (incoming_tls_alert)"),
        (_replace_field(21, "h2,http/1.1"), "field 21 (alpn_client_preference_list)"),
        (_replace_field(21, '"h2",'), "field 21 (alpn_client_preference_list)"),
        (_replace_field(22, "yesterday"), "field 22 (tls_connection_creation_time)"),
        (SAMPLE.replace(" 5 2 ", " 5  2 "), "field 9 (tls_handshake_time)"),
        (_replace_field(4, "-"), "field 4 (elb)"),
    ],
)
def test_malformed_line_names_line_and_field(line, field):
    with pytest.raises(AccessLogParseError) as caught:
        parse_line(line)
    message = str(caught.value)
    assert caught.value.field == field, f"expected field {field!r}, got {caught.value.field!r}"
    assert repr(line) in message and field in message, f"message does not name both: {message}"
    assert isinstance(caught.value, ValueError)


# ---- URL encoding and the 256-byte cut --------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "written"),
    [
        ("www.example.test", "www.example.test"),
        ("a b%c", "a%20b%25c"),
        ("caf\u00e9.test", "caf%E9.test"),  # the client's byte 0xe9, as latin-1 reads it
        ("-", "%2D"),  # a literal "-" must not read back as absent
        ("x\ny", "x%0Ay"),
    ],
)
def test_domain_name_is_url_encoded_and_reads_back(domain, written):
    entry = make_entry(domain_name=domain)
    field = entry.format().split(" ")[17]
    assert field == written, f"expected {written!r}, got {field!r}"
    assert parse_line(entry.format()) == entry


def test_empty_domain_name_is_written_as_absent():
    entry = make_entry(domain_name="")
    assert entry.domain_name is None and entry.format().split(" ")[17] == "-"


def test_alpn_list_quotes_and_encodes_each_protocol():
    protocols = ("h2", "http/1.1", 'we"ird,one', "sp ace", "\xff")
    entry = make_entry(alpn_client_preference_list=protocols)
    field = entry.format().split(" ")[20]
    expected = '"h2","http/1.1","we%22ird%2Cone","sp%20ace","%FF"'
    assert field == expected, f"expected {expected!r}, got {field!r}"
    assert parse_line(entry.format()).alpn_client_preference_list == protocols


def test_alpn_list_is_cut_at_256_bytes():
    protocols = tuple(f"protocol-{n:02d}" for n in range(30))
    entry = make_entry(alpn_client_preference_list=protocols)
    field = entry.format().split(" ")[20]
    uncut = ",".join(f'"{p}"' for p in protocols)  # these names need no encoding
    assert len(uncut) > ALPN_LIST_LIMIT
    assert field == uncut[:ALPN_LIST_LIMIT], f"expected the first 256 bytes, got {field!r}"

    reread = parse_line(entry.format())
    kept = reread.alpn_client_preference_list
    whole = len(uncut[:ALPN_LIST_LIMIT].split(",")) - 1
    assert kept[:whole] == protocols[:whole], f"got {kept}"
    assert protocols[whole].startswith(kept[whole]), f"partial last protocol {kept[whole]!r}"
    assert reread.format() == entry.format(), "a cut list must write back the same 256 bytes"


def test_alpn_list_of_exactly_256_bytes_is_kept_whole():
    protocols = ("a" * 125, "b" * 126)  # quoted: 127 + "," + 128 = 256 bytes
    entry = make_entry(alpn_client_preference_list=protocols)
    field = entry.format().split(" ")[20]
    assert len(field) == ALPN_LIST_LIMIT and field.endswith('"'), f"got {len(field)} bytes"
    assert parse_line(entry.format()).alpn_client_preference_list == protocols


# ---- building entries -------------------------------------------------------------------------


def test_entry_round_trips_through_a_line():
    entry = make_entry(incoming_tls_alert=48, alpn_be_protocol="http/1.1")
    assert parse_line(entry.format()) == entry


def test_minimal_failed_handshake_entry_round_trips():
    entry = make_entry(
        tls_handshake_time=None, chosen_cert_arn=None, tls_cipher=None,
        tls_protocol_version=None, domain_name=None, alpn_fe_protocol=None,
        alpn_client_preference_list=None, incoming_tls_alert=70, received_bytes=0,
        sent_bytes=0,
    )
    tokens = entry.format().split(" ")
    assert tokens[8] == "-" and tokens[11] == "70" and tokens[14] == "-", f"got {tokens}"
    assert parse_line(entry.format()) == entry


def test_times_are_utc_without_fraction_or_zone():
    local = timezone(timedelta(hours=2))
    entry = make_entry(time=datetime(2024, 5, 1, 14, 3, 4, 987654, tzinfo=local))
    assert entry.time == datetime(2024, 5, 1, 12, 3, 4, 987654, tzinfo=UTC)
    assert entry.format().split(" ")[2] == "2024-05-01T12:03:04"
    naive = make_entry(time=datetime(2024, 5, 1, 12, 3, 4))
    assert naive.time.tzinfo is UTC


@pytest.mark.parametrize(
    "changes",
    [
        {"sent_bytes": -1},
        {"connection_time": 1.5},
        {"received_bytes": True},
        {"tls_cipher": "ECDHE RSA"},
        {"tls_cipher": "-"},
        {"listener": None},
        {"time": "2024-05-01T12:03:04"},
        {"alpn_client_preference_list": "h2"},
        {"client": "127.0.0.1:50123"},
    ],
    ids=lambda changes: f"{next(iter(changes))}={next(iter(changes.values()))!r}",
)
def test_entry_refuses_values_its_field_cannot_hold(changes):
    with pytest.raises(InvalidEntryError) as caught:
        make_entry(**changes)
    assert next(iter(changes)) in str(caught.value), f"message: {caught.value}"


@pytest.mark.parametrize(("ip", "port"), [(3232235777, 80), ("fe80::1%a b", 1), ("h", 1),
                                          ("127.0.0.1", 65536), ("127.0.0.1", "80")])
def test_socket_address_refuses_what_the_log_cannot_write(ip, port):
    with pytest.raises(InvalidEntryError):
        SocketAddress(ip, port)


def test_socket_address_splits_ipv6_at_the_last_colon():
    address = SocketAddress.parse("2001:db8::1:51341")
    assert address == SocketAddress("2001:db8::1", 51341)
    assert str(address) == "2001:db8::1:51341"


@pytest.mark.parametrize(
    ("openssl", "logged"),
    [("TLSv1", "tlsv10"), ("TLSv1.1", "tlsv11"), ("TLSv1.2", "tlsv12"), ("TLSv1.3", "tlsv13")],
)
def test_protocol_field_spells_versions_as_the_log(openssl, logged):
    assert protocol_field(openssl) == logged


def test_protocol_field_refuses_unknown_version():
    with pytest.raises(InvalidEntryError, match="SSLv3"):
        protocol_field("SSLv3")


# ---- log objects -------------------------------------------------------------------------------


def test_log_object_body_reads_back():
    entries = [make_entry(), make_entry(sent_bytes=5), parse_line(SAMPLE)]
    body = log_object_body(entries)
    assert body[:2] == b"\x1f\x8b", "not gzip"
    assert gzip.decompress(body).decode() == "".join(e.format() + "\n" for e in entries)
    assert read_log_object(body) == entries


def test_read_log_object_accepts_several_gzip_members():
    body = log_object_body([make_entry()]) + gzip.compress((LEGACY_ALPN + "\n").encode())
    assert read_log_object(body) == [make_entry(), parse_line(LEGACY_ALPN)]


def test_read_log_object_refuses_plain_text():
    with pytest.raises(LogObjectError, match="not gzip"):
        read_log_object((SAMPLE + "\n").encode())


def test_read_log_object_names_a_bad_line():
    body = gzip.compress(f"{SAMPLE}\nnot a log line\n".encode())
    with pytest.raises(AccessLogParseError, match="not a log line"):
        read_log_object(body)
