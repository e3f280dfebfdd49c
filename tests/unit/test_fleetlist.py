"""fleet_list's request checks and summaries (daemon/fleetlist.py), and how schedctl
shows them (ctl/fleetruns.py). The listing itself runs on a real cluster:
tests/integration/test_fleet_list.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from schedagent.core import wire
from schedagent.core.fleet import Group, Target, parse_definition
from schedagent.core.signing import SigningKey
from schedagent.ctl.client import ApiError, _parse_reply
from schedagent.ctl.fleetruns import format_runs, run_summary, selector_text, unknown_verb
from schedagent.daemon.api import answer
from schedagent.daemon.fleetlist import CMD_CHARS, list_request, summary
from schedagent.errors import SpecError

GROUP = "g-0123456789abcdef0123"
KEY = SigningKey.generate()


def group(cmd: str = "true", **changes: Any) -> Group:
    definition = parse_definition(
        {"id": GROUP, "job": {"cmd": cmd}, "selector": {"nodes": ["b", "a"]}, "policy": {}}
    )
    signature = KEY.sign_group(definition.to_dict())
    made = Group(definition, signature, 1_700_000_000.0, (Target("a", True), Target("b", False)))
    return dataclasses.replace(made, **changes)


@pytest.mark.parametrize(
    ("request_body", "expected"),
    [
        ({}, (50, None)),
        ({"limit": 1, "before": GROUP}, (1, GROUP)),
        ({"limit": 500, "before": None}, (500, None)),
    ],
)
def test_a_list_request_takes_a_limit_and_a_cursor(
    request_body: dict[str, Any], expected: tuple[int, str | None]
) -> None:
    assert list_request(request_body) == expected


@pytest.mark.parametrize(
    ("request_body", "why"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "5"}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": 2.0}, "limit"),
        ({"before": "0123456789abcdef0123"}, "before"),
        ({"before": 7}, "before"),
        ({"before": GROUP.upper()}, "before"),
    ],
)
def test_a_bad_list_request_is_a_clear_error(request_body: dict[str, Any], why: str) -> None:
    with pytest.raises(SpecError, match=why):
        list_request(request_body)


def test_a_summary_has_the_record_s_counts_once_ended_and_none_before() -> None:
    rolling = summary(group())
    assert rolling["state"] == "rolling out" and rolling["counts"] is None
    assert (rolling["targets"], rolling["offline_at_accept"]) == (2, 1)
    assert rolling["selector"] == {"nodes": ["b", "a"]} and rolling["key_id"] == KEY.key_id
    assert "hosts" not in rolling and "definition" not in rolling, "a summary, not the run"
    ended = summary(group(done=True, counts={"succeeded": 1, "unreachable": 1}))
    assert ended["state"] == "ended" and ended["counts"] == {"succeeded": 1, "unreachable": 1}
    assert summary(group(canceled=True))["state"] == "canceled"
    long = summary(group("x" * (CMD_CHARS + 5)))
    assert len(long["cmd"]) == CMD_CHARS and long["cmd_cut"] is True


def test_schedctl_shows_runs_as_a_table_with_summaries() -> None:
    runs = [
        summary(group(done=True, counts={"succeeded": 42, "failed": 1})),
        summary(group("sleep 9")),
    ]
    shown = format_runs(runs).splitlines()
    assert shown[0].split() == [
        "GROUP",
        "ACCEPTED",
        "STATE",
        "HOSTS",
        "SELECTOR",
        "SUMMARY",
        "COMMAND",
    ]
    assert GROUP in shown[1] and "42 succeeded, 1 failed" in shown[1] and "ended" in shown[1]
    assert "rolling out" in shown[2] and "sleep 9" in shown[2]
    assert format_runs([]) == "no fleet runs"
    assert run_summary({"counts": None}) == "-"
    assert selector_text({"all": True}) == "all"
    assert selector_text({"labels": {"role": "web"}}) == "role=web"
    assert selector_text({"nodes": [f"host{n}" for n in range(100)]}).endswith("…")


async def test_an_agent_without_the_verb_is_recognised_from_its_own_reply() -> None:
    # An older agent's answer: daemon/api.py's, with handlers that lack fleet_list.
    async def get(req: dict[str, Any]) -> dict[str, Any]:
        return {}

    reply = await answer({"fleet_get": get}, "fleet_list", wire.request({"limit": 1}))
    with pytest.raises(ApiError) as refused:
        _parse_reply(wire.reply(reply))
    assert unknown_verb(refused.value, "fleet_list")
    assert not unknown_verb(refused.value, "fleet_get")
    assert not unknown_verb(ApiError("limit must be an integer", "bad_request"), "fleet_list")
