"""explain: every node's reasons for a pending job; a cordon keeps the leader's view off a node."""

from __future__ import annotations

import pytest

from schedagent.core import transitions, wire
from schedagent.core.cordon import Cordon, check_deadline, check_node_name
from schedagent.core.explain import Obstacles, explain
from schedagent.core.leaderview import LeaderView
from schedagent.core.model import Job, JobSpec, JobState, NodeRecord
from schedagent.core.signing import SignatureRejected, SigningKey, verify_node_action
from schedagent.errors import WireError

NOW = 1_790_000_000.0


def record(name: str, cpus: float = 4.0, draining: bool = False, **labels: str) -> NodeRecord:
    return NodeRecord(
        name=name,
        hostname=name,
        cpus=cpus,
        memory_total=1 << 30,
        memory_available=1 << 29,
        load=(0.0, 0.0, 0.0),
        labels=labels,
        version="test",
        started_at=NOW,
        lease=1,
        draining=draining,
    )


def pending(spec: JobSpec, n: int = 1) -> Job:
    return Job(id=f"{n:020x}", spec=spec, state=JobState.PENDING, submitted_at=NOW)


def test_each_node_says_every_reason_it_cannot_take_the_job() -> None:
    nodes = [
        record("a", gpu="no"),
        record("b", 4.0),
        record("c", 8.0, gpu="yes"),
        record("d", gpu="yes"),
        record("e", draining=True, gpu="yes"),
        record("f", gpu="yes"),
        record("g", gpu="yes"),
    ]
    job = pending(JobSpec(cmd="x", cpus=3.0, labels={"gpu": "yes"}))
    free = {"a": 4.0, "b": 4.0, "c": 2.5, "d": 4.0, "e": 4.0, "f": 4.0, "g": 4.0}
    obstacles = Obstacles(
        cordoned=frozenset({"d"}), drained=frozenset({"f"}), suspect=frozenset({"g"})
    )
    found = explain(job, nodes, free, obstacles, NOW)
    why = {v.node: v.reasons for v in found.nodes}
    assert why == {
        "a": ("label gpu=no, the job asks gpu=yes",),
        "b": ("no label gpu",),
        "c": ("2.5 of 8 CPUs free, the job asks 3",),
        "d": ("cordoned by an operator (schedctl node uncordon)",),
        "e": ("its agent is stopping",),
        "f": ("drained by an operator (schedctl node uncordon)",),
        "g": ("suspect: its leadership fell silent, no new work for now",),
    }
    assert found.summary == "no node can take it now (each node's reasons below)"
    assert not any(v.fits for v in found.nodes)


def test_a_pinned_job_and_one_that_fits_and_a_placed_one() -> None:
    nodes = [record("a"), record("b")]
    pinned = pending(JobSpec(cmd="x", node="zz"))
    found = explain(pinned, nodes, {}, Obstacles(), NOW)
    assert found.summary == "pinned to node zz, which is not registered"
    assert all(v.reasons == ("the job is pinned to node zz",) for v in found.nodes)
    fits = explain(pending(JobSpec(cmd="x")), nodes, {"a": 0.5}, Obstacles(), NOW)
    assert fits.summary.startswith("b could take it now")
    placed = transitions.assign(pending(JobSpec(cmd="x", labels={"k": "v"})), "b", NOW)
    assert placed is not None
    found = explain(placed, nodes, {}, Obstacles(), NOW)
    assert found.summary.startswith("ASSIGNED on b (attempt 1): of the nodes that could take it")
    assert "the most free CPUs" in found.summary and "k=v" in found.summary
    backoff = pending(JobSpec(cmd="x"))
    backoff.not_before = NOW + 5
    assert explain(backoff, nodes, {}, Obstacles(), NOW).summary == (
        "retry backoff: placeable in 5.0s"
    )


def test_an_explanation_goes_over_the_wire_and_a_bad_one_is_refused() -> None:
    job = pending(JobSpec(cmd="x", cpus=9.0))
    found = explain(job, [record("a")], {"a": 4.0}, Obstacles(), NOW)
    body = wire.explanation(found)
    assert wire.parse_explanation(body) == found
    with pytest.raises(WireError):
        wire.parse_explanation({**body, "nodes": [{"node": "a", "cpus": True}]})
    with pytest.raises(WireError):
        wire.parse_explanation({"job": job.id})


def test_the_leader_places_nothing_on_a_cordoned_node_until_uncordoned() -> None:
    view = LeaderView(5.0, transitions.Backoff(1.0, 8.0))
    view.set_node("nodes/a", record("a", 8.0))
    view.set_node("nodes/b", record("b", 1.0))
    view.set_cordoned(["a"])
    for n in range(3):
        view.set_job(f"jobs/{n}", pending(JobSpec(cmd="x"), n), 1, NOW)
    placed = [d.job.node for d in view.placements(NOW, 10)]
    assert placed == ["b"]  # a has room for all three, but is cordoned
    view.set_cordoned([])
    assert [d.job.node for d in view.placements(NOW, 10)] == ["a", "a"]


def test_cordon_records_and_their_checks() -> None:
    drain = Cordon("n1", NOW, "key", drain=True)
    assert Cordon.from_json(drain.to_json()) == drain
    assert drain.hand_back_at(30.0) == NOW + 30.0
    assert Cordon("n1", NOW, deadline=NOW + 5, drain=True).hand_back_at(30.0) == NOW + 5
    assert Cordon("n1", NOW).hand_back_at(30.0) is None
    with pytest.raises(ValueError, match="cordon record"):
        Cordon.from_json(b'{"node": 3}')
    with pytest.raises(ValueError, match="node name"):
        check_node_name("../x")
    with pytest.raises(ValueError, match="deadline"):
        check_deadline(-1)
    assert check_deadline(None) is None and check_deadline(2) == 2.0


def test_a_node_action_signature_holds_for_that_action_node_and_deadline_only() -> None:
    key = SigningKey.generate()
    trusted = {key.key_id: key.public}
    signature = key.sign_node_action("drain", "n1", 30.0, now=NOW)
    assert verify_node_action("drain", "n1", 30.0, signature, trusted, 60, NOW) == key.key_id
    for action, node, deadline in (
        ("cordon", "n1", None),
        ("drain", "n2", 30.0),
        ("drain", "n1", 0.0),
    ):
        with pytest.raises(SignatureRejected, match="does not match"):
            verify_node_action(action, node, deadline, signature, trusted, 60, NOW)
    cancel = key.sign_cancel("0" * 20, now=NOW)
    with pytest.raises(SignatureRejected):
        verify_node_action("cordon", "n1", None, cancel, trusted, 60, NOW)
