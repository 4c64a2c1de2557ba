"""A small client of the Clearinghouse REST API (/api/v1/), for analysts' scripts and notebooks.

    from clearinghouse_client import Client

    client = Client("https://clearinghouse.example.org", "chp_...")
    release = client.query("org-a/pums", sql="SELECT educ, COUNT(*) FROM pums GROUP BY educ",
                           privacy={"epsilon": 0.5})
    for row in release.table():
        print(row)            # {"educ": "1", "count": 12, "count_lo": 8.1, "count_hi": 15.9}
    release.to_csv("counts.csv")

Annotation projects, for whoever leads the labelling of an organisation's own text dataset:

    project = client.annotation_project_create("org-a/sms", name="Spam", text_column="text",
                                               labels=["ham", "spam"], annotators=["alice", "bob"])
    answer = client.annotation_next(project["id"])   # {"item": {"id", "row", "text", "proposal", ...}}
    client.annotation_label(project["id"], answer["item"]["id"], "spam")
    run = client.annotation_model_run(project["id"], wait=True)      # proposals, most uncertain first
    client.annotation_project_update(project["id"], target_precision=0.98, confidence_level=0.95)
    run = client.annotation_model_run(project["id"], wait=True)      # ... and the threshold for it
    print(run["threshold"], run["precision_lower_bound"], run["coverage"])
    client.annotation_automatic(project["id"], run["id"])           # {"labelled": 4870}
    client.annotation_export(project["id"], "SMS labelled", drop_duplicates=True, wait=True)

Every failure (an error answer of the service, or no answer at all) raises `ClearinghouseError`.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterator
from typing import Any, Self

import httpx

__all__ = ["ClearinghouseError", "Client", "Release", "parse_ref"]

API = "/api/v1"
_FINAL = {"released", "refused", "failed"}
_DONE = {"succeeded", "failed"}  # a model run's or an export's final states


class ClearinghouseError(Exception):
    """An error answer of the service (`status` is its HTTP status, `code` and `detail` its body), or a
    local failure such as an unreachable service (`status` 0)."""

    def __init__(self, status: int, code: str, detail: str, fields: dict | None = None):
        super().__init__(f"{code}: {detail}" if status == 0 else f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.fields = fields or {}

    def __repr__(self) -> str:
        return f"ClearinghouseError(status={self.status!r}, code={self.code!r}, detail={self.detail!r})"


def parse_ref(ref: str) -> tuple[str, str]:
    """'org/slug' → ('org', 'slug')."""
    parts = str(ref).strip().strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise ClearinghouseError(0, "invalid_ref", f"a dataset is named ORGANISATION/SLUG, not {ref!r}")
    return parts[0], parts[1]


class Release:
    """A query as the service describes it (`raw`), with its released result as a table.

    `table()` has one dict per result row: the group-by keys, then for every aggregate `<agg>` (the
    noisy value), `<agg>_lo` and `<agg>_hi` (its 95% interval; None where the service gives none)."""

    def __init__(self, body: dict[str, Any]):
        self.raw = body

    # the query
    id = property(lambda self: self.raw.get("id"))
    url = property(lambda self: self.raw.get("url"))
    status = property(lambda self: self.raw.get("status"))
    dataset = property(lambda self: self.raw.get("dataset"))
    replayed = property(lambda self: bool(self.raw.get("replayed")))
    cost = property(lambda self: self.raw.get("cost") or {})
    result = property(lambda self: self.raw.get("result"))
    error = property(lambda self: self.raw.get("error"))

    @property
    def released(self) -> bool:
        return self.status == "released" and self.result is not None

    # the result
    @property
    def group_by(self) -> list[str]:
        return list((self.result or {}).get("group_by") or [])

    @property
    def aggregates(self) -> list[str]:
        """The aggregates' names, in the order of the result's columns."""
        result = self.result or {}
        group_by = set(self.group_by)
        return [c for c in result.get("columns") or [] if c not in group_by]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list((self.result or {}).get("rows") or [])

    @property
    def intervals(self) -> list[dict[str, list[float]]]:
        return list((self.result or {}).get("intervals") or [])

    def columns(self) -> list[str]:
        """The table's header: group keys, then `<agg>, <agg>_lo, <agg>_hi` per aggregate."""
        out = list(self.group_by)
        for name in self.aggregates:
            out += [name, f"{name}_lo", f"{name}_hi"]
        return out

    def table(self) -> list[dict[str, Any]]:
        self._require_released()
        table = []
        intervals = self.intervals
        for i, row in enumerate(self.rows):
            interval = intervals[i] if i < len(intervals) else {}
            record = {g: row.get(g) for g in self.group_by}
            for name in self.aggregates:
                lo, hi = (interval.get(name) or (None, None))[:2]
                record[name] = row.get(name)
                record[f"{name}_lo"] = lo
                record[f"{name}_hi"] = hi
            table.append(record)
        return table

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.table())

    def __len__(self) -> int:
        return len(self.rows)

    def to_csv(self, path_or_file: Any) -> None:
        """Writes the table as CSV (header `columns()`) to a path or an open text file."""
        table = self.table()
        if hasattr(path_or_file, "write"):
            self._write_csv(path_or_file, table)
            return
        with open(os.fspath(path_or_file), "w", newline="", encoding="utf-8") as handle:
            self._write_csv(handle, table)

    def to_csv_string(self) -> str:
        buffer = io.StringIO()
        self.to_csv(buffer)
        return buffer.getvalue()

    def _write_csv(self, handle, table) -> None:
        writer = csv.DictWriter(handle, fieldnames=self.columns(), lineterminator="\n")
        writer.writeheader()
        for record in table:
            writer.writerow({k: "" if v is None else v for k, v in record.items()})

    def _require_released(self) -> None:
        if not self.released:
            raise ClearinghouseError(0, "not_released", f"query {self.id} is {self.status}, not released")

    def __repr__(self) -> str:
        return f"<Release id={self.id} status={self.status} rows={len(self.rows)} replayed={self.replayed}>"


class Client:
    """The Clearinghouse API with an API token (`chp_...`)."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 60, transport: Any = None):
        if not base_url:
            raise ClearinghouseError(
                0, "no_url", "give the service's URL (e.g. https://clearinghouse.example.org)"
            )
        if not token:
            raise ClearinghouseError(0, "no_token", "give an API token (create one in the portal)")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        kwargs = {"transport": transport} if transport is not None else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            follow_redirects=False,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": "clearinghouse-client/0.1",
            },
            **kwargs,
        )

    # plumbing
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:  # never the token
        return f"<Client {self.base_url}>"

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        url = (
            path
            if path.startswith(("http://", "https://"))
            else (path if path.startswith(API) else API + path)
        )
        try:
            response = self._http.request(
                method,
                url,
                json=json,
                params=params,
                timeout=timeout if timeout is not None else self.timeout,
            )
        except httpx.TimeoutException:
            raise ClearinghouseError(0, "timeout", f"no answer from {self.base_url} in time") from None
        except httpx.HTTPError as exc:
            raise ClearinghouseError(0, "connection_error", f"cannot reach {self.base_url}: {exc}") from None
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = None
        if response.status_code >= 400:
            if isinstance(body, dict) and "code" in body:
                raise ClearinghouseError(
                    response.status_code, str(body["code"]), str(body.get("detail", "")), body.get("fields")
                )
            text = response.text.strip()[:200] or response.reason_phrase
            raise ClearinghouseError(response.status_code, f"http_{response.status_code}", text)
        if body is None and response.content:
            raise ClearinghouseError(
                response.status_code,
                "invalid_response",
                f"expected JSON from {url}, got {response.headers.get('content-type')}",
            )
        return response.status_code, body

    def _get(self, path: str, **params) -> Any:
        return self._request("GET", path, params=params or None)[1]

    @staticmethod
    def _dataset_path(ref: str) -> str:
        organisation, slug = parse_ref(ref)
        return f"/datasets/{organisation}/{slug}"

    @staticmethod
    def _query_body(sql: str | None, spec: dict | None, privacy: dict | None) -> dict:
        if (sql is None) == (spec is None):
            raise ClearinghouseError(0, "invalid_query", "give either sql or spec")
        if sql is not None:
            return {"sql": sql, "privacy": privacy}
        if privacy is not None:  # the service reads a spec's privacy loss from inside the spec
            spec = {**spec, "privacy": privacy}
        return {"spec": spec}

    # accounts and datasets
    def me(self) -> dict:
        return self._get("/me")

    def _every_page(self, path: str) -> list[dict]:
        """Every item of a list of the API (each answers one page: count, next, previous, results)."""
        out: list[dict] = []
        page = self._get(path)
        seen = 0
        while True:
            out.extend(page.get("results") or [])
            following = page.get("next")
            seen += 1
            if not following or seen > 10_000:
                return out
            # Only the next page's query (limit/offset) is taken from `next`: its scheme and host are
            # the service's own view of itself, which behind a proxy need not be `base_url`'s.
            page = self._request("GET", path, params=dict(httpx.URL(following).params))[1]

    def datasets(self) -> list[dict]:
        """Every dataset the token's user may see, following the pagination."""
        return self._every_page("/datasets")

    def dataset(self, ref: str) -> dict:
        return self._get(self._dataset_path(ref))

    def budget(self, ref: str) -> dict:
        return self._get(self._dataset_path(ref) + "/budget")

    def agreement(self, ref: str) -> dict:
        return self._get(self._dataset_path(ref) + "/agreement")

    def accept_agreement(self, ref: str, version: int) -> dict:
        return self._request(
            "POST", self._dataset_path(ref) + "/agreement/accept", json={"version": int(version)}
        )[1]

    # queries
    def preview(
        self, ref: str, *, sql: str | None = None, spec: dict | None = None, privacy: dict | None = None
    ) -> dict:
        """What a query would cost and how noisy it would be; spends nothing."""
        return self._request(
            "POST", self._dataset_path(ref) + "/queries/preview", json=self._query_body(sql, spec, privacy)
        )[1]

    def plan(
        self,
        ref: str,
        *,
        sql: str | None = None,
        spec: dict | None = None,
        target: float | None = None,
        privacy: dict | None = None,
        curve: bool = False,
        levels: list[float] | None = None,
    ) -> dict:
        """Plans a query by accuracy; spends nothing. With `target` (a 95% half-width), the least ε (ρ
        under zCDP) at which every count and sum meets it, as `level`, with the `preview` at that level
        (and its `warnings`); with `curve` (or `levels`), the half-widths at several levels as `curve`.
        Give no ε/ρ with a target (`privacy` may carry δ)."""
        body = self._query_body(sql, spec, privacy)
        if body.get("privacy", {}) is None:
            del body["privacy"]
        body["target_half_width"] = target
        body["curve"] = bool(curve)
        if levels is not None:
            body["levels"] = list(levels)
        return self._request("POST", self._dataset_path(ref) + "/queries/plan", json=body)[1]

    def query(
        self,
        ref: str,
        *,
        sql: str | None = None,
        spec: dict | None = None,
        privacy: dict | None = None,
        wait: float = 30,
    ) -> Release:
        """Releases a query (an identical earlier one is replayed at no cost) and waits up to `wait`
        seconds for the result. Returns the `Release` (check `.released`: it is still pending when the
        wait ran out; `get_query(release.id)` later); raises `ClearinghouseError` when it failed."""
        wait = max(0.0, float(wait or 0))
        deadline = time.monotonic() + wait
        server_wait = min(wait, max(0.0, self.timeout - 5))
        _, body = self._request(
            "POST",
            self._dataset_path(ref) + "/queries",
            json=self._query_body(sql, spec, privacy),
            params={"wait": f"{server_wait:g}"},
        )
        release = Release(body)
        replayed = release.replayed
        pause = 0.25
        while release.status not in _FINAL and time.monotonic() < deadline:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, 2.0)
            release = Release(self._request("GET", release.url or f"/queries/{release.id}")[1])
        release.raw["replayed"] = replayed or release.replayed
        return self._checked(release)

    def get_query(self, query_id: int) -> Release:
        return self._checked(Release(self._get(f"/queries/{int(query_id)}")))

    @staticmethod
    def _checked(release: Release) -> Release:
        if release.status in {"refused", "failed"}:
            error = release.error or {}
            raise ClearinghouseError(
                0, error.get("code") or "query_failed", error.get("detail") or f"query {release.id} failed"
            )
        return release

    def history(self, ref: str) -> list[Release]:
        """The queries of your organisation on the dataset (owners: everyone's), newest first."""
        return [Release(body) for body in self._every_page(self._dataset_path(ref) + "/queries")]

    # annotation projects (labelling an organisation's own text dataset, with a model's help)
    @staticmethod
    def _project_path(project_id: int) -> str:
        return f"/annotation/projects/{int(project_id)}"

    @staticmethod
    def _wait_for(fetch, body: dict, *, timeout: float, what: str) -> dict:
        """Polls (`fetch()`) a model run or an export until it ends or `timeout` seconds pass; raises
        `ClearinghouseError` when it failed, returns it (still queued or running) when time ran out."""
        deadline = time.monotonic() + max(0.0, float(timeout or 0))
        pause = 0.25
        while body.get("status") not in _DONE and time.monotonic() < deadline:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, 2.0)
            body = fetch()
        if body.get("status") == "failed":
            raise ClearinghouseError(
                0,
                body.get("error_code") or f"{what}_failed",
                f"{what.replace('_', ' ')} {body.get('id')} failed",
            )
        return body

    def annotation_projects(self) -> list[dict]:
        """The annotation projects you manage or label for, following the pagination."""
        return self._every_page("/annotation/projects")

    def annotation_project(self, project_id: int) -> dict:
        """A project with its `progress` (total, done, auto, remaining, kappa, per_label, ...)."""
        return self._get(self._project_path(project_id))

    def annotation_project_create(
        self,
        dataset: str,
        name: str,
        text_column: str,
        labels: list[str],
        instructions: str = "",
        overlap: float | None = None,
        annotators: list[str] | None = None,
        version: int | None = None,
        slug: str | None = None,
    ) -> dict:
        """A project on your organisation's dataset (`org/slug` or `slug`) whose items are the rows of
        its ready version (`version`, else the latest); `annotators` are usernames of your organisation,
        `overlap` the share of items labelled by two of them. The items are prepared in a worker: the
        project's `status` is `preparing` until then."""
        if isinstance(labels, str):
            labels = [label.strip() for label in labels.split(",") if label.strip()]
        body: dict[str, Any] = {
            "dataset": str(dataset).strip().strip("/"),
            "name": name,
            "text_column": text_column,
            "labels": list(labels),
            "instructions": instructions or "",
        }
        if overlap is not None:
            body["overlap"] = float(overlap)
        if annotators is not None:
            body["annotators"] = list(annotators)
        if version is not None:
            body["version"] = int(version)
        if slug:
            body["slug"] = slug
        return self._request("POST", "/annotation/projects", json=body)[1]

    _PROJECT_FIELDS = frozenset({"instructions", "annotators", "target_precision", "confidence_level"})

    def annotation_project_update(self, project_id: int, **fields) -> dict:
        """Changes `instructions`, `annotators` (usernames), `target_precision` (in (0, 1): the precision
        automatic labelling must reach) and `confidence_level` (of that precision's lower bound)."""
        unknown = sorted(set(fields) - self._PROJECT_FIELDS)
        if unknown:
            raise ClearinghouseError(
                0,
                "invalid_arguments",
                f"a project has no field {', '.join(unknown)} to change "
                f"(only {', '.join(sorted(self._PROJECT_FIELDS))})",
            )
        return self._request("PATCH", self._project_path(project_id), json=fields)[1]

    def annotation_archive(self, project_id: int) -> dict:
        return self._request("POST", self._project_path(project_id) + "/archive")[1]

    def annotation_next(self, project_id: int, review: bool = False) -> dict:
        """The next item for you: {item: {id, row, text, proposal: {label, confidence} | None, flagged,
        given_label} | None, progress}; `item` is None when your queue is empty. `review`: the items
        flagged as likely label errors instead."""
        params = {"review": "1"} if review else {}
        return self._get(self._project_path(project_id) + "/next", **params)

    def annotation_items(self, project_id: int, item_ids: list[int]) -> list[dict]:
        """Up to 50 items, with their texts."""
        ids = ",".join(str(int(i)) for i in item_ids)
        return self._get(self._project_path(project_id) + "/items", ids=ids)["items"]

    def annotation_label(self, project_id: int, item_id: int, label: str) -> dict:
        """Your label for an item (one of the project's labels): {id, item, label, source}."""
        return self._request(
            "POST", f"{self._project_path(project_id)}/items/{int(item_id)}/label", json={"label": label}
        )[1]

    def annotation_skip(self, project_id: int, item_id: int) -> None:
        self._request("POST", f"{self._project_path(project_id)}/items/{int(item_id)}/skip")

    def annotation_undo(self, project_id: int) -> dict:
        """Deletes your latest label: {item, label} (`nothing_to_undo` when there is none)."""
        return self._request("POST", self._project_path(project_id) + "/undo")[1]

    def annotation_model_runs(self, project_id: int) -> list[dict]:
        return self._every_page(self._project_path(project_id) + "/model-runs")

    def annotation_model_run_get(self, project_id: int, run_id: int) -> dict:
        return self._get(f"{self._project_path(project_id)}/model-runs/{int(run_id)}")

    def annotation_model_run(
        self,
        project_id: int,
        kind: str = "propose",
        wait: bool = False,
        timeout: float = 600,
        federated_model: int | None = None,
    ) -> dict:
        """Starts a model run in a worker: `propose` (a label and a confidence for every item, trained on
        the labels so far — or by the consortium's `federated_model` for the same label set — with the
        threshold for automatic labelling when the project has a target precision) or `review` (likely
        label errors). With `wait`, polls it for up to `timeout` seconds until it ends (raises
        `ClearinghouseError` when it failed)."""
        body: dict[str, Any] = {"kind": kind}
        if federated_model is not None:
            body["federated_model"] = int(federated_model)
        _, run = self._request("POST", self._project_path(project_id) + "/model-runs", json=body)
        if not wait:
            return run
        return self._wait_for(
            lambda: self.annotation_model_run_get(project_id, run["id"]),
            run,
            timeout=timeout,
            what="model_run",
        )

    def annotation_automatic(self, project_id: int, run_id: int) -> dict:
        """Labels by model the items without a human label whose confidence in run `run_id` reaches its
        threshold: {labelled}."""
        return self._request(
            "POST", self._project_path(project_id) + "/automatic", json={"run": int(run_id)}
        )[1]

    def annotation_duplicates(self, project_id: int) -> list[dict]:
        """Groups of exact or near duplicate items: [{group, kind, item_ids, labels, conflicting}]."""
        return self._every_page(self._project_path(project_id) + "/duplicates")

    def annotation_review(self, project_id: int) -> list[dict]:
        """The items flagged as likely label errors (no texts), most likely first."""
        return self._every_page(self._project_path(project_id) + "/review")

    def annotation_exports(self, project_id: int) -> list[dict]:
        return self._every_page(self._project_path(project_id) + "/exports")

    def annotation_export_get(self, project_id: int, export_id: int) -> dict:
        return self._get(f"{self._project_path(project_id)}/exports/{int(export_id)}")

    def annotation_export(
        self,
        project_id: int,
        name: str,
        slug: str = "",
        label_column: str = "",
        drop_duplicates: bool = False,
        drop_conflicts: bool = True,
        include_model_labels: bool = True,
        wait: bool = False,
        timeout: float = 600,
    ) -> dict:
        """Exports the labels as a new dataset of your organisation, written by a worker: the source
        columns, then `label_column` (default `label`, or `annotation_label` when the data has a `label`)
        and its provenance `<label_column>_source`, `_confidence` and `_model_run`. With `wait`, polls the
        export for up to `timeout` seconds until it ends (raises `ClearinghouseError` when it failed)."""
        body: dict[str, Any] = {
            "name": name,
            "drop_duplicates": bool(drop_duplicates),
            "drop_conflicts": bool(drop_conflicts),
            "include_model_labels": bool(include_model_labels),
        }
        if slug:
            body["slug"] = slug
        if label_column:
            body["label_column"] = label_column
        _, export = self._request("POST", self._project_path(project_id) + "/exports", json=body)
        if not wait:
            return export
        return self._wait_for(
            lambda: self.annotation_export_get(project_id, export["id"]),
            export,
            timeout=timeout,
            what="export",
        )
