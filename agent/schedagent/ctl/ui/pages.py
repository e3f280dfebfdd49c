"""The console's pages: each reads the cluster and renders a template, or acts and redirects."""

from __future__ import annotations

import dataclasses
import urllib.parse
import uuid
from typing import Any

import jinja2

from schedagent.core import rollout, tail
from schedagent.core.fleet import GROUP_ID_RE
from schedagent.core.model import FINAL_STATES, JobState
from schedagent.ctl.client import ApiError, Record, field
from schedagent.ctl.ui.console import Cluster
from schedagent.ctl.ui.forms import PAGE_SIZE, SCAN_LIMIT, SUBMIT_FIELDS, JobFilter, spec_from_form
from schedagent.ctl.ui.http import HttpError, Request, Response, Router, json_response, redirect
from schedagent.errors import SpecError

JOB_ID = r"(?P<job>[0-9a-f]{20})"
SCHEDULE_NAME = r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})"
GROUP_ID = r"(?P<group>g-[0-9a-f]{20})"


async def find_jobs(cluster: Cluster, wanted: JobFilter) -> tuple[list[Record], str | None]:
    """A page of jobs the filter matches, newest first, and the id the next page starts
    after (None at the end of the history)."""
    found: list[Record] = []
    before, scanned = wanted.before, 0
    while scanned < SCAN_LIMIT:
        reply = await cluster.list_jobs(wanted.state, PAGE_SIZE, before)
        batch: list[Record] = field(reply, "jobs", list)
        for job in batch:
            before, scanned = str(job.get("id")), scanned + 1
            if wanted.matches(job):
                found.append(job)
                if len(found) == PAGE_SIZE:
                    return found, before
        # A full reply has `next` null too: only a short one without `next` is the end.
        if not batch or (len(batch) < PAGE_SIZE and not reply.get("next")):
            return found, None
    return found, before


def group_of(job: Record) -> str | None:
    """The id of the fleet run a job is a part of, if it is one (a well-formed id only:
    it goes into a link)."""
    origin = (job.get("spec") or {}).get("fleet")
    group = origin.get("group") if isinstance(origin, dict) else None
    return group if isinstance(group, str) and GROUP_ID_RE.match(group) else None


def output_from_record(job: Record) -> tuple[list[tuple[str, str]], str]:
    """The output tail the record keeps, for a job whose stream output has expired."""
    if not tail.is_text(job):
        size = len(tail.output_bytes(job))
        return [], f"Output tail: {size} bytes, not UTF-8 text (schedctl logs writes them)."
    text = str(job.get("output_tail") or "")
    return ([("stdout", text)] if text else []), "The stream no longer holds this output: its tail."


@dataclasses.dataclass
class Pages:
    cluster: Cluster
    templates: jinja2.Environment
    csrf_token: str
    cluster_name: str = ""

    def router(self) -> Router:
        router = Router()
        router.add("GET", "/", self.home)
        router.add("GET", "/nodes", self.nodes)
        router.add("GET", "/jobs", self.jobs)
        router.add("GET", f"/jobs/{JOB_ID}", self.job)
        router.add("GET", f"/jobs/{JOB_ID}/output", self.job_output)
        router.add("POST", f"/jobs/{JOB_ID}/cancel", self.cancel)
        router.add("GET", "/submit", self.submit_form)
        router.add("POST", "/submit", self.submit)
        router.add("GET", "/schedules", self.schedules)
        router.add("GET", f"/schedules/{SCHEDULE_NAME}", self.schedule)
        router.add("POST", f"/schedules/{SCHEDULE_NAME}/(?P<action>pause|resume)", self.act)
        router.add("GET", "/fleet", self.fleet_runs)
        router.add("GET", f"/fleet/{GROUP_ID}", self.fleet)
        router.add("POST", f"/fleet/{GROUP_ID}/cancel", self.fleet_cancel)
        return router

    def render(self, request: Request, template: str, status: int = 200, **values: Any) -> Response:
        page = self.templates.get_template(template).render(
            csrf=self.csrf_token,
            cluster_name=self.cluster_name,
            active="/" + request.path.split("/")[1],
            **values,
        )
        return Response(status, page.encode())

    async def home(self, request: Request) -> Response:
        return redirect("/jobs")

    async def nodes(self, request: Request) -> Response:
        found = sorted(await self.cluster.nodes(), key=lambda n: str(n.get("name")))
        return self.render(request, "nodes.html", nodes=found, leader=await self.cluster.leader())

    async def jobs(self, request: Request) -> Response:
        wanted = JobFilter.from_query(request.query)
        found, older = await find_jobs(self.cluster, wanted)
        return self.render(
            request,
            "jobs.html",
            jobs=found,
            filter=wanted,
            states=[s.value for s in JobState],
            final=FINAL_STATES,
            first_query=urllib.parse.urlencode(wanted.query(None)),
            older_query=urllib.parse.urlencode(wanted.query(older)) if older else "",
        )

    async def job(self, request: Request) -> Response:
        job_id = request.params["job"]
        reply = await self.cluster.get(job_id)
        record: Record = field(reply, "job", dict)
        output = await self.cluster.output(job_id, 0)
        chunks, note = output.chunks, ""
        if output.cut:
            note = "Older output is not shown (schedctl logs prints all of it)."
        if not chunks and record.get("output_tail"):
            chunks, note = output_from_record(record)
        return self.render(
            request,
            "job.html",
            job=record,
            spec=record.get("spec") or {},
            attempts=[a for a in record.get("attempts") or [] if isinstance(a, dict)],
            pending_reason=reply.get("pending_reason"),
            is_final=record.get("state") in FINAL_STATES,
            chunks=chunks,
            next_seq=output.next_seq,
            output_note=note,
            group=group_of(record),
        )

    async def job_output(self, request: Request) -> Response:
        """New output after stream sequence `after`, and the job's state, as JSON (output.js)."""
        job_id = request.params["job"]
        after = request.query.get("after", "0")
        if not after.isdigit():
            raise HttpError(400, "after must be a whole number")
        output = await self.cluster.output(job_id, int(after))
        record = field(await self.cluster.get(job_id), "job", dict)
        return json_response(
            {"chunks": output.chunks, "next": output.next_seq, "state": record.get("state")}
        )

    async def cancel(self, request: Request) -> Response:
        job_id = request.params["job"]
        await self.cluster.cancel(job_id)
        return redirect(f"/jobs/{job_id}")

    async def submit_form(self, request: Request) -> Response:
        return self._submit_page(request, {}, None)

    def _submit_page(self, request: Request, form: dict[str, str], error: str | None) -> Response:
        return self.render(
            request,
            "submit.html",
            400 if error else 200,
            form=form,
            error=error,
            idempotency_key=form.get("idempotency_key") or str(uuid.uuid4()),
            signed=self.cluster.signed,
        )

    async def submit(self, request: Request) -> Response:
        posted = request.form()
        form = {name: posted.get(name, "") for name in (*SUBMIT_FIELDS, "idempotency_key")}
        try:
            spec = spec_from_form(form)
        except SpecError as exc:
            return self._submit_page(request, form, str(exc))
        try:
            created = await self.cluster.submit(spec)
        except ApiError as exc:
            # The agents refused it (a signature, a limit): the form again, as filled in.
            return self._submit_page(request, form, str(exc))
        return redirect(f"/jobs/{created.get('id')}")

    async def schedules(self, request: Request) -> Response:
        found = await self.cluster.schedules()
        found.sort(key=lambda s: str((s.get("definition") or {}).get("name")))
        return self.render(request, "schedules.html", schedules=found)

    async def schedule(self, request: Request) -> Response:
        reply = await self.cluster.schedule(request.params["name"])
        found: Record = field(reply, "schedule", dict)
        return self.render(
            request,
            "schedule.html",
            reply=reply,
            schedule=found,
            d=found.get("definition") or {},
            recent=[e for e in reply.get("recent") or [] if isinstance(e, dict)],
        )

    async def act(self, request: Request) -> Response:
        name = request.params["name"]
        await self.cluster.schedule_action(request.params["action"], name)
        return redirect(f"/schedules/{name}")

    async def fleet_runs(self, request: Request) -> Response:
        before = request.query.get("before") or None
        if before is not None and not GROUP_ID_RE.match(before):
            raise HttpError(400, "before must be a fleet run id (g- and 20 hex digits)")
        reply = await self.cluster.fleet_list(PAGE_SIZE, before)
        runs = [r for r in field(reply, "runs", list) if isinstance(r, dict)]
        older = reply.get("next")
        return self.render(
            request,
            "fleets.html",
            runs=runs,
            before=before,
            older=older if isinstance(older, str) and GROUP_ID_RE.match(older) else None,
        )

    async def fleet(self, request: Request) -> Response:
        reply = await self.cluster.fleet_get(request.params["group"])
        group: Record = field(reply, "group", dict)
        counts = field(reply, "counts", dict)
        return self.render(
            request,
            "fleet.html",
            group=group,
            d=group.get("definition") or {},
            hosts=[h for h in field(reply, "hosts", list) if isinstance(h, dict)],
            summary=rollout.summary({str(k): int(v) for k, v in counts.items()}),
        )

    async def fleet_cancel(self, request: Request) -> Response:
        group_id = request.params["group"]
        await self.cluster.fleet_cancel(group_id)
        return redirect(f"/fleet/{group_id}")
