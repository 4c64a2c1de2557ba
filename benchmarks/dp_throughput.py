"""DP API throughput under concurrent analysts: previews/s, releases/s, and releases/s as the pool of
dp worker processes grows, through gunicorn and Celery dp workers (subprocesses), with httpx clients.

    python benchmarks/dp_throughput.py [--clients 20] [--orgs 4] [--datasets 4] [--rows 100000]
        [--seconds 15] [--warmup 3] [--workers 1,2,4] [--base-workers 1]
        [--web-workers 4] [--web-threads 8]

Needs PostgreSQL and Redis. It creates (drops first) its own database, BENCH_DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/clearinghouse_tp), and empties the Redis databases it is given:
BENCH_BROKER_URL (default redis://127.0.0.1:6379/9) and BENCH_RESULT_BACKEND (default .../10).

Setup, through the services: `--datasets` datasets of PUMS resampled (fixed seed per dataset) to
`--rows` rows, uploaded and stored encrypted, owned by up to 4 owner organisations, each with a large
pure-ε budget; `--clients` analysts (one user and API token each) spread over `--orgs` analyst
organisations, each granted every dataset with a large allocation. Client i queries dataset
i mod `--datasets`, so the load spreads over the datasets (and over the organisations' audit chains).

First, on the freshly started web processes, one preview per client all at once ("cold web"): what
a burst right after a (re)start meets. Then each client is a thread with its own httpx.Client,
sending back to back. A phase runs `--warmup` seconds unmeasured, then counts the requests that
finish in the next `--seconds` (those that fail, or finish later, are counted apart):

1. previews: POST /api/v1/datasets/<org>/<slug>/queries/preview (data-independent; spends nothing;
   priced in the web process, no dp worker involved);
2. releases: POST .../queries, one `SELECT COUNT(*) FROM pums` per request with a distinct ε
   (never a replay), with `--base-workers` dp workers;
3. releases with each pool size of `--workers`: the pool (separate `celery worker --pool solo -Q dp`
   processes) is restarted between pool sizes. Each worker process decrypts and stages every dataset
   before it consumes (this file run with --dp-worker), so no measured request pays a decryption.

The API's per-user rate limit is lifted (THROTTLE_USER) for the web processes: this measures the
service, not its throttle. Alongside each phase: the CPU cores the web, the dp workers, the whole
PostgreSQL server (every database on it) and the clients kept busy over the measured window, the
machine's in all (psutil), and the CPU milliseconds per request of each: where it bottlenecks, and,
on a shared machine, how much of it was someone else's.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Set (by the benchmark) for the dp workers it starts: they share the run's var dir and keys.
VAR_DIR_VAR = "DP_THROUGHPUT_VAR_DIR"
ENV = {
    "DJANGO_SETTINGS_MODULE": "clearinghouse.settings.dev",
    "CLEARINGHOUSE_VAR_DIR": os.environ.get(VAR_DIR_VAR) or tempfile.mkdtemp(prefix="clearinghouse-tp-"),
    "DATABASE_URL": os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/clearinghouse_tp"
    ),
    "CELERY_BROKER_URL": os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/9"),
    "CELERY_RESULT_BACKEND": os.environ.get("BENCH_RESULT_BACKEND", "redis://127.0.0.1:6379/10"),
    "DEBUG": "0",
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "THROTTLE_USER": "1000000/minute",
}
os.environ.update(ENV)

PASSWORD = "Quartz-Lantern-88"
RELEASE_SQL = "SELECT COUNT(*) FROM pums"
PREVIEW_SQL = "SELECT educ, COUNT(*), AVG(income) FROM pums GROUP BY educ"
MAX_OWNERS = 4
SEED = 20261205
MAX_BUDGET = 1e6  # the ledger's largest amount (ledger.MAX_PRIVACY_AMOUNT); a release costs ~0.01


@dataclasses.dataclass(frozen=True)
class Analyst:
    token: str
    dataset_path: str  # "<org>/<slug>"


# --------------------------------------------------------------------------- setup


def create_database() -> None:
    import psycopg

    url = ENV["DATABASE_URL"]
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def flush_redis() -> None:
    """Empties the broker and result databases: no message of an earlier run reaches this one."""
    import redis

    for url in {ENV["CELERY_BROKER_URL"], ENV["CELERY_RESULT_BACKEND"]}:
        redis.Redis.from_url(url).flushdb()


def setup(*, clients: int, orgs: int, datasets: int, rows: int) -> list[Analyst]:
    """Organisations, datasets (uploaded, ingested, budgeted, granted) and analysts, via the services."""
    import django

    django.setup()
    import polars as pl
    from django.core.management import call_command
    from django.test import Client

    from clearinghouse.accounts.services import api_token_create, operator_create, user_signup
    from clearinghouse.datasets.models import DatasetVersion
    from clearinghouse.datasets.reference_schemas import PUMS
    from clearinghouse.datasets.services import dataset_grant_create, dataset_register, dataset_version_ingest
    from clearinghouse.organisations.services import (
        invitation_accept,
        invitation_create,
        organisation_apply,
        organisation_set_status,
    )
    from clearinghouse.queries.ledger import allocation_set, budget_set

    call_command("migrate", verbosity=0)
    operator, _ = operator_create(username="operator", email="operator@bench.example.org")

    def member_org(slug: str):
        admin = user_signup(username=f"admin-{slug}", email=f"admin@{slug}.example.org", password=PASSWORD)
        org = organisation_apply(
            actor=admin, name=slug.title(), slug=slug, country="NL", contact_email=f"c@{slug}.example.org"
        )
        return admin, organisation_set_status(actor=operator, organisation=org, status="approved")

    owners = [member_org(f"census-{k}") for k in range(min(MAX_OWNERS, datasets))]
    analyst_orgs = [member_org(f"research-{k}") for k in range(orgs)]

    frame = pl.read_csv(ROOT.parent / "shared" / "datasets" / "pums_1000.csv", infer_schema=False)
    paths = []
    for j in range(datasets):
        owner_admin, owner = owners[j % len(owners)]
        slug = f"pums-{j}"
        data = frame.sample(rows, with_replacement=True, seed=SEED + j).write_csv().encode()
        dataset = dataset_register(
            actor=owner_admin, organisation=owner, name=f"PUMS {j}", slug=slug, schema=PUMS
        )
        web = Client(HTTP_HOST="127.0.0.1")
        web.force_login(owner_admin)
        response = web.post(f"/api/v1/datasets/{owner.slug}/{slug}/versions", {"file": io.BytesIO(data)})
        assert response.status_code == 202, response.content[:300]
        version = dataset_version_ingest(version_id=DatasetVersion.objects.get(dataset=dataset).pk)
        assert version.status == "ready", version.status
        budget_set(actor=owner_admin, dataset=dataset, measure="pure", total=MAX_BUDGET)
        for _, analyst_org in analyst_orgs:
            dataset_grant_create(
                actor=owner_admin, dataset=dataset, organisation=analyst_org, purpose="query"
            )
            allocation_set(
                actor=owner_admin, dataset=dataset, organisation=analyst_org, amount=MAX_BUDGET / orgs
            )
        paths.append(f"{owner.slug}/{slug}")

    analysts = []
    for i in range(clients):
        org_admin, org = analyst_orgs[i % orgs]
        user = user_signup(
            username=f"analyst-{i}", email=f"analyst-{i}@{org.slug}.example.org", password=PASSWORD
        )
        _, invitation = invitation_create(actor=org_admin, organisation=org, email=user.email, role="analyst")
        invitation_accept(actor=user, token=invitation)
        _, token = api_token_create(actor=user, name="throughput")
        analysts.append(Analyst(token=token, dataset_path=paths[i % datasets]))
    from django.db import connections

    connections.close_all()
    return analysts


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_web(port: int, workers: int, threads: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "clearinghouse.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-k",
            "gthread",
            "-w",
            str(workers),
            "--threads",
            str(threads),
            "--timeout",
            "120",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, **ENV},
    )


def start_dp_workers(count: int, ready_dir: Path) -> list[subprocess.Popen]:
    """`count` solo dp workers (this file run with --dp-worker), each staging every dataset first;
    returns once each has written its ready file (it is then consuming, or about to)."""
    for stale in ready_dir.glob("dp*"):
        stale.unlink()
    env = {**os.environ, **ENV, VAR_DIR_VAR: ENV["CLEARINGHOUSE_VAR_DIR"]}
    workers = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--dp-worker", f"dp{n}", str(ready_dir)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,  # Celery's shutdown notice; errors go to stderr
        )
        for n in range(count)
    ]
    deadline = time.monotonic() + 600
    while sum((ready_dir / f"dp{n}").exists() for n in range(count)) < count:
        if any(w.poll() is not None for w in workers):
            stop(workers)
            raise RuntimeError("a dp worker exited during its start")
        if time.monotonic() > deadline:
            stop(workers)
            raise RuntimeError("the dp workers did not start in time")
        time.sleep(0.1)
    return workers


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def dp_worker(name: str, ready_dir: str) -> None:
    """A dp worker as in production (solo pool, `dp` queue), that first decrypts and stages every
    ready dataset version into its table cache (what a first query per dataset would do), then
    touches OpenDP once, and only then consumes."""
    import django

    django.setup()
    from django.db import connections

    from clearinghouse.datasets.models import DatasetVersion
    from clearinghouse.queries import tasks
    from clearinghouse.queries.models import PrivacyBudget
    from clearinghouse.queries.services import query_schema

    versions = DatasetVersion.objects.filter(status="ready").select_related("dataset")
    for version in versions:
        budget = PrivacyBudget.objects.get(dataset_id=version.dataset_id)
        tasks.staged_data(version, query_schema(version=version, budget=budget))
    tasks._warm_up()  # the solo pool sends no worker_process_init
    connections.close_all()
    from celery import signals

    @signals.worker_ready.connect(weak=False)
    def _ready(**_):
        (Path(ready_dir) / name).write_text(str(os.getpid()))

    from celery.__main__ import main as celery_main

    sys.argv = [
        "celery",
        "-A",
        "clearinghouse",
        "worker",
        "-Q",
        "dp",
        "--pool",
        "solo",
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "WARNING",
    ]
    sys.argv.insert(1, "--quiet")  # no banner in the benchmark's output
    celery_main()


# --------------------------------------------------------------------------- load


@dataclasses.dataclass
class PhaseResult:
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: Counter
    cpu: dict[str, float]
    warmup_errors: Counter
    late: list[float]  # ms of the requests that finished after the window (uncounted)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def p(self, q: float) -> float:
        return pct(self.latencies_ms, q) if self.latencies_ms else float("nan")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


_epsilons = itertools.count(1)


def release_request(http, analyst: Analyst) -> tuple[bool, str]:
    epsilon = 0.01 + next(_epsilons) * 1e-9  # distinct per request: every release is priced and paid
    response = http.post(
        f"/api/v1/datasets/{analyst.dataset_path}/queries",
        json={"sql": RELEASE_SQL, "privacy": {"epsilon": epsilon}},
    )
    if response.status_code != 200:
        return False, str(response.status_code)
    body = response.json()
    if body.get("replayed") or body.get("status") != "released":
        return False, f"200 {'replayed' if body.get('replayed') else body.get('status')}"
    return True, ""


def preview_request(http, analyst: Analyst) -> tuple[bool, str]:
    response = http.post(
        f"/api/v1/datasets/{analyst.dataset_path}/queries/preview",
        json={"sql": PREVIEW_SQL, "privacy": {"epsilon": 1.0}},
    )
    if response.status_code != 200:
        return False, str(response.status_code)
    return ("cost" in response.json()), "200 without cost"


class CpuMeter:
    """Cores busy, on average, between `start` and `stop`: per group of processes (each process, with
    its descendants, counted in the first group that finds it; `reaped`: the CPU of children the
    process already waited for counts too, as PostgreSQL's per-connection backends), and the whole
    machine's (psutil.cpu_times: what else ran beside the benchmark shows there)."""

    def __init__(self, groups: dict[str, tuple[Callable[[], list], bool]]) -> None:
        self.groups = groups

    def _sample(self) -> tuple[dict[int, tuple[str, float]], float]:
        import psutil

        seen: dict[int, tuple[str, float]] = {}
        for group, (roots, reaped) in self.groups.items():
            for root in roots():
                try:
                    for n, proc in enumerate([root, *root.children(recursive=True)]):
                        if proc.pid in seen:
                            continue
                        times = proc.cpu_times()
                        cpu = times.user + times.system
                        if reaped and n == 0:
                            cpu += times.children_user + times.children_system
                        seen[proc.pid] = (group, cpu)
                except psutil.Error:
                    continue
        machine = psutil.cpu_times()
        return seen, machine.user + machine.system + machine.nice + getattr(machine, "steal", 0.0)

    def start(self) -> None:
        self.before, self.machine_before = self._sample()
        self.started = time.monotonic()

    def stop(self) -> dict[str, float]:
        (after, machine), elapsed = self._sample(), time.monotonic() - self.started
        used: Counter = Counter()
        for pid, (group, cpu) in after.items():
            used[group] += cpu - self.before.get(pid, (group, 0.0))[1]
        busy = {group: used[group] / elapsed for group in self.groups}
        busy["machine, all processes"] = (machine - self.machine_before) / elapsed
        return busy


def run_phase(
    *, base_url: str, analysts: list[Analyst], send, warmup: float, seconds: float, meter: CpuMeter
) -> PhaseResult:
    """Every analyst sends back to back for warmup + seconds; the requests that finish inside the
    measured window count (their latency, and their errors by status); errors in the warm-up, and the
    requests still running when the window closes, are counted apart."""
    start_at = time.monotonic() + 0.5
    window = (start_at + warmup, start_at + warmup + seconds)
    outcomes: list[tuple[float, float, bool, str]] = []  # (began, ended, ok, why); list.append is atomic

    def client(analyst: Analyst) -> None:
        with analyst_client(base_url, analyst) as http:
            time.sleep(max(0.0, start_at - time.monotonic()))
            while (began := time.monotonic()) < window[1]:
                ok, why = attempt(send, http, analyst)
                outcomes.append((began, time.monotonic(), ok, why))

    threads = [threading.Thread(target=client, args=(a,), daemon=True) for a in analysts]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, window[0] - time.monotonic()))
    meter.start()
    time.sleep(max(0.0, window[1] - time.monotonic()))
    cpu = meter.stop()
    for thread in threads:
        thread.join(timeout=180)
    inside = [o for o in outcomes if window[0] <= o[1] <= window[1]]
    return PhaseResult(
        requests=sum(ok for _, _, ok, _ in inside),
        seconds=seconds,
        latencies_ms=[(end - began) * 1000 for began, end, ok, _ in inside if ok],
        errors=Counter(why for _, _, ok, why in inside if not ok),
        cpu=cpu,
        warmup_errors=Counter(why for _, end, ok, why in outcomes if not ok and end < window[0]),
        late=[(end - began) * 1000 for began, end, _, _ in outcomes if end > window[1]],
    )


def analyst_client(base_url: str, analyst: Analyst):
    import httpx

    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {analyst.token}"}, timeout=120)


def attempt(send, http, analyst: Analyst) -> tuple[bool, str]:
    import httpx

    try:
        return send(http, analyst)
    except httpx.HTTPError as exc:
        return False, exc.__class__.__name__


def cold_start(base_url: str, analysts: list[Analyst]) -> str:
    """One preview per analyst, all at once, on the freshly started web processes: what a burst
    right after a (re)start meets. Then the web processes are warm for the phases."""
    results: list[tuple[bool, str, float]] = []

    def one(analyst: Analyst) -> None:
        with analyst_client(base_url, analyst) as http:
            began = time.monotonic()
            ok, why = attempt(preview_request, http, analyst)
            results.append((ok, why, (time.monotonic() - began) * 1000))

    threads = [threading.Thread(target=one, args=(a,)) for a in analysts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    failed = Counter(why for ok, why, _ in results if not ok)
    slowest = max((ms for _, _, ms in results), default=float("nan"))
    return f"{len(results) - sum(failed.values())}/{len(results)} ok, slowest {slowest:.0f} ms" + (
        f", failed {dict(failed)}" if failed else ""
    )


def describe(result: PhaseResult, unit: str) -> str:
    errors = sum(result.errors.values())
    detail = f" {dict(result.errors)}" if errors else ""
    cpu = ", ".join(f"{group} {cores:.2f}" for group, cores in result.cpu.items())
    per_request = ", ".join(
        f"{group} {cores * 1000 / result.rate:.1f}"
        for group, cores in result.cpu.items()
        if result.rate and not group.startswith("machine")
    )
    text = (
        f"{result.rate:7.1f} {unit}/s  p50 {result.p(50):7.1f} ms  p95 {result.p(95):7.1f} ms  "
        f"max {max(result.latencies_ms, default=float('nan')):7.1f} ms  errors {errors}{detail}\n"
        f"      CPU cores busy (avg over the window): {cpu}\n"
        f"      CPU ms per {unit[:-1]}: {per_request}"
    )
    if result.warmup_errors:
        text += f"\n      errors in the warm-up: {dict(result.warmup_errors)}"
    if result.late and max(result.late) > 2 * max(result.latencies_ms, default=0.0):
        text += f"\n      still running when the window closed: {len(result.late)}, slowest {max(result.late):.0f} ms"
    return text


def wait_for_web(base_url: str, token: str, web: subprocess.Popen) -> None:
    import httpx

    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
        for _ in range(300):
            if web.poll() is not None:
                raise RuntimeError("gunicorn exited during its start")
            try:
                if http.get("/api/v1/me").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not answer in time")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20, help="concurrent analysts (threads)")
    parser.add_argument("--orgs", type=int, default=4, help="analyst organisations")
    parser.add_argument("--datasets", type=int, default=4, help="datasets (owned by up to 4 organisations)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows per dataset (PUMS resampled)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each phase")
    parser.add_argument("--workers", default="1,2,4", help="dp worker pool sizes for the scaling phase")
    parser.add_argument("--base-workers", type=int, default=1, help="dp workers for phases 1 and 2")
    parser.add_argument("--web-workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--web-threads", type=int, default=8, help="gunicorn threads per worker (gthread)")
    args = parser.parse_args()
    pool_sizes = [int(n) for n in args.workers.split(",") if n.strip()]
    if args.clients < 1 or args.orgs < 1 or args.datasets < 1 or min(pool_sizes, default=0) < 1:
        parser.error("clients, orgs, datasets and worker counts must be at least 1")

    import psutil

    logging.getLogger("httpx").setLevel(logging.WARNING)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {os.cpu_count()} CPUs ({affinity} usable by this process)")
    print(
        f"setup: {args.clients} analysts in {args.orgs} organisations, {args.datasets} datasets of "
        f"PUMS resampled to {args.rows:,} rows; gunicorn gthread {args.web_workers}x{args.web_threads}"
    )
    if args.datasets > 4:
        print("  note: a dp worker caches 4 staged tables: more datasets than that evict and re-decrypt")

    create_database()
    flush_redis()
    started = time.perf_counter()
    analysts = setup(clients=args.clients, orgs=args.orgs, datasets=args.datasets, rows=args.rows)
    print(f"  setup took {time.perf_counter() - started:.1f} s")

    ready_dir = Path(ENV["CLEARINGHOUSE_VAR_DIR"]) / "ready"
    ready_dir.mkdir(exist_ok=True)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    web: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = []

    def procs(processes: Callable[[], list[subprocess.Popen]]) -> Callable[[], list]:
        def roots() -> list:
            found = []
            for p in processes():
                try:
                    found.append(psutil.Process(p.pid))
                except psutil.Error:
                    pass
            return found

        return roots

    def postmaster() -> list:
        """PostgreSQL's postmaster: the whole server, every database (other users' too)."""
        for proc in psutil.process_iter(["name"]):
            try:
                if proc.info["name"] == "postgres" and proc.parent().name() != "postgres":
                    return [proc]
            except psutil.Error:
                continue
        return []

    meter = CpuMeter(
        {
            "web": (procs(lambda: [web] if web else []), False),
            "dp workers": (procs(lambda: workers), False),
            "postgres (whole server)": (postmaster, True),
            "clients": (lambda: [psutil.Process()], False),  # this process; its children are counted above
        }
    )

    def restart_workers(pool: int) -> None:
        nonlocal workers
        stop(workers)
        workers = []
        started = time.perf_counter()
        workers = start_dp_workers(pool, ready_dir)
        print(
            f"   ({pool} dp worker(s) started, each staged {args.datasets} datasets: "
            f"{time.perf_counter() - started:.1f} s)"
        )

    def phase(send) -> PhaseResult:
        return run_phase(
            base_url=base_url,
            analysts=analysts,
            send=send,
            warmup=args.warmup,
            seconds=args.seconds,
            meter=meter,
        )

    try:
        web = start_web(port, args.web_workers, args.web_threads)
        wait_for_web(base_url, analysts[0].token, web)
        restart_workers(args.base_workers)
        cold = cold_start(base_url, analysts)
        print(f"\ncold web: one preview per client at once, first use of each web process: {cold}")
        print(
            f"\n1. previews ({PREVIEW_SQL!r}), {args.clients} clients, {args.base_workers} dp worker(s), "
            f"{args.seconds:g} s after {args.warmup:g} s warm-up:"
        )
        print("   " + describe(phase(preview_request), "previews"))
        print(
            f"\n2. releases ({RELEASE_SQL!r}, distinct ε), {args.clients} clients over {args.datasets} "
            f"datasets, {args.base_workers} dp worker(s):"
        )
        print("   " + describe(phase(release_request), "releases"))
        print(
            f"\n3. releases vs dp worker processes (solo pool each), {args.clients} clients, {args.datasets} datasets:"
        )
        table = []
        for pool in pool_sizes:
            restart_workers(pool)
            result = phase(release_request)
            print("   " + describe(result, "releases"))
            table.append((pool, result))
        print(f"\n   {'workers':>7}  {'releases/s':>10}  {'p50 ms':>8}  {'p95 ms':>8}  {'errors':>6}")
        for pool, result in table:
            print(
                f"   {pool:>7}  {result.rate:>10.1f}  {result.p(50):>8.1f}  {result.p(95):>8.1f}  "
                f"{sum(result.errors.values()):>6}"
            )
    finally:
        stop([*([web] if web else []), *workers])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--dp-worker"]:
        dp_worker(sys.argv[2], sys.argv[3])
    else:
        main()
