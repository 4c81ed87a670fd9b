"""Guarded HTTP(S) download for attachments a message references by URL.

``safe_fetch`` is what stands between a chat message (possibly written by a remote client) and the
network: only ``http``/``https``; every address the host name resolves to must be public (not
loopback, private, link-local, multicast, reserved or unspecified) unless private addresses are
allowed; the connection goes to the address that was checked — the request is sent to the IP with
the original ``Host`` header and TLS SNI/certificate name, so a second DNS answer (DNS rebinding)
cannot redirect it; redirects are followed here, one hop at a time, each hop checked the same way;
the whole download (not each network wait) has a deadline and the body a size limit. Environment
proxies are ignored: a proxy would make the connection somewhere other than the checked address.
"""

from __future__ import annotations

import ipaddress
import socket
import time
import urllib.parse

from ibllm_agent.errors import FetchError

REDIRECT_CODES = (301, 302, 303, 307, 308)


def address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``ip`` is not a public address (``None`` when it is)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    # most specific first: ipaddress counts link-local and 0.0.0.0/8 as private too
    for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT), documentation ranges
        return "non-global"
    return None


def resolve_checked(url: str, host: str, port: int, *, allow_private_network: bool) -> str:
    """Resolve ``host`` once; refuse if any of its addresses is not allowed; return one to connect to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"fetching {url}: cannot resolve host {host!r} ({exc})") from None
    addresses = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise FetchError(f"fetching {url}: host {host!r} has no address")
    if not allow_private_network:
        for ip in addresses:
            if (reason := address_refusal(ip)) is not None:
                raise FetchError(
                    f"fetching {url}: host {host!r} resolves to {reason} address {ip}; "
                    f"private network addresses are not allowed by this content policy"
                )
    return str(addresses[0])


def _split(url: str) -> tuple[urllib.parse.SplitResult, str, int]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"fetching {url}: only http and https URLs may be fetched, not {scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise FetchError(f"fetching {url}: no host in the URL")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise FetchError(f"fetching {url}: invalid port") from None
    return parts, scheme, port


def safe_fetch(
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    allow_private_network: bool = False,
    max_redirects: int = 5,
) -> bytes:
    """GET ``url`` under the rules in the module docstring; raises ``FetchError``."""
    import httpx

    # httpx's timeout bounds each network wait; a server dripping bytes would never trip it, so the
    # whole download (redirect hops included) also has a deadline.
    deadline = time.monotonic() + timeout
    current = url
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _hop in range(max_redirects + 1):
            parts, scheme, port = _split(current)
            host = parts.hostname
            ip = resolve_checked(current, host, port, allow_private_network=allow_private_network)
            netloc = f"[{ip}]" if ":" in ip else ip
            pinned = urllib.parse.urlunsplit((scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
            host_header = parts.netloc.rsplit("@", 1)[-1]  # host[:port] as written, without user info
            extensions = {"sni_hostname": host} if scheme == "https" else {}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError(f"fetching {url}: not complete within {timeout:g} s")
            request = client.build_request(
                "GET", pinned, headers={"Host": host_header}, extensions=extensions, timeout=remaining
            )
            try:
                resp = client.send(request, stream=True)
            except httpx.TimeoutException:
                raise FetchError(f"fetching {url}: no answer within {timeout:g} s") from None
            except httpx.HTTPError as exc:
                raise FetchError(f"fetching {url}: {type(exc).__name__}: {exc}") from None
            try:
                if resp.status_code in REDIRECT_CODES and resp.headers.get("location"):
                    current = urllib.parse.urljoin(current, resp.headers["location"])
                    continue
                return _read_body(url, resp, deadline, timeout, max_bytes)
            finally:
                resp.close()
    raise FetchError(f"fetching {url}: more than {max_redirects} redirects")


def _read_body(url: str, resp, deadline: float, timeout: float, max_bytes: int) -> bytes:
    import httpx

    if resp.status_code >= 400:
        raise FetchError(f"fetching {url}: HTTP {resp.status_code}")
    declared = resp.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"fetching {url}: {declared} bytes is over the limit of {max_bytes}")
    chunks, size = [], 0
    try:
        for chunk in resp.iter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"fetching {url}: more than the limit of {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FetchError(f"fetching {url}: not complete within {timeout:g} s")
            chunks.append(chunk)
    except httpx.TimeoutException:
        raise FetchError(f"fetching {url}: no answer within {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise FetchError(f"fetching {url}: {type(exc).__name__}: {exc}") from None
    if time.monotonic() > deadline:
        raise FetchError(f"fetching {url}: not complete within {timeout:g} s")
    return b"".join(chunks)
