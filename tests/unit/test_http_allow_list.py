"""HTTP_REQUEST_ALLOWED_HOSTS and the checks of the real `http_request` (no network: the
one lookup is replaced by a table; tests/integration/test_http_request.py sends requests)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from common.config import Config, ConfigError, HostAllowList
from tasks import InvalidPayload, TaskFailed, http_fetch, registry
from tasks.http_fetch import HostRefused, check_headers, check_host_allowed, resolve_allowed
from worker import pool


def allow(text: str) -> HostAllowList:
    return HostAllowList.parse(text)


# -- the setting -------------------------------------------------------------------------


def test_the_setting_is_parsed_once_into_a_typed_list():
    config = Config.from_env(
        {"HTTP_REQUEST_ALLOWED_HOSTS": " API.Example.com. , *.svc.Internal,10.0.0.0/8,[::1],"}
    )
    allowed = config.http_request_allow_list
    assert allowed is config.http_request_allow_list  # cached on the Config
    assert allowed.names == frozenset({"api.example.com"})
    assert allowed.wildcards == (".svc.internal",)
    assert allowed.networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert str(allowed) == "api.example.com,*.svc.internal,10.0.0.0/8,::1/128"
    assert Config.from_env(config.to_env()) == config
    assert HostAllowList.parse(str(allowed)) == allowed


def test_the_default_allows_nothing():
    allowed = Config().http_request_allow_list
    assert not allowed
    assert allowed == HostAllowList()
    assert not allowed.allows_name("localhost")
    assert not allowed.covers(ipaddress.ip_address("127.0.0.1"))


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("10.0.0.0/33", ["'10.0.0.0/33' is not a valid CIDR range", "netmask"]),
        ("::1/129", ["'::1/129' is not a valid CIDR range"]),
        ("10.0.0.0/x", ["not a valid CIDR range"]),
        ("10.0.0.1/8", ["host bits set", "did you mean 10.0.0.0/8?"]),
        ("example.com:443", ["not a host name", "port"]),
        ("https://example.com", ["not a host name", "scheme"]),
        ("example.com/path", ["not a host name"]),
        ("exa mple.com", ["not a host name"]),
        ("-bad.example", ["not a host name"]),
        ("*", ["not a host name"]),
        ("a.*.example", ["not a host name"]),
        ("2130706433", ["usual form"]),
        ("127.1", ["usual form"]),
        ("0x7f.0.0.1", ["usual form"]),
        ("::ffff:127.0.0.1", ["IPv4-mapped", "IPv4 form"]),
        ("fe80::1%eth0", ["zone"]),
    ],
)
def test_a_bad_entry_stops_the_program_naming_the_key_and_the_entry(entry, words):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"HTTP_REQUEST_ALLOWED_HOSTS": f"ok.example, {entry}"})
    message = str(caught.value)
    assert message.startswith("HTTP_REQUEST_ALLOWED_HOSTS: ")
    for word in words:
        assert word in message, message
    assert "\n" not in message


def test_names_wildcards_and_ranges_match_as_documented():
    allowed = allow("Example.com, *.svc.internal, 192.0.2.0/24, 2001:db8::/32")
    assert allowed.allows_name("example.com")
    assert not allowed.allows_name("www.example.com")  # a name is only itself
    assert not allowed.allows_name("badexample.com")
    assert allowed.allows_name("a.svc.internal")
    assert allowed.allows_name("a.b.svc.internal")
    assert not allowed.allows_name("svc.internal")  # a wildcard is only what is below
    assert not allowed.allows_name("evilsvc.internal")
    assert allowed.covers(ipaddress.ip_address("192.0.2.255"))
    assert not allowed.covers(ipaddress.ip_address("192.0.3.0"))
    assert allowed.covers(ipaddress.ip_address("2001:db8::1"))
    assert allowed.covers(ipaddress.ip_address("::ffff:192.0.2.1"))  # the same IPv4 address
    assert not allowed.covers(ipaddress.ip_address("2001:db9::1"))


# -- at submission ---------------------------------------------------------------------------

LIST = "api.example.com, *.hooks.example.net, 127.0.0.1/32, 192.0.2.0/24, ::1, 2001:db8::/32"


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1",
        "https://API.EXAMPLE.COM/v1",  # any case
        "https://api.example.com./v1",  # a trailing dot
        "http://api.example.com:8080/",  # any port
        "https://a.hooks.example.net/x",
        "http://127.0.0.1:5000/",
        "http://192.0.2.99/",
        "http://[::1]:8000/",
        "http://[2001:db8::5]/",
        "http://[::ffff:127.0.0.1]/",  # the IPv4 address it maps
    ],
)
def test_allowed_urls(url):
    check_host_allowed(url, allow(LIST))


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://example.com/", ["host 'example.com' is not in HTTP_REQUEST_ALLOWED_HOSTS"]),
        ("https://www.api.example.com/", ["'www.api.example.com' is not in"]),
        ("https://api.example.com.evil.net/", ["'api.example.com.evil.net' is not in"]),
        ("https://hooks.example.net/", ["'hooks.example.net' is not in"]),
        # userinfo: the host is what follows the last @
        ("http://api.example.com@evil.net/", ["host 'evil.net' is not in"]),
        ("http://api.example.com:443@evil.net/", ["host 'evil.net' is not in"]),
        ("http://evil.net#@api.example.com/", ["host 'evil.net' is not in"]),
        ("http://evil.net?@api.example.com/", ["host 'evil.net' is not in"]),
        ("http://user:pw@api.example.com/", ["must not hold a user name or password"]),
        ("http://evil.net\\@api.example.com/", ["user name or password"]),
        # IP literals: only an IP or CIDR entry allows one; odd numeric forms never
        ("http://127.0.0.2/", ["host '127.0.0.2' is not in", "IP or CIDR entry"]),
        ("http://10.0.0.1/", ["host '10.0.0.1' is not in"]),
        ("http://[::2]/", ["host '::2' is not in"]),
        ("http://[::ffff:10.0.0.1]/", ["host '::ffff:10.0.0.1' is not in"]),
        ("http://[fe80::1%25eth0]/", ["zone"]),
        ("http://127.1/", ["'127.1' is a number", "a.b.c.d"]),
        ("http://2130706433/", ["'2130706433' is a number"]),
        ("http://0x7f000001/", ["'0x7f000001' is a number"]),
        ("http://0177.0.0.1/", ["'0177.0.0.1' is a number"]),
        ("http://017700000001/", ["is a number"]),
        ("http://1.2.3.4.5/", ["is a number"]),
        ("http://b\u00fccher.example/", ["ASCII (xn--) form"]),
    ],
)
def test_refused_urls_name_the_host(url, words):
    with pytest.raises(InvalidPayload) as caught:
        check_host_allowed(url, allow(LIST))
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_an_empty_list_says_real_requests_are_off():
    with pytest.raises(InvalidPayload, match=r"is not in HTTP_REQUEST_ALLOWED_HOSTS \(it is empty"):
        check_host_allowed("http://127.0.0.1/", HostAllowList())


# -- in the worker, after resolving ------------------------------------------------------------


@pytest.fixture
def dns(monkeypatch):
    """A table of names to addresses in place of the resolver; records each lookup."""
    table: dict[str, list[str]] = {}
    lookups: list[str] = []

    def getaddrinfo(host, port, family=0, type_=0, proto=0, flags=0):
        lookups.append(host)
        if flags & socket.AI_NUMERICHOST:
            addresses = [host]
        elif host in table:
            addresses = table[host]
        else:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port, 0, 0) if ":" in a else (a, port),
            )
            for a in addresses
        ]

    monkeypatch.setattr(http_fetch, "_getaddrinfo", getaddrinfo)
    return table, lookups


def test_a_listed_name_may_resolve_to_public_addresses(dns):
    table, lookups = dns
    table["api.example.com"] = ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
    infos = resolve_allowed("api.example.com", 443, allow("api.example.com"))
    assert [info[4][0] for info in infos] == table["api.example.com"]
    assert lookups == ["api.example.com"]  # once: the connection uses these addresses


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # the cloud metadata service
        "100.64.0.1",  # shared address space (carrier NAT)
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd00::1",
        "fec0::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "ff02::1",
        "2001:db8::1",  # documentation
    ],
)
def test_a_listed_name_resolving_to_a_non_public_address_is_refused(dns, address):
    table, _ = dns
    table["api.example.com"] = ["93.184.215.14", address]  # every address must pass
    with pytest.raises(HostRefused) as caught:
        resolve_allowed("api.example.com", 443, allow("api.example.com"))
    message = str(caught.value)
    shown = http_fetch._unmapped(ipaddress.ip_address(address))  # ::ffff:a.b.c.d as a.b.c.d
    assert f"host 'api.example.com' resolves to {shown}, a non-public address (" in message
    assert "only an IP or CIDR entry of HTTP_REQUEST_ALLOWED_HOSTS allows it" in message


def test_a_cidr_entry_lets_a_listed_name_reach_its_private_range(dns):
    table, _ = dns
    table["db.internal"] = ["10.1.2.3"]
    table["localhost"] = ["127.0.0.1", "::1"]
    resolve_allowed("db.internal", 80, allow("db.internal, 10.0.0.0/8"))
    with pytest.raises(HostRefused, match=r"resolves to ::1, a non-public address \(loopback\)"):
        resolve_allowed("localhost", 80, allow("localhost, 127.0.0.0/8"))
    resolve_allowed("localhost", 80, allow("localhost, 127.0.0.0/8, ::1"))


def test_in_the_worker_the_host_is_checked_before_any_lookup(dns):
    table, lookups = dns
    table["evil.net"] = ["93.184.215.14"]
    with pytest.raises(HostRefused, match="host 'evil.net' is not in HTTP_REQUEST"):
        resolve_allowed("evil.net", 80, allow("api.example.com"))
    with pytest.raises(HostRefused, match="'127.1' is a number"):
        resolve_allowed("127.1", 80, allow("127.0.0.0/8"))
    assert lookups == []
    resolve_allowed("[::1]", 80, allow("::1"))  # an IP literal: no name lookup at all
    assert lookups == ["::1"]


def test_a_name_that_does_not_resolve_fails_the_attempt(dns):
    with pytest.raises(TaskFailed, match="cannot resolve host 'nowhere.example'") as caught:
        resolve_allowed("nowhere.example", 80, allow("nowhere.example"))
    assert not isinstance(caught.value, HostRefused)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("10.0.0.1", "private"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "non-global"),
        ("2002:7f00:1::1", "IPv4-embedding or site-local"),
    ],
)
def test_non_public(address, kind):
    assert http_fetch.non_public(ipaddress.ip_address(address)) == kind


def test_the_pool_initializer_gives_each_process_the_workers_list():
    before = http_fetch.worker_allow_list()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        pool.start_process((), theirs, allow("127.0.0.1/32"))
        assert http_fetch.worker_allow_list() == allow("127.0.0.1/32")
    finally:
        http_fetch.use_allow_list(before)
        pool._outbox = None
        ours.close()
        theirs.close()


def test_a_worker_without_the_setting_refuses_every_real_request():
    payload = {"url": "http://127.0.0.1/", "simulate": False, "headers": {}, "timeout": 1}
    with pytest.raises(HostRefused, match="not in the worker's HTTP_REQUEST_ALLOWED_HOSTS"):
        registry.run("http_request", payload)


# -- the payload of the real mode ---------------------------------------------------------------

REAL = Config(http_request_allowed_hosts="api.example.com")


def check(payload: dict, config: Config = REAL) -> dict:
    return registry.validate("http_request", payload, config)


def test_the_real_mode_payload_is_stored_with_its_defaults():
    url = "https://api.example.com/hook"
    assert check({"url": url, "simulate": False}) == {
        "url": url,
        "method": "GET",
        "simulate": False,
        "headers": {},
        "body": None,
        "timeout": 10.0,
    }
    full = {
        "url": url,
        "method": "post",
        "simulate": False,
        "headers": {"Content-Type": "application/json", "X-Token": "a b\tc"},
        "body": '{"event": "done"}',
        "timeout": 300,
    }
    assert check(full) == {**full, "method": "POST"}
    assert check({"url": url, "simulate": True}) == {"url": url, "method": "GET"}


def test_submission_refuses_a_host_the_dispatcher_does_not_list():
    with pytest.raises(InvalidPayload) as caught:
        check({"url": "https://example.com/", "simulate": False})
    assert str(caught.value) == (
        "http_request host 'example.com' is not in HTTP_REQUEST_ALLOWED_HOSTS"
    )
    # the simulated mode never sends anything: any host
    assert check({"url": "https://example.com/"}) == {
        "url": "https://example.com/",
        "method": "GET",
    }


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"simulate": "no"}, ["'simulate' must be true or false", "string"]),
        ({"simulate": 0}, ["'simulate' must be true or false"]),
        ({"timeout": 3}, ["unknown field 'timeout'", '"simulate": false']),
        ({"headers": {}}, ["unknown field 'headers'", '"simulate": false']),
        ({"simulate": True, "body": "x"}, ["unknown field 'body'"]),
        ({"simulate": False, "extra": 1}, ["unknown field 'extra'"]),
        ({"simulate": False, "timeout": 0}, ["'timeout'", "greater than 0 and at most 300"]),
        ({"simulate": False, "timeout": 300.5}, ["'timeout'", "at most 300"]),
        ({"simulate": False, "timeout": "5"}, ["'timeout'", "number"]),
        ({"simulate": False, "timeout": float("nan")}, ["'timeout'", "finite"]),
        ({"simulate": False, "body": 5}, ["'body'", "string"]),
        ({"simulate": False, "body": "x" * 262_145}, ["'body'", "at most 262144"]),
        ({"simulate": False, "headers": []}, ["'headers' must be an object"]),
        ({"simulate": False, "headers": {"A": 1}}, ["value of 'A' must be a string"]),
        ({"simulate": False, "headers": {"Bad Name": "x"}}, ["'Bad Name' is not a header name"]),
        ({"simulate": False, "headers": {"": "x"}}, ["header names are 1 to 100"]),
        ({"simulate": False, "headers": {"X": "a\r\nHost: evil"}}, ["printable ASCII"]),
        ({"simulate": False, "headers": {"X": "caf\u00e9"}}, ["printable ASCII"]),
        ({"simulate": False, "headers": {"X": "v" * 8193}}, ["at most 8192"]),
        ({"simulate": False, "headers": {"Host": "evil.net"}}, ["'Host' is set by the request"]),
        ({"simulate": False, "headers": {"content-length": "1"}}, ["set by the request"]),
        ({"simulate": False, "headers": {"X-A": "1", "x-a": "2"}}, ["'x-a' is given twice"]),
        (
            {"simulate": False, "headers": {f"X-{i}": "1" for i in range(51)}},
            ["at most 50 headers, not 51"],
        ),
    ],
)
def test_real_mode_validation(payload, words):
    with pytest.raises(InvalidPayload) as caught:
        check({"url": "https://api.example.com/", **payload})
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_check_headers_returns_a_plain_copy():
    headers = {"Accept": "application/json"}
    assert check_headers(headers) == headers
    assert check_headers(headers) is not headers


# -- the body in the result ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "cut", "content_type", "expected"),
    [
        (b"hello", False, "text/plain", ("hello", "text")),
        ("h\u00e9".encode(), False, None, ("h\u00e9", "text")),  # UTF-8 when none is named
        ("\u00e9".encode("latin-1"), False, "text/plain; charset=ISO-8859-1", ("\u00e9", "text")),
        ('"\u00e9"'.encode("utf-16"), False, 'text/plain; charset="utf-16"', ('"\u00e9"', "text")),
        (b"ab\xc3", True, "text/plain", ("ab", "text")),  # a character cut at 64 KiB: dropped
        (b"ab\xc3", False, "text/plain", ("YWLD", "base64")),  # not cut: undecodable
        (b"\x89PNG\r\n\x1a\n", False, "image/png", ("iVBORw0KGgo=", "base64")),
        (b"ok", False, "text/plain; charset=no-such-charset", ("ok", "text")),
        (b"b2s=", False, "text/plain; charset=base64", ("b2s=", "text")),  # no such charset
        (b"", False, None, ("", "text")),
    ],
)
def test_the_body_is_text_when_it_decodes_else_base64(data, cut, content_type, expected):
    assert http_fetch._body_text(data, cut, content_type) == expected
