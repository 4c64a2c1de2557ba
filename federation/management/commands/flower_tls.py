"""Issues the TLS material of the consortium's Flower deployment: a CA and the SuperLink's server
certificate signed by it. The SuperLink gets ca.crt, server.pem and server.key; members and the
clearinghouse (FLOWER_ROOT_CERTIFICATES) get ca.crt only. Keep ca.key offline: it issues the next
server certificate."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from federation.flower.security import make_tls_material


class Command(BaseCommand):
    help = __doc__.split("\n\n")[0]

    def add_arguments(self, parser):
        parser.add_argument(
            "--out", required=True, help="directory for ca.crt, ca.key, server.pem, server.key"
        )
        parser.add_argument(
            "--host",
            action="append",
            required=True,
            help="a name or IP address the SuperLink is reached by (repeat for several)",
        )
        parser.add_argument("--days", type=int, default=365)

    def handle(self, *args, out: str, host: list[str], days: int, **options):
        material = make_tls_material(out, hosts=host, days=days)
        self.stdout.write(
            f"CA certificate (give to members and set FLOWER_ROOT_CERTIFICATES): {material.ca}\n"
            f"SuperLink: --ssl-ca-certfile {material.ca} --ssl-certfile {material.cert} "
            f"--ssl-keyfile {material.key}\n"
            f"Valid {days} days for {', '.join(host)}. Keep {material.ca.parent / 'ca.key'} offline."
        )
