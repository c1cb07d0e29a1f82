"""Where webhooks may go: http(s) URLs only, and (unless WEBHOOK_ALLOW_PRIVATE_ADDRESSES) never to loopback,
link-local, private or other non-public addresses, so that an endpoint cannot make the service reach its own
network. A hostname is checked against every address it resolves to, at each new connection, and the connection
goes to those addresses (service/webhooks/connect.py)."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpx

MAX_URL_LENGTH = 2048
MAX_HOST_LENGTH = 253  # a DNS name's limit (RFC 1035), once IDNA-encoded
# Once IDNA-encoded: labels of letters, digits, hyphens (and underscores, which DNS names carry in practice),
# 1 to 63 of them, between dots. The codec lets any other ASCII through ("exa%mple.com"), which no resolver finds.
_DOMAIN_NAME = re.compile(rb"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?")


class AddressRefused(Exception):
    """The URL is not one webhooks may be sent to; the message says why."""


# IPv6 prefixes that carry an IPv4 address in their last 32 bits, which Python 3.11 calls global whatever that
# address is: NAT64's well-known prefix (RFC 6052), SIIT's IPv4-translated addresses (RFC 2765) and the deprecated
# IPv4-compatible form.
_IPV4_IN_LAST_32_BITS = tuple(ipaddress.ip_network(prefix) for prefix in ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96"))
# NAT64's local-use prefix (RFC 8215) is for translators inside one network, and not globally reachable (IANA's
# special-purpose registry); where its IPv4 address lies depends on the length the network uses it at.
_LOCAL_USE_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


def _refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return _refused(address.ipv4_mapped)
        if address.sixtofour is not None:  # 2002::/16: the IPv4 address it tunnels to
            return _refused(address.sixtofour)
        if any(address in prefix for prefix in _IPV4_IN_LAST_32_BITS):
            return _refused(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address in _LOCAL_USE_NAT64 or address.is_site_local:  # fec0::/10: deprecated, still routed in places
            return True
    return not address.is_global or address.is_multicast


def _ipv4_shorthand(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a host such as 2130706433, 0x7f.1, 017700000001 or 127.1 is: ipaddress takes only the
    dotted quad, but the system resolver reads inet_aton's forms as an address too, without asking DNS."""
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _check_domain_name(host: str) -> None:
    """A host name the resolver can take. It encodes the name with IDNA and raises UnicodeError (not OSError) for
    an empty label or one over 63 characters, which would only show at delivery, as an error the delivery loop
    did not expect (a name over 253 characters fails there too, only later)."""
    try:
        encoded = host.encode("idna")
    except UnicodeError:
        encoded = b""
    if not _DOMAIN_NAME.fullmatch(encoded) or len(encoded.rstrip(b".")) > MAX_HOST_LENGTH:
        raise AddressRefused(
            f"url host is not a valid domain name: labels of 1 to 63 characters between dots, {MAX_HOST_LENGTH} "
            "in all; an internationalized name must be valid IDNA"
        )


def check_url_form(url: str, *, allow_private: bool) -> str:
    """The URL's host when its form is acceptable (scheme, host, no credentials, a public address if literal)."""
    if len(url) > MAX_URL_LENGTH:
        raise AddressRefused(f"url is longer than {MAX_URL_LENGTH} characters")
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        # A URL has no spaces or control characters (RFC 3986), and PostgreSQL text cannot hold U+0000.
        raise AddressRefused("url must not contain spaces or control characters")
    try:
        # Both parsers must take it: the checks read urlsplit's parts, and httpx sends to its own reading of the
        # URL (which refuses what urlsplit lets through, such as "[::1]x" for a port).
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        _ = httpx.URL(url).host  # decoding the host checks its IDNA labels ("xn--zz" is none), as a send does
    except (ValueError, httpx.InvalidURL) as exc:  # UnicodeError (an IDNA error) is a ValueError
        raise AddressRefused(f"url is not a valid URL: {exc}") from None
    if parts.scheme not in {"http", "https"}:
        raise AddressRefused("url must be an http:// or https:// URL")
    if not host:
        raise AddressRefused("url has no host")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("url must not carry credentials")
    if port == 0:
        raise AddressRefused("url has an invalid port: 0")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        _check_domain_name(host)
        shorthand = _ipv4_shorthand(host)
        if shorthand is not None:
            if not allow_private:
                check_literal(shorthand)
            return host
        if not allow_private and host.rstrip(".").lower() in {"localhost", "localhost.localdomain"}:
            raise AddressRefused("url points to a loopback host") from None
        return host
    if not allow_private:
        check_literal(literal)
    return host


def check_literal(literal: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    """A URL's literal address is public."""
    if _refused(literal):
        raise AddressRefused(f"url points to a non-public address ({literal})")


def check_resolved(host: str, addresses: Iterable[str]) -> None:
    """Every address the host resolved to is public: one that is not refuses the host, whichever would be used."""
    for text in addresses:
        address = ipaddress.ip_address(text)
        if _refused(address):
            raise AddressRefused(f"{host} resolves to a non-public address ({address})")
