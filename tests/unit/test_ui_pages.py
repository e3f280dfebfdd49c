"""The web console's pages rendered against an in-memory cluster (tests/uifake.py)."""

from __future__ import annotations

import html
import json
import re
import urllib.parse
from typing import Any

import pytest

from schedagent.ctl.client import ApiError, CtlError, NoAgentError
from schedagent.ctl.ui.http import Request, Response
from schedagent.ctl.ui.server import Console
from uifake import FakeCluster, job_record

PORT = 8090
HOST = f"127.0.0.1:{PORT}"
TOKEN = "t0ken"
XSS = "<script>alert(1)</script>"
JOB = "0123456789abcdef0123"
GROUP = "g-0123456789abcdef0123"


def console(cluster: FakeCluster) -> Console:
    return Console(cluster, {"127.0.0.1", "localhost"}, "nats://test", csrf_token=TOKEN)


async def ask(
    app: Console,
    method: str,
    target: str,
    form: dict[str, str] | None = None,
    **headers: str,
) -> Response:
    url = urllib.parse.urlsplit(target)
    query = dict(urllib.parse.parse_qsl(url.query))
    body = urllib.parse.urlencode(form or {}).encode()
    sent = {"host": HOST, **{k.replace("_", "-").lower(): v for k, v in headers.items()}}
    return await app(Request(method, url.path, query, sent, body, "http", PORT))


def text(response: Response) -> str:
    return response.body.decode()


async def test_nodes_show_cpus_labels_leader_and_draining_escaped() -> None:
    cluster = FakeCluster(
        node_list=[
            {"name": "b", "cpus": 4, "used_cpus": 1.5, "labels": {"zone": XSS}, "draining": True},
            {"name": "a", "cpus": 2, "used_cpus": 0, "leader": True, "labels": {}},
        ],
        leader_record={"node": "a", "token": 7},
    )
    page = text(await ask(console(cluster), "GET", "/nodes"))
    assert "<script>" not in page
    assert html.escape(f"zone={XSS}", quote=False) in page
    assert page.index(">a") < page.index(">b")  # sorted by name
    assert "1.5 / 4" in page and "draining" in page
    assert '<strong id="leader">a</strong> (fencing token 7)' in page


async def test_jobs_filter_by_state_node_and_text_and_page_on() -> None:
    jobs = [
        job_record(
            f"{i:020x}",
            "FAILED" if i % 2 else "SUCCEEDED",
            f"echo {i}",
            node="n2" if i % 3 == 0 else "n1",
        )
        for i in range(600, 0, -1)
    ]
    cluster = FakeCluster(jobs=jobs)
    app = console(cluster)
    page = text(await ask(app, "GET", "/jobs?state=failed&node=n2&q=echo"))
    shown = re.findall(r'href="/jobs/([0-9a-f]{20})"', page)
    expected = [j["id"] for j in jobs if j["state"] == "FAILED" and j["node"] == "n2"]
    assert shown == expected[:50]
    assert {call[0] for call in cluster.list_calls} == {"FAILED"}  # the agents filter state
    older = re.search(r'id="older" href="/jobs\?([^"]+)"', page)
    assert older is not None
    page2 = text(await ask(app, "GET", "/jobs?" + html.unescape(older[1])))
    assert re.findall(r'href="/jobs/([0-9a-f]{20})"', page2) == expected[50:100]
    older2 = re.search(r'id="older" href="/jobs\?([^"]+)"', page2)
    assert older2 is not None
    page3 = text(await ask(app, "GET", "/jobs?" + html.unescape(older2[1])))
    assert "No jobs match" in page3
    assert 'id="older"' not in page3  # the end of the history
    one = text(await ask(app, "GET", f"/jobs?q={jobs[5]['id']}"))
    assert re.findall(r'href="/jobs/([0-9a-f]{20})"', one) == [jobs[5]["id"]]


async def test_a_bad_state_filter_is_a_clear_400() -> None:
    response = await ask(console(FakeCluster()), "GET", "/jobs?state=NOPE")
    assert response.status == 400
    assert "state must be one of" in text(response)


async def test_a_job_page_escapes_command_and_output_and_offers_cancel_while_running() -> None:
    attempt = {"n": 1, "node": "n1", "state": "RUNNING", "usage": {"cpu_seconds": 1.25}}
    cluster = FakeCluster(
        jobs=[job_record(JOB, "RUNNING", f"echo '{XSS}'", attempts=[attempt])],
        outputs={JOB: [("stdout", XSS + "\n"), ("stderr", "oops & <b>\n")]},
    )
    page = text(await ask(console(cluster), "GET", f"/jobs/{JOB}"))
    assert "<script>alert" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<span class="stderr">oops &amp; &lt;b&gt;' in page
    assert 'id="cancel"' in page and f'value="{TOKEN}"' in page
    assert "cpu 1.25s" in page
    assert '<script src="/static/output.js"' in page  # follows live
    assert 'http-equiv="refresh"' in page  # and without JavaScript, refreshes


async def test_a_final_job_has_no_cancel_and_stops_following() -> None:
    cluster = FakeCluster(jobs=[job_record(JOB, "SUCCEEDED", output_tail="kept tail\n")])
    page = text(await ask(console(cluster), "GET", f"/jobs/{JOB}"))
    assert 'id="cancel"' not in page and "output.js" not in page
    assert "kept tail" in page  # the stream holds nothing: the record's tail


async def test_output_json_continues_after_a_sequence() -> None:
    cluster = FakeCluster(
        jobs=[job_record(JOB, "RUNNING")], outputs={JOB: [("stdout", "a"), ("stdout", XSS)]}
    )
    response = await ask(console(cluster), "GET", f"/jobs/{JOB}/output?after=1")
    assert response.content_type == "application/json"
    assert json.loads(response.body) == {"chunks": [["stdout", XSS]], "next": 2, "state": "RUNNING"}


async def test_an_unknown_job_is_404_and_a_malformed_id_no_page() -> None:
    app = console(FakeCluster())
    missing = await ask(app, "GET", f"/jobs/{JOB}")
    assert missing.status == 404 and f"job {JOB} not found" in text(missing)
    assert (await ask(app, "GET", "/jobs/../etc/passwd")).status == 404


async def test_no_agent_is_a_503_page() -> None:
    cluster = FakeCluster(failure=NoAgentError("nats://x", 2))
    response = await ask(console(cluster), "GET", "/nodes")
    assert response.status == 503 and "no agent answered on nats://x" in text(response)


async def test_submit_makes_the_spec_the_form_describes() -> None:
    cluster = FakeCluster()
    form = {
        "csrf": TOKEN,
        "cmd": f"echo {XSS}\r\nsleep 1",
        "cpus": "0.5",
        "timeout": "30",
        "retries": "2",
        "memory": "64M",
        "labels": "zone=a\n\nrack = r1",
        "env": "A=1",
        "node": "",
        "idempotency_key": "k-1",
    }
    response = await ask(console(cluster), "POST", "/submit", form)
    assert response.status == 303
    assert response.headers["Location"] == "/jobs/" + f"{1:020x}"
    (spec,) = cluster.submitted
    assert spec == {
        "cmd": f"echo {XSS}\nsleep 1",
        "cpus": 0.5,
        "timeout": 30.0,
        "retries": 2,
        "node": None,
        "labels": {"zone": "a", "rack": "r1"},
        "env": {"A": "1"},
        "cwd": None,
        "idempotency_key": "k-1",
        "memory": 64 * 1024 * 1024,
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cmd", "", "cmd must be a non-empty string"),
        ("cpus", "many", "cpus must be a number"),
        ("cpus", "0", "cpus must be a number > 0"),
        ("retries", "1000", "retries must be an integer from 0 to 100"),
        ("labels", "nokey", "labels: expected KEY=VALUE"),
        ("memory", "lots", "memory:"),
    ],
)
async def test_a_bad_form_is_shown_again_with_the_reason_and_submits_nothing(
    field: str, value: str, message: str
) -> None:
    cluster = FakeCluster()
    form = {"csrf": TOKEN, "cmd": XSS, field: value}
    response = await ask(console(cluster), "POST", "/submit", form)
    page = text(response)
    assert response.status == 400 and message in html.unescape(page)
    assert cluster.submitted == []
    assert "<script>" not in page  # the values come back, escaped


async def test_a_submit_the_agents_refuse_shows_the_form_again_as_filled_in() -> None:
    cluster = FakeCluster(failure=ApiError("signature rejected: unknown key", "bad_request"))
    form = {"csrf": TOKEN, "cmd": "make all", "cpus": "2", "labels": "zone=a"}
    response = await ask(console(cluster), "POST", "/submit", form)
    page = text(response)
    assert response.status == 400
    assert '<p class="error" id="error">signature rejected: unknown key</p>' in page
    assert ">make all</textarea>" in page and 'value="2"' in page and ">zone=a</textarea>" in page


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"sec_fetch_site": "cross-site"},
        {"host": "evil.example:8090"},  # DNS rebinding: a name that is not this server
        {"host": "127.0.0.1:9999"},
    ],
)
async def test_a_state_change_from_another_site_is_refused(headers: dict[str, str]) -> None:
    cluster = FakeCluster(jobs=[job_record(JOB, "RUNNING")])
    app = console(cluster)
    submit = await ask(app, "POST", "/submit", {"csrf": TOKEN, "cmd": "true"}, **headers)
    cancel = await ask(app, "POST", f"/jobs/{JOB}/cancel", {"csrf": TOKEN}, **headers)
    assert (submit.status, cancel.status) == (403, 403)
    assert cluster.submitted == [] and cluster.canceled == []


@pytest.mark.parametrize("token", [None, "", "wrong"])
async def test_a_form_without_this_process_token_is_refused(token: str | None) -> None:
    cluster = FakeCluster(jobs=[job_record(JOB, "RUNNING")])
    form = {"cmd": "true"} if token is None else {"cmd": "true", "csrf": token}
    response = await ask(console(cluster), "POST", "/submit", form, origin=f"http://{HOST}")
    assert response.status == 403 and cluster.submitted == []
    assert (await ask(console(cluster), "POST", f"/jobs/{JOB}/cancel", form)).status == 403
    assert cluster.canceled == []


async def test_reading_from_another_host_name_is_refused_too() -> None:
    response = await ask(console(FakeCluster()), "GET", "/jobs", host="rebound.example:8090")
    assert response.status == 403


async def test_cancel_with_the_token_cancels_and_shows_the_job() -> None:
    cluster = FakeCluster(jobs=[job_record(JOB, "RUNNING")])
    response = await ask(
        console(cluster), "POST", f"/jobs/{JOB}/cancel", {"csrf": TOKEN}, origin=f"http://{HOST}"
    )
    assert (response.status, response.headers["Location"]) == (303, f"/jobs/{JOB}")
    assert cluster.canceled == [JOB]


async def test_schedules_list_show_and_pause() -> None:
    definition = {"name": "nightly", "cron": "0 3 * * *", "tz": "UTC", "job": {"cmd": XSS}}
    cluster = FakeCluster(schedule_list=[{"definition": definition, "paused": False}])
    app = console(cluster)
    listing = text(await ask(app, "GET", "/schedules"))
    assert 'href="/schedules/nightly"' in listing and "<script>" not in listing
    page = text(await ask(app, "GET", "/schedules/nightly"))
    assert 'action="/schedules/nightly/pause"' in page
    response = await ask(app, "POST", "/schedules/nightly/pause", {"csrf": TOKEN})
    assert response.status == 303 and cluster.actions == [("pause", "nightly")]


async def test_a_paused_schedule_offers_resume_and_lists_its_slots() -> None:
    definition = {"name": "tick", "every": 60, "job": {"cmd": "true"}, "after": ["up"]}
    cluster = FakeCluster(
        schedule_list=[{"definition": definition, "paused": True}],
        recent_slots=[
            {"slot": 1_700_000_000, "job": JOB, "state": "SUCCEEDED"},
            {"slot": 1_700_000_060, "until": 1_700_000_240, "skipped": "paused", "count": 4},
        ],
    )
    page = text(await ask(console(cluster), "GET", "/schedules/tick"))
    assert 'action="/schedules/tick/resume"' in page and ">Resume<" in page
    assert f'href="/jobs/{JOB}"' in page and "SUCCEEDED" in page
    assert "4 skipped: paused" in page
    assert 'href="/schedules/up"' in page and "every 60s" in page


async def test_every_answer_forbids_inline_scripts_and_framing() -> None:
    response = await ask(console(FakeCluster()), "GET", "/jobs")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_static_files_are_served_and_pages_work_on_a_phone() -> None:
    app = console(FakeCluster())
    css = await ask(app, "GET", "/static/ui.css")
    assert css.status == 200 and css.content_type.startswith("text/css")
    assert "@media" in text(css)
    js = await ask(app, "GET", "/static/output.js")
    assert js.status == 200 and "textContent" in text(js)
    assert (await ask(app, "GET", "/static/../server.py")).status == 404
    page = text(await ask(app, "GET", "/submit"))
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page


async def test_an_unsigned_console_says_so_on_the_submit_form() -> None:
    page = text(await ask(console(FakeCluster(signed=False)), "GET", "/submit"))
    assert "No operator key" in page


def fleet_reply(done: bool = False) -> dict[str, Any]:
    """A fleet_get reply as daemon/fleetapi.py makes it: one host ran, one is unreachable."""
    definition = {
        "id": GROUP,
        "job": {"cmd": f"echo {XSS}", "cpus": 1.0},
        "selector": {"labels": {"role": "web"}},
        "policy": {"max_parallel": 1, "max_failures": 0, "batch_wait": 0, "canary": 0},
    }
    ran = {
        "host": "web1",
        "result": "failed",
        "job": JOB,
        "state": "FAILED",
        "exit_code": 3,
        "duration": 2.5,
        "last_line": XSS,
        "attempts": 1,
    }
    lost = {
        "host": "web<2>",
        "result": "unreachable",
        "job": "1123456789abcdef0123",
        "state": "CANCELED",
        "reason": "unreachable: offline & past the wait",
        "attempts": 0,
    }
    group = {"id": GROUP, "definition": definition, "done": done, "canceled": False}
    return {
        "group": {**group, "key_id": "ops", "accepted_at": 1_700_000_000.0},
        "hosts": [ran, lost],
        "counts": {"failed": 1, "unreachable": 1},
    }


async def test_a_fleet_run_page_shows_each_host_escaped_and_offers_cancel() -> None:
    cluster = FakeCluster(groups={GROUP: fleet_reply()})
    page = text(await ask(console(cluster), "GET", f"/fleet/{GROUP}"))
    assert "<script>alert" not in page and "web<2>" not in page
    rows = re.findall(r"<tr>\s*(.*?)</tr>", page.split("<tbody>")[1], re.S)
    cells = [
        [
            html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<td>(.*?)</td>", row, re.S)
        ]
        for row in rows
    ]
    assert cells == [
        ["web1", "failed", "FAILED", "3", "2.5s", XSS],
        ["web<2>", "unreachable", "CANCELED", "-", "-", "unreachable: offline & past the wait"],
    ]
    assert f'<a href="/jobs/{JOB}">web1</a>' in page  # a host's part is one click away
    assert "1 failed, 1 unreachable" in page and "labels role=web" in page
    assert "max parallel 1, max failures 0," in page
    assert f'action="/fleet/{GROUP}/cancel"' in page and f'value="{TOKEN}"' in page
    assert 'http-equiv="refresh"' in page  # rolling out: it reloads itself


async def test_an_ended_fleet_run_has_no_cancel_and_stops_reloading() -> None:
    reply = fleet_reply(done=True)
    reply["group"]["definition"]["policy"] = {"max_parallel": None, "max_failures": None}
    page = text(await ask(console(FakeCluster(groups={GROUP: reply})), "GET", f"/fleet/{GROUP}"))
    assert ">ended<" in page
    assert "max parallel all, max failures no limit," in page  # as schedctl run defaults them
    assert 'id="cancel"' not in page and 'http-equiv="refresh"' not in page


async def test_cancel_a_fleet_run_with_the_token_only() -> None:
    cluster = FakeCluster(groups={GROUP: fleet_reply()})
    app = console(cluster)
    refused = await ask(app, "POST", f"/fleet/{GROUP}/cancel", {"csrf": "wrong"})
    assert refused.status == 403 and cluster.groups_canceled == []
    response = await ask(app, "POST", f"/fleet/{GROUP}/cancel", {"csrf": TOKEN})
    assert (response.status, response.headers["Location"]) == (303, f"/fleet/{GROUP}")
    assert cluster.groups_canceled == [GROUP]
    page = text(await ask(app, "GET", f"/fleet/{GROUP}"))
    assert "rolling out (canceled)" in page and 'id="cancel"' not in page


async def test_an_unknown_fleet_run_is_404_and_a_malformed_id_no_page() -> None:
    app = console(FakeCluster())
    missing = await ask(app, "GET", f"/fleet/{GROUP}")
    assert missing.status == 404 and f"no fleet run {GROUP}" in text(missing)
    assert (await ask(app, "GET", "/fleet/g-nothex")).status == 404


async def test_a_part_s_job_page_links_its_fleet_run_and_only_a_well_formed_one() -> None:
    part = job_record(JOB, "FAILED", spec={"fleet": {"group": GROUP, "host": "web1"}})
    forged = job_record("1" * 20, spec={"fleet": {"group": f'"><script>{XSS}', "host": "x"}})
    plain = job_record("2" * 20)
    app = console(FakeCluster(jobs=[part, forged, plain]))
    page = text(await ask(app, "GET", f"/jobs/{JOB}"))
    assert f'id="fleet" href="/fleet/{GROUP}"' in page and "(host web1)" in page
    for other in (forged, plain):
        assert 'id="fleet"' not in text(await ask(app, "GET", f"/jobs/{other['id']}"))


async def test_a_fleet_schedule_shows_its_hosts_and_links_each_slots_fleet_run() -> None:
    group = "g-018f00000000abcdef12"
    fleet = {"selector": {"labels": {"role": "web"}}, "policy": {}}
    definition = {"name": "patch", "every": 60, "job": {"cmd": "true"}, "fleet": fleet}
    cluster = FakeCluster(
        schedule_list=[{"definition": definition, "paused": False}],
        recent_slots=[{"slot": 1_700_000_000, "group": group, "state": "running"}],
    )
    page = text(await ask(console(cluster), "GET", "/schedules/patch"))
    assert "fleet run on labels role=web" in page
    assert f'href="/fleet/{group}"' in page and "running" in page


def run_summary(n: int, state: str = "ended", **more: Any) -> dict[str, Any]:
    """A fleet_list entry as daemon/fleetlist.py makes it (run n: g- and n's 20 digits)."""
    done = state != "rolling out"
    return {
        "id": f"g-{n:020x}",
        "accepted_at": 1_700_000_000.0 + n,
        "cmd": f"echo {n}",
        "selector": {"all": True},
        "targets": 3,
        "state": state,
        "done": done,
        "canceled": state == "canceled",
        "counts": {"succeeded": 2, "failed": 1} if done else None,
        **more,
    }


async def test_the_fleet_page_lists_runs_linked_escaped_with_state_and_summary() -> None:
    runs = [
        run_summary(3, "rolling out", selector={"labels": {"role": "<web>"}}),
        run_summary(2, cmd=f"echo {XSS}", schedule="nightly<x>"),
        run_summary(1, "canceled"),
    ]
    page = text(await ask(console(FakeCluster(runs=runs)), "GET", "/fleet"))
    for n in (1, 2, 3):
        assert f'href="/fleet/g-{n:020x}"' in page
    assert page.index("g-" + "3".zfill(20)) < page.index("g-" + "1".zfill(20)), "newest first"
    assert XSS not in page and html.escape(f"echo {XSS}") in page
    assert "labels role=&lt;web&gt;" not in page and "role=&lt;web&gt;" in page
    assert "nightly&lt;x&gt;" in page
    assert "2 succeeded, 1 failed" in page and "rolling out" in page and "canceled" in page
    assert 'aria-current="page">Fleet<' in page, "Fleet is in the navigation, current"
    assert 'id="older"' not in page, "no older runs: no Older link"


async def test_the_fleet_page_pages_on_with_older_and_back_to_newest() -> None:
    runs = [run_summary(n) for n in range(120, 0, -1)]
    cluster = FakeCluster(runs=runs)
    app = console(cluster)
    first = text(await ask(app, "GET", "/fleet"))
    last_shown = f"g-{71:020x}"
    assert f'href="/fleet?before={last_shown}"' in first and f"g-{70:020x}" not in first
    second = text(await ask(app, "GET", f"/fleet?before={last_shown}"))
    assert f"g-{70:020x}" in second and f"g-{71:020x}" not in second
    assert 'href="/fleet">Newest' in second and 'id="older"' in second
    third = text(await ask(app, "GET", f"/fleet?before=g-{21:020x}"))
    assert f"g-{1:020x}" in third and 'id="older"' not in third
    assert cluster.fleet_list_calls == [(50, None), (50, last_shown), (50, f"g-{21:020x}")]


async def test_the_fleet_page_refuses_a_bad_cursor_and_names_an_older_agent() -> None:
    app = console(FakeCluster())
    for bad in ("x", "g-123", f"{GROUP}&x=1", "0123456789abcdef0123"):
        response = await ask(app, "GET", "/fleet?" + urllib.parse.urlencode({"before": bad}))
        assert response.status == 400, bad
    # A handler's own 400 is not a console error (the output's cursor either).
    assert (await ask(app, "GET", f"/jobs/{JOB}/output?after=x")).status == 400
    empty = text(await ask(app, "GET", "/fleet"))
    assert "No fleet runs" in empty
    old = CtlError("the agents are older than this schedctl and cannot list fleet runs")
    response = await ask(console(FakeCluster(failure=old)), "GET", "/fleet")
    assert response.status == 502 and "cannot list fleet runs" in text(response)
