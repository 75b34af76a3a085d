"""The downloader refuses URLs that lead into the host, its network or nowhere routable."""

import ipaddress

import aiohttp
import grpc
import pytest
import yarl

from ferry.errors import InvalidArgument
from ferry.services.downloader.guard import AddressBlocked, NetworkGuard, SchemeRefused, blocked_reason

GUARD = NetworkGuard()


@pytest.mark.parametrize(
    ("url", "address", "why"),
    [
        ("http://127.0.0.1/", "127.0.0.1", "loopback"),
        ("http://[::1]/", "::1", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254", "link-local"),
        ("http://10.0.0.1/", "10.0.0.1", "private"),
        ("http://192.168.1.1/", "192.168.1.1", "private"),
        ("http://172.16.0.1/", "172.16.0.1", "private"),
        ("http://100.64.0.1/", "100.64.0.1", "carrier-grade NAT"),
        ("http://0.0.0.0/", "0.0.0.0", "unspecified"),
        ("http://224.0.0.1/", "224.0.0.1", "multicast"),
        ("http://255.255.255.255/", "255.255.255.255", "reserved"),
        ("http://192.0.2.1/", "192.0.2.1", "not globally routable"),
        ("http://[fe80::1]/", "fe80::1", "link-local"),
        ("http://[fe80::1%25eth0]/", "fe80::1%eth0", "link-local"),
        ("http://[fc00::1]/", "fc00::1", "unique-local"),
        ("http://[::]/", "::", "unspecified"),
        ("http://[2001::1]/", "2001::1", "Teredo"),
        # yarl rewrites the dotted tail of an IPv6 literal into hex groups.
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1", "IPv4-mapped loopback"),
        ("http://[::ffff:169.254.169.254]/", "::ffff:a9fe:a9fe", "IPv4-mapped link-local"),
        ("http://[2002:7f00:1::]/", "2002:7f00:1::", "6to4 loopback"),
        ("http://[64:ff9b::7f00:1]/", "64:ff9b::7f00:1", "NAT64 loopback"),
        ("http://[64:ff9b:1::a00:1]/", "64:ff9b:1::a00:1", "NAT64 private"),
    ],
)
def test_address_hosts_outside_the_public_internet_are_refused(url, address, why):
    with pytest.raises(AddressBlocked) as refused:
        GUARD.check_url(url)

    assert refused.value.message.startswith(f"refusing {address} ({why})")
    assert refused.value.reason == "ADDRESS_BLOCKED"
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "0x7f000001", "0x7F.0.0.1", "127.0.0.1.", "%31%32%37.0.0.1"],
)
def test_other_spellings_of_an_address_are_refused_under_the_address_they_denote(host):
    # yarl keeps these hosts as written; inet_aton (and so the OS) reads them as 127.0.0.1.
    with pytest.raises(
        AddressBlocked, match=r"^PERMISSION_DENIED: refusing 127\.0\.0\.1 \(loopback\) for host '[^']+';"
    ):
        GUARD.check_url(f"http://{host}/")


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("file:///etc/passwd", "file"),
        ("gopher://x/", "gopher"),
        ("ftp://example.com/f", "ftp"),
        ("FTP://example.com/f", "ftp"),
        # data: URIs are decoded before the guard; one that reaches it is a mistake.
        ("data:,hello", "data"),
    ],
)
def test_schemes_other_than_http_and_https_are_refused(url, scheme):
    with pytest.raises(SchemeRefused) as refused:
        GUARD.check_url(url)

    assert refused.value.message == f"refusing scheme {scheme!r}: only http, https and data URLs are allowed"
    assert refused.value.reason == "SCHEME_REFUSED"
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    "url",
    ["http:///path", "http://", "example.com/path", "http://[::1/", "http://example.com:99999/", "http://256.1.1.1/"],
)
def test_urls_without_a_usable_host_are_malformed(url):
    with pytest.raises(InvalidArgument) as malformed:
        GUARD.check_url(url)

    assert malformed.value.reason == "MALFORMED_URL"


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/",
        "https://example.com/",
        "https://EXAMPLE.com:8443/a?b=c",
        # Names are left to the resolver, so check_url never touches DNS.
        "http://no-such-host.invalid/",
        "http://[2606:2800:220:1:248:1893:25c8:1946]/",
        # DNS64 networks hand out these for public IPv4-only names.
        "http://[64:ff9b::5db8:d822]/",
        "http://[::ffff:93.184.216.34]/",
    ],
)
def test_public_addresses_and_names_pass(url):
    checked = GUARD.check_url(url)

    assert checked == yarl.URL(url)


def test_check_url_accepts_a_parsed_url():
    url = yarl.URL("https://example.com/model.bin")

    assert GUARD.check_url(url) is url


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/", "http://10.0.0.1/", "http://[::ffff:127.0.0.1]/", "http://[fc00::1]/"]
)
def test_allowing_private_networks_opens_loopback_and_private_ranges(url):
    NetworkGuard(allow_private_networks=True).check_url(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [("http://224.0.0.1/", "multicast"), ("http://0.0.0.0/", "unspecified"), ("http://[::]/", "unspecified")],
)
def test_allowing_private_networks_still_refuses_multicast_and_unspecified(url, why):
    with pytest.raises(AddressBlocked, match=f"\\({why}\\)"):
        NetworkGuard(allow_private_networks=True).check_url(url)


def test_an_allowed_cidr_opens_only_the_addresses_inside_it():
    guard = NetworkGuard(allowed=("10.1.0.0/16", "::1/128"))

    guard.check_url("http://10.1.2.3/")
    guard.check_url("http://[::1]/")
    guard.check_address("storage.internal", "10.1.200.7")
    with pytest.raises(AddressBlocked, match=r"refusing 10\.2\.0\.1 \(private\)"):
        guard.check_url("http://10.2.0.1/")
    with pytest.raises(AddressBlocked, match=r"refusing 127\.0\.0\.1 \(loopback\)"):
        guard.check_url("http://127.0.0.1/")


def test_an_allowed_host_name_may_resolve_anywhere_and_other_names_may_not():
    guard = NetworkGuard(allowed=("MinIO.internal",))

    guard.check_address("minio.internal", "10.0.0.5")
    guard.check_address("minio.internal.", "127.0.0.1")
    with pytest.raises(
        AddressBlocked, match=r"^PERMISSION_DENIED: refusing 10\.0\.0\.5 \(private\) for host 'other\.internal';"
    ):
        guard.check_address("other.internal", "10.0.0.5")


@pytest.mark.parametrize(
    ("url", "flags"),
    [
        ("http://127.0.0.1/", "--allow-hosts or --allow-private-networks"),
        ("http://10.0.0.1/", "--allow-hosts or --allow-private-networks"),
        ("http://169.254.169.254/", "--allow-hosts or --allow-private-networks"),
        ("http://100.64.0.1/", "--allow-hosts or --allow-private-networks"),
        ("http://[fc00::1]/", "--allow-hosts or --allow-private-networks"),
        ("http://[::ffff:100.64.0.1]/", "--allow-hosts or --allow-private-networks"),
        ("http://198.18.0.1/", "--allow-hosts"),
    ],
)
def test_a_refusal_that_may_be_the_servers_own_network_names_the_flags_that_open_it(url, flags):
    with pytest.raises(AddressBlocked) as refused:
        GUARD.check_url(url)
    assert refused.value.message.endswith(f"; allow it with {flags}")


@pytest.mark.parametrize("url", ["http://0.0.0.0/", "http://224.0.0.1/", "http://[2001::1]/"])
def test_a_refusal_of_where_no_server_lives_suggests_no_flag(url):
    with pytest.raises(AddressBlocked) as refused:
        GUARD.check_url(url)
    assert "--allow" not in refused.value.message


def test_a_refused_host_name_is_shown_by_its_start_only():
    with pytest.raises(AddressBlocked) as refused:
        GUARD.check_address("a" * 100_000 + ".example", "127.0.0.1")
    assert len(refused.value.message) < 300


def test_an_allow_list_entry_with_host_bits_set_is_rejected_as_a_likely_typo():
    with pytest.raises(ValueError, match="host bits set"):
        NetworkGuard(allowed=("10.1.2.3/16",))


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.53", "loopback"),
        ("172.31.255.255", "private"),
        ("172.32.0.1", None),
        ("100.127.255.255", "carrier-grade NAT"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("198.18.0.1", "not globally routable"),
        ("0.1.2.3", "not globally routable"),
        ("ff02::1", "multicast"),
        ("fec0::1", "site-local"),
        ("2001:db8::1", "not globally routable"),
        ("::ffff:10.0.0.1", "IPv4-mapped private"),
        ("::ffff:0.0.0.0", "IPv4-mapped unspecified"),
        ("2002:a9fe:a9fe::", "6to4 link-local"),
        ("2002:808:808::", None),
        ("64:ff9b::a9fe:a9fe", "NAT64 link-local"),
        # The local-use NAT64 prefix may be cut at /48 to /96; each reading is checked.
        ("64:ff9b:1:7f00:1::", "NAT64 unspecified"),
        ("64:ff9b:1::5db8:d822", None),
    ],
)
def test_blocked_reason_names_the_range_an_address_is_in(address, why):
    assert blocked_reason(ipaddress.ip_address(address)) == why


def test_blocked_reason_with_private_allowed_still_names_what_stays_closed():
    assert blocked_reason(ipaddress.ip_address("127.0.0.1"), allow_private=True) is None
    assert blocked_reason(ipaddress.ip_address("::ffff:192.168.0.1"), allow_private=True) is None
    assert blocked_reason(ipaddress.ip_address("ff02::1"), allow_private=True) == "multicast"
    assert blocked_reason(ipaddress.ip_address("2001::1"), allow_private=True) == "Teredo"
    assert blocked_reason(ipaddress.ip_address("240.0.0.1"), allow_private=True) == "reserved"


async def test_the_resolver_refuses_a_name_that_resolves_to_loopback():
    with pytest.raises(
        AddressBlocked, match=r"^PERMISSION_DENIED: refusing (127\.0\.0\.1|::1) \(loopback\) for host 'localhost';"
    ):
        await GUARD.resolver().resolve("localhost", 80)


async def test_a_refused_name_reaches_the_caller_of_an_aiohttp_request_unwrapped():
    connector = aiohttp.TCPConnector(resolver=GUARD.resolver())
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(AddressBlocked, match="for host 'localhost'"):
            await session.get("http://localhost:1/")


async def test_aiohttp_hands_hex_spellings_to_the_resolver_which_refuses_them():
    connector = aiohttp.TCPConnector(resolver=GUARD.resolver())
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(AddressBlocked, match=r"refusing 127\.0\.0\.1 \(loopback\) for host '0x7f\.1'"):
            await session.get("http://0x7f.1:1/")


async def test_with_private_networks_allowed_a_request_to_localhost_gets_past_the_guard():
    guard = NetworkGuard(allow_private_networks=True)
    connector = aiohttp.TCPConnector(resolver=guard.resolver())
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get("http://localhost:1/")


async def test_aiohttp_connects_to_ip_literals_without_the_resolver_so_check_url_must_see_them():
    connector = aiohttp.TCPConnector(resolver=GUARD.resolver())
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get("http://127.0.0.1:1/")
    with pytest.raises(AddressBlocked):
        GUARD.check_url("http://127.0.0.1:1/")
