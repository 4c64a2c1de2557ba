"""The client's address, as one function that everything asking "who is this?" uses: the audit log
(via the request context), log-in throttling (django-axes' AXES_CLIENT_IP_CALLABLE) and the API's
anonymous throttle.

Behind a reverse proxy every request comes from the proxy's address, and the client's is in
`X-Forwarded-For`, which anyone can also send. So the header is read only when the peer
(`REMOTE_ADDR`) is a configured proxy (settings.TRUSTED_PROXIES: addresses or CIDR networks, empty by
default), and then from the right: each trusted proxy appends the address it received the request
from, so the rightmost address that is not a trusted proxy is the client. Whatever a client puts in
the header itself lies further left and is never used.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """TRUSTED_PROXIES as networks (a bare address is a /32 or /128); refuses anything else."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"TRUSTED_PROXIES: {value!r} is not an IP address or CIDR network."
            ) from None
    return tuple(networks)


@lru_cache(maxsize=8)
def _networks(values: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return parse_networks(values)


def _address(text: str) -> IPAddress | None:
    """An address from REMOTE_ADDR or one X-Forwarded-For entry (a port, brackets or an IPv6 zone
    some proxies add are dropped); None when it is not one."""
    text = text.strip()
    if text.startswith("["):  # [2001:db8::1]:443
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # 192.0.2.1:443
        text = text.partition(":")[0]
    text = text.partition("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def client_ip(request: Any) -> str | None:
    """The client's address for `request` (an HttpRequest or DRF Request), normalised; None when the
    peer's address is unknown (e.g. a Unix socket without a proxy)."""
    meta = request.META
    peer = _address(meta.get("REMOTE_ADDR") or "")
    if peer is None:
        return None
    networks = _networks(tuple(settings.TRUSTED_PROXIES))
    if not networks or not _trusted(peer, networks):
        return str(peer)
    # Several X-Forwarded-For headers arrive joined with ", ", in order.
    hops = [hop for hop in (meta.get("HTTP_X_FORWARDED_FOR") or "").split(",") if hop.strip()]
    nearest = peer
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            # Not written by a trusted proxy (they write addresses): the nearest proxy is all we know.
            return str(nearest)
        if not _trusted(address, networks):
            return str(address)
        nearest = address
    return str(nearest)  # every hop is a trusted proxy: the request started at the leftmost


def axes_client_ip(request: Any) -> str | None:
    """django-axes' AXES_CLIENT_IP_CALLABLE (it is given the request, or None outside one)."""
    return client_ip(request) if request is not None and hasattr(request, "META") else None
