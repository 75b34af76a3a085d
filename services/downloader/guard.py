"""The downloader's SSRF guard: which URLs and addresses a fetch may reach.

A URL is checked twice. `NetworkGuard.check_url` refuses foreign schemes and
checks hosts that already are addresses (IP literals and the legacy numeric
spellings `socket.inet_aton` accepts, such as `2130706433` or `0x7f.1`), because
aiohttp connects to an IP-literal host without asking the resolver. Names are
left to `NetworkGuard.resolver()`, which checks every address a name resolves
to at connect time, so a name cannot point somewhere else between the check and
the connection.

aiohttp (checked on 3.14) wraps only `OSError`s from `resolve()` (into
`ClientConnectorDNSError`); `AddressBlocked` is not one, so it reaches the
caller of `session.get(...)` unchanged.

The resolver does not see redirect targets that are IP literals: check every
hop with `check_url` (follow redirects by hand, or from a client middleware,
which aiohttp runs once per hop).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from urllib.parse import unquote

import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from ferry.errors import InvalidArgument, PermissionDenied

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})

# Hosts that WHATWG URL parsers and inet_aton read as IPv4 (decimal, octal or hex
# parts, one to four of them); matched strictly so inet_aton's tolerance of
# trailing text ("1.2.3.4 junk") never applies.
_NUMERIC_HOST = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}")

_PRIVATE_V4 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_CARRIER_GRADE_NAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
# What `_private_kind` names, and the IPv6 forms `blocked_reason` names before an embedded IPv4 address's kind.
_PRIVATE_KINDS = frozenset({"loopback", "link-local", "carrier-grade NAT", "private", "unique-local", "site-local"})
_EMBEDDING_FORMS = ("IPv4-mapped ", "6to4 ", "NAT64 ")
MAX_SHOWN_HOST = 100


class AddressBlocked(PermissionDenied):
    reason = "ADDRESS_BLOCKED"


class SchemeRefused(PermissionDenied):
    reason = "SCHEME_REFUSED"


def blocked_reason(address: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why `address` must not be fetched from, or None when it may be.

    `allow_private` opens loopback, private, link-local, carrier-grade NAT,
    unique-local and site-local ranges (and IPv6 forms embedding them) for
    deployments that fetch from their own network; multicast, unspecified and
    reserved addresses stay refused because no server lives there.
    """
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv6Address):
        # The embedded forms come first: Python files NAT64 under reserved ::/8
        # and calls 6to4 global, whatever IPv4 address they carry.
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            form, candidates = embedded
            for candidate in candidates:
                inner = blocked_reason(candidate, allow_private=allow_private)
                if inner is not None:
                    return f"{form} {inner}"
            return None
        if address.teredo is not None:
            # The client address is obfuscated and the relay is someone else's.
            return "Teredo"
    private = _private_kind(address)
    if private is not None:
        return None if allow_private else private
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "not globally routable"
    return None


def _private_kind(address: IPAddress) -> str | None:
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if isinstance(address, ipaddress.IPv4Address):
        if address in _CARRIER_GRADE_NAT:
            return "carrier-grade NAT"
        if any(address in network for network in _PRIVATE_V4):
            return "private"
        return None
    if address in _UNIQUE_LOCAL:
        return "unique-local"
    if address.is_site_local:
        return "site-local"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, tuple[ipaddress.IPv4Address, ...]] | None:
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", (address.ipv4_mapped,)
    if address.sixtofour is not None:
        return "6to4", (address.sixtofour,)
    if address in _NAT64_WELL_KNOWN:
        return "NAT64", (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF),)
    if address in _NAT64_LOCAL_USE:
        return "NAT64", _local_nat64_ipv4s(address)
    return None


def _local_nat64_ipv4s(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    # The operator picks the prefix length inside 64:ff9b:1::/48 (RFC 8215), so
    # every RFC 6052 placement the address could be meant as has to be safe. A
    # placement shorter than /96 is only meant when the "u" octet (bits 64-71)
    # and the suffix after the IPv4 bits are zero; when it is, the /96 reading
    # is mostly zeros and refuses the address, which errs on the safe side.
    bits = int(address)
    u_octet = (bits >> 56) & 0xFF
    without_u = ((bits >> 64) << 56) | (bits & (2**56 - 1))
    candidates = [ipaddress.IPv4Address(bits & 0xFFFFFFFF)]
    for prefix_length in (48, 56, 64):
        suffix_bits = 120 - prefix_length - 32
        if u_octet == 0 and without_u & ((1 << suffix_bits) - 1) == 0:
            candidates.append(ipaddress.IPv4Address((without_u >> suffix_bits) & 0xFFFFFFFF))
    return tuple(candidates)


def _literal_address(host: str) -> IPAddress | None:
    """The address a host denotes without DNS, or None for a name."""
    host = unquote(host).removesuffix(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not _NUMERIC_HOST.fullmatch(host.lower()):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        # A numeric host is never looked up as a name, so this one reaches nothing.
        raise InvalidArgument(f"host {host!r} is not a valid IPv4 address", reason="MALFORMED_URL") from None


@dataclass(frozen=True)
class NetworkGuard:
    """Refuses URLs and addresses a downloader must not reach.

    `allowed` takes exact host names (case-insensitive) and CIDRs; an allowed
    host, or an address inside an allowed CIDR, passes whatever its range.
    """

    allow_private_networks: bool = False
    allowed: tuple[str, ...] = ()
    _allowed_hosts: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())
    _allowed_networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in self.allowed:
            if "/" in entry or _is_ip(entry):
                # strict: "10.1.2.3/16" is more likely a typo than a wish for 10.1/16.
                networks.append(ipaddress.ip_network(entry, strict=True))
            else:
                hosts.add(_normal_host(entry))
        object.__setattr__(self, "_allowed_hosts", frozenset(hosts))
        object.__setattr__(self, "_allowed_networks", tuple(networks))

    def check_url(self, url: str | yarl.URL) -> yarl.URL:
        """Parse `url`, refuse foreign schemes and blocked address hosts; names are checked on resolution."""
        try:
            parsed = url if isinstance(url, yarl.URL) else yarl.URL(url)
        except (ValueError, TypeError) as error:
            raise InvalidArgument(f"cannot parse URL {str(url)!r}: {error}", reason="MALFORMED_URL") from None
        if not parsed.scheme:
            raise InvalidArgument(f"URL {str(url)!r} has no scheme", reason="MALFORMED_URL")
        if parsed.scheme not in ALLOWED_SCHEMES:
            raise SchemeRefused(f"refusing scheme {parsed.scheme!r}: only http, https and data URLs are allowed")
        host = parsed.host
        if not host:
            raise InvalidArgument(f"URL {str(url)!r} has no host", reason="MALFORMED_URL")
        address = _literal_address(host)
        if address is not None:
            self._check(host, address)
        return parsed

    def check_address(self, host: str, address: str) -> None:
        """Raise AddressBlocked unless `host` may be reached at `address`."""
        parsed = _literal_address(address)
        if parsed is None:
            raise InvalidArgument(f"{address!r} is not an IP address", reason="MALFORMED_URL")
        self._check(host, parsed)

    def resolver(self) -> AbstractResolver:
        """An aiohttp resolver that refuses a name if any address it resolves to is blocked."""
        return _GuardedResolver(self)

    def _check(self, host: str, address: IPAddress) -> None:
        if _normal_host(host) in self._allowed_hosts:
            return
        if any(address.version == network.version and address in network for network in self._allowed_networks):
            return
        why = blocked_reason(address, allow_private=self.allow_private_networks)
        if why is None:
            return
        named = "" if host == str(address) else f" for host {_shown(host)}"
        raise AddressBlocked(f"refusing {address} ({why}){named}{_how_to_allow(why)}")


class _GuardedResolver(AbstractResolver):
    def __init__(self, guard: NetworkGuard) -> None:
        self._guard = guard
        # ThreadedResolver binds the running loop, which may not exist yet when
        # the guard builds its resolver.
        self._inner: ThreadedResolver | None = None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        # All addresses, not just the first: aiohttp falls back through the
        # list, so one good record would otherwise carry a blocked one along.
        for result in results:
            self._guard.check_address(host, result["host"])
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def _how_to_allow(why: str) -> str:
    """The flags that open a refusal that may be a server's own network (a misconfiguration rather than an attack)."""
    kind = next((why.removeprefix(form) for form in _EMBEDDING_FORMS if why.startswith(form)), why)
    if kind in _PRIVATE_KINDS:
        return "; allow it with --allow-hosts or --allow-private-networks"
    if kind in ("reserved", "not globally routable"):
        return "; allow it with --allow-hosts"
    return ""  # unspecified, multicast, Teredo: no server of anyone's lives there


def _shown(host: str) -> str:
    """A host as a message shows it: whole when it is of a sane length, else its start (a URL can be 1 MiB)."""
    return repr(host if len(host) <= MAX_SHOWN_HOST else host[:MAX_SHOWN_HOST] + "…")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _normal_host(host: str) -> str:
    return host.lower().removesuffix(".")
