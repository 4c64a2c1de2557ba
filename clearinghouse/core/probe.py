"""Container health checks, one small command for every process kind (docker/compose.yaml):

    python -m clearinghouse.core.probe http http://127.0.0.1:8000/healthz # web: answers 200
    python -m clearinghouse.core.probe tcp 127.0.0.1:9093                 # SuperLink, member agent: port open
    python -m clearinghouse.core.probe broker                             # beat: the broker answers

Exit status 0 when healthy, 1 otherwise, with one line saying which.
"""

from __future__ import annotations

import socket
import sys
import urllib.request
from collections.abc import Callable

TIMEOUT_SECONDS = 5.0


def probe_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return response.status == 200
    except OSError:
        return False


def host_port(address: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) as a socket address."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def probe_tcp(address: str) -> bool:
    try:
        with socket.create_connection(host_port(address), timeout=TIMEOUT_SECONDS):
            return True
    except OSError:
        return False


def probe_broker() -> bool:
    # Django is loaded only for this check: `probe http` and `probe tcp` run without settings.
    import django

    django.setup()
    from clearinghouse.core.health import broker_check, run_check

    return run_check("broker", broker_check) == "ok"


def main(argv: list[str]) -> int:
    checks: dict[str, Callable[..., bool]] = {"http": probe_http, "tcp": probe_tcp, "broker": probe_broker}
    if not argv or argv[0] not in checks or len(argv) != (1 if argv[0] == "broker" else 2):
        print(__doc__, file=sys.stderr)
        return 2
    healthy = checks[argv[0]](*argv[1:])
    print(f"{' '.join(argv)}: {'healthy' if healthy else 'UNHEALTHY'}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
