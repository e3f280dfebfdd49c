"""End to end on real systemd hosts: ansible/deploy.yml onto three fresh Debian hosts
(systemd-nspawn, systemd as PID 1), then what an operator would do and what can go
wrong. The tests share one cluster and run in the order written: the last ones kill an
agent, upgrade the package under running jobs, and pull a host's plug.

    make e2e        # see docs/e2e.md
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shlex
import socket
import ssl
import subprocess
import time
import urllib.request
from typing import Any

import pytest
import yaml

from schedagent.ctl.exits import EXIT_NO_CLUSTER
from schedagent.dev import marks

from . import rolling
from .conftest import Cluster
from .deploy import PlaybookRun
from .fleet import HOSTS, Host, wait_for

# A test's limit includes the session's setup (builds, boot, first playbook), which
# under qemu TCG takes several times as long.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600 if HOSTS == "qemu" else 900)]

FINAL = ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED")


def _assert_ok(result: PlaybookRun) -> None:
    tail = result.output[-6000:]
    assert result.returncode == 0, f"ansible-playbook exited {result.returncode}:\n{tail}"
    assert result.recap, f"no PLAY RECAP:\n{tail}"
    for host, counts in result.recap.items():
        assert counts["failed"] == 0 and counts["unreachable"] == 0, f"{host}: {counts}\n{tail}"


def _leader(cluster: Cluster) -> str:
    leader = cluster.ctl.json("leader")["leader"]
    assert leader, "no leader"
    return str(leader["node"])


def _wait_final(cluster: Cluster, job_id: str, timeout: float) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        job = cluster.ctl.job(job_id)
        return job if job["state"] in FINAL else None

    return wait_for(f"job {job_id} ends", final, timeout)


def _unit(host: Host, *props: str) -> dict[str, str]:
    out = host.ssh(f"systemctl show schedagent {' '.join('-p ' + p for p in props)}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_check_mode_on_the_fresh_hosts_succeeds_without_installing(cluster: Cluster) -> None:
    # Before the first run: the packages' configuration and services are skipped there
    # (nothing to check them against), everything else says what it would change.
    _assert_ok(cluster.fresh_check)
    assert set(cluster.fresh_check.recap) == {h.name for h in cluster.fleet.hosts}
    assert all(counts["changed"] > 0 for counts in cluster.fresh_check.recap.values())
    assert cluster.installed_after_check == dict.fromkeys(cluster.installed_after_check, False)


def test_deploy_yml_deploys_the_cluster(cluster: Cluster) -> None:
    _assert_ok(cluster.first_run)
    assert set(cluster.first_run.recap) == {h.name for h in cluster.fleet.hosts}
    # The admin play's own check: schedctl on node1 saw the three nodes.
    assert "schedctl on node1 sees node1, node2, node3." in cluster.first_run.output


def test_schedagent_is_active_and_its_status_names_the_leader(cluster: Cluster) -> None:
    leader = _leader(cluster)
    for host in cluster.fleet.hosts:
        assert host.ssh_rc("systemctl is-active schedagent").stdout.strip() == "active"
        want = "leader, " if host.name == leader else f"follower (leader {leader})"

        def status(h: Host = host, want: str = want) -> str | None:
            # STATUS= is refreshed every second; an agent may still learn the leader.
            text = h.ssh_rc("systemctl status schedagent --no-pager -n 0").stdout
            return text if re.search(rf"Status: \"{re.escape(want)}", text) else None

        text = wait_for(f"{host.name}'s STATUS= names {leader}", status, 30)
        assert "Active: active (running)" in text, text
        unit = _unit(host, "Type", "NRestarts", "User", "Group")
        # root (no User=): systemd takes its transient job units; jobs run as schedjob.
        want = {"Type": "notify", "NRestarts": "0", "User": "", "Group": "schedagent"}
        assert unit == want, unit


def test_schedctl_nodes_shows_the_hosts_and_their_cpus(cluster: Cluster) -> None:
    nodes = {n["name"]: n for n in cluster.ctl.json("nodes")["nodes"]}
    assert set(nodes) == {h.name for h in cluster.fleet.hosts}
    for host in cluster.fleet.hosts:
        node = nodes[host.name]
        assert node["hostname"] == host.name
        assert host.address in node["addresses"]
        assert node["cpus"] == host.expected_cpus, (host.name, node["cpus"])
        assert node["version"] == cluster.debs.version
    # From the admin host too, as docs/deploy.md tells an operator: a root login shell.
    admin = cluster.fleet.hosts[0]
    table = admin.ssh_user("sudo -i schedctl nodes")
    for host in cluster.fleet.hosts:
        assert re.search(rf"(?m)^\s*\*?\s*{host.name}\b", table), table


def _plain_nats_login(address: str, password: str) -> tuple[dict[str, Any], bytes]:
    """A NATS client without TLS: the server's INFO, and what it answers a CONNECT with
    the right password in clear and a PING (b"" if it just closes the connection)."""
    with socket.create_connection((address, 4222), timeout=10) as sock:
        info = sock.makefile("rb").readline()
        assert info.startswith(b"INFO "), info
        connect = {"user": "schedctl", "pass": password, "verbose": False, "tls_required": False}
        reply = b""
        try:
            sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
            while chunk := sock.recv(4096):
                reply += chunk
        except OSError as exc:  # reset by the server
            reply += f"<{exc}>".encode()
    return json.loads(info[5:]), reply


def _http_get_on(host: Host, url: str) -> Any:
    """GET a loopback URL on the host (NATS monitoring: 127.0.0.1 only) with its python3."""
    script = (
        "import sys, urllib.request; "
        f"sys.stdout.write(urllib.request.urlopen({url!r}).read().decode())"
    )
    return json.loads(host.ssh(f"python3 -c {shlex.quote(script)}"))


def test_nats_talks_tls_only_with_certificates_from_the_cluster_ca(cluster: Cluster) -> None:
    password = (cluster.inventory.parent / "credentials" / "nats-schedctl").read_text().strip()
    for host in cluster.fleet.hosts:
        # A client without TLS, even with the right password, gets no further than INFO.
        info, reply = _plain_nats_login(host.address, password)
        assert info["tls_required"] is True, info
        assert b"PONG" not in reply and b"+OK" not in reply, reply
        # Routes: TLS, each server checking the other's certificate; both routes up.
        varz = _http_get_on(host, "http://127.0.0.1:8222/varz")
        assert varz["tls_required"] is True
        assert (varz["cluster"]["tls_required"], varz["cluster"]["tls_verify"]) == (True, True)
        routez = _http_get_on(host, "http://127.0.0.1:8222/routez")
        assert routez["num_routes"] == len(cluster.fleet.hosts) - 1, routez
        # The server's key is the nats user's alone; the agent's CA is for it and root.
        modes = host.ssh(
            "stat -c '%n %U:%G %a' /etc/nats-server/tls /etc/nats-server/tls/server.key"
            " /etc/schedagent/tls /etc/schedagent/tls/nats-ca.pem"
        ).splitlines()
        assert modes == [
            "/etc/nats-server/tls root:nats 750",
            "/etc/nats-server/tls/server.key nats:nats 600",
            "/etc/schedagent/tls root:schedagent 750",
            "/etc/schedagent/tls/nats-ca.pem root:schedagent 640",
        ], modes
    # schedctl without the cluster's CA (so with the system's) refuses the servers.
    no_ca = cluster.ctl.run("nodes", env={"SCHEDCTL_NATS_CA": ""})
    assert no_ca.returncode == EXIT_NO_CLUSTER, no_ca.stdout + no_ca.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in no_ca.stderr, no_ca.stderr
    # The admin host's context names every server (tls://), the CA the schedctl role
    # installed and a credentials file for root and the schedctl group only.
    admin = cluster.fleet.hosts[0]
    config = yaml.safe_load(admin.ssh("cat /etc/schedctl/config.yaml"))
    assert config["contexts"][config["current"]] == {
        "nats": [f"tls://{h.address}:4222" for h in cluster.fleet.hosts],
        "prefix": "sched",
        "nats_ca": "/etc/schedctl/nats-ca.pem",
        "credentials": "/etc/schedctl/credentials",
    }
    files = admin.ssh("stat -c '%n %U:%G %a' /etc/schedctl/config.yaml /etc/schedctl/credentials")
    assert files.splitlines() == [
        "/etc/schedctl/config.yaml root:root 644",
        "/etc/schedctl/credentials root:schedctl 640",
    ]
    assert admin.ssh("cat /etc/schedctl/credentials") == f"schedctl:{password}\n"
    # No login shell exports the password any more.
    assert "SCHEDCTL_NATS_URL" not in admin.ssh_user("sudo -i env")
    gone = admin.ssh_rc("ls /etc/profile.d/schedctl.sh /etc/schedagent/schedctl.env")
    assert gone.returncode != 0 and gone.stdout == "", gone.stdout


ETCDCTL_CERTS = (
    "--cacert=/etc/etcd/tls/ca.pem --cert=/etc/etcd/tls/member.pem --key=/etc/etcd/tls/member.key"
)


def _refused(url: str, tls: ssl.SSLContext | None = None) -> str:
    """What went wrong asking url: the request must fail (the text says how)."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls)
    )
    try:
        with opener.open(url, timeout=10) as resp:
            raise AssertionError(f"{url} answered {resp.status}: {resp.read()[:200]!r}")
    except OSError as exc:  # URLError, HTTPError, ssl.SSLError, ConnectionResetError
        return str(exc)


def test_etcd_takes_tls_only_with_client_certificates_from_its_ca(cluster: Cluster) -> None:
    ca = cluster.inventory.parent / "credentials" / "etcd-ca.pem"
    no_cert = ssl.create_default_context(cafile=str(ca))
    for host in cluster.fleet.hosts:
        # From the admin side: plain HTTP gets nothing; TLS without a client certificate
        # is refused at the handshake, on the client port and on the peer port.
        for port in (2379, 2380):
            _refused(f"http://{host.address}:{port}/version")
            _refused(f"https://{host.address}:{port}/version", no_cert)
        # On the host: etcdctl without certificates fails, with the member's succeeds.
        bare = host.ssh_rc(f"etcdctl --endpoints=https://{host.address}:2379 endpoint health")
        assert bare.returncode != 0, bare.stdout
        plain = host.ssh_rc("etcdctl --endpoints=http://127.0.0.1:2379 endpoint health")
        assert plain.returncode != 0, plain.stdout
        health = host.ssh(
            f"etcdctl --endpoints=https://127.0.0.1:2379 {ETCDCTL_CERTS} endpoint health 2>&1"
        )
        assert "is healthy" in health, health
        # Keys: the member's for etcd, the agent's for schedagent, nobody else's.
        modes = host.ssh(
            "stat -c '%n %U:%G %a' /etc/etcd/tls /etc/etcd/tls/member.key"
            " /etc/schedagent/tls/etcd-client.key /etc/schedagent/tls/etcd-client.pem"
        ).splitlines()
        assert modes == [
            "/etc/etcd/tls root:etcd 750",
            "/etc/etcd/tls/member.key etcd:etcd 600",
            "/etc/schedagent/tls/etcd-client.key schedagent:schedagent 600",
            "/etc/schedagent/tls/etcd-client.pem root:schedagent 640",
        ], modes
        # The agent's configuration: https endpoints, its certificate, the shared name.
        config = host.ssh("cat /etc/schedagent/agent.yaml")
        assert f"- https://{host.address}:2379" in config, config
        assert "tls_server_name: etcd.schedagent.internal" in config, config
    # Every member is known to the others at an https:// peer URL, and the agents,
    # which talk to etcd only with their certificates, are all registered.
    members = json.loads(
        cluster.fleet.hosts[0].ssh(
            f"etcdctl --endpoints=https://127.0.0.1:2379 {ETCDCTL_CERTS} member list -w json"
        )
    )["members"]
    assert sorted(m["name"] for m in members) == [h.name for h in cluster.fleet.hosts]
    for member in members:
        assert all(u.startswith("https://") for u in member["peerURLs"] + member["clientURLs"])
    nodes = {n["name"] for n in cluster.ctl.json("nodes")["nodes"]}
    assert nodes == {h.name for h in cluster.fleet.hosts}


def test_jobs_run_with_their_output_and_exit_codes(cluster: Cluster) -> None:
    ok = cluster.ctl.run("submit", "--cmd", "echo hello from $(hostname); echo oops >&2", "--wait")
    assert ok.returncode == 0, ok.stderr
    assert re.fullmatch(r"hello from node[123]\n", ok.stdout), ok.stdout
    assert "oops" in ok.stderr

    failed = cluster.ctl.run("submit", "--cmd", "echo about to fail; exit 7", "--wait")
    assert failed.returncode == 7, failed.stderr
    assert failed.stdout == "about to fail\n"
    job_id = failed.stderr.strip().splitlines()[0]
    job = cluster.ctl.job(job_id)
    assert (job["state"], job["exit_code"], job["reason"]) == ("FAILED", 7, "exit code 7")

    # Without --wait: the id, then the record and `schedctl logs`.
    job_id = cluster.ctl.submit("for i in 1 2 3; do echo line $i; done")
    job = _wait_final(cluster, job_id, 60)
    assert job["state"] == "SUCCEEDED" and job["exit_code"] == 0, job
    assert job["output_tail"] == "line 1\nline 2\nline 3\n"
    logs = cluster.ctl.run("logs", job_id)
    assert logs.returncode == 0 and logs.stdout == "line 1\nline 2\nline 3\n", logs


def test_journal_tells_a_jobs_story_on_the_host_that_ran_it(cluster: Cluster) -> None:
    job_id = cluster.ctl.submit("echo story line")
    job = _wait_final(cluster, job_id, 60)
    assert job["state"] == "SUCCEEDED", job
    host = cluster.fleet.host(job["node"])

    def story() -> list[dict[str, str]] | None:
        out = host.ssh(f"journalctl -u schedagent JOB_ID={job_id} -o json --no-pager")
        entries = [json.loads(line) for line in out.splitlines()]
        ended = any("ended: SUCCEEDED" in e.get("MESSAGE", "") for e in entries)
        return entries if ended else None

    entries = wait_for("the job's journal entries", story, 30)
    messages = [e["MESSAGE"] for e in entries]
    assert any(f"job {job_id} attempt 1 started" in m for m in messages), messages
    assert "story line" in messages, messages
    assert any(f"job {job_id} attempt 1 ended: SUCCEEDED" in m for m in messages), messages
    for entry in entries:
        assert entry["JOB_ID"] == job_id
        assert entry["_SYSTEMD_UNIT"] == "schedagent.service"
        assert entry["NODE"] == host.name
    # The attempt's own lines (start, output, end) also carry its number.
    attempt = [
        e
        for e in entries
        if e["MESSAGE"].startswith(f"job {job_id} attempt 1 ") or e["MESSAGE"] == "story line"
    ]
    assert len(attempt) == 3, messages
    assert all(e.get("ATTEMPT") == "1" for e in attempt), [
        (e["MESSAGE"], e.get("ATTEMPT")) for e in attempt
    ]
    # The plain `journalctl -u schedagent JOB_ID=...` an operator types shows the same.
    text = host.ssh(f"journalctl -u schedagent JOB_ID={job_id} --no-pager")
    assert "attempt 1 ended: SUCCEEDED" in text and "story line" in text, text


def _running(cluster: Cluster, job_id: str) -> dict[str, Any] | None:
    job = cluster.ctl.job(job_id)
    return job if job["state"] == "RUNNING" else None


def _processes_with(host: Host, text: str) -> list[str]:
    """The host's processes whose command line holds text (its own process table)."""
    out = host.ssh("ps -eo pid=,user=,args=")
    return [line for line in out.splitlines() if text in line and "ps -eo" not in line]


def _job_units(host: Host) -> str:
    return host.ssh("systemctl list-units --all --plain --no-legend 'schedjob-*' 'schedagent-j*'")


# nspawn on a host whose PID 1 is not systemd mounts the v1 controllers read-only
# in the guest: its systemd cannot write a memory, pids or cpu limit (docs/e2e.md).
CONTROLLERS = HOSTS == "qemu"


def test_containment_a_job_over_its_memory_limit_fails_out_of_memory(cluster: Cluster) -> None:
    hog = "python3 -c 'b = bytearray(256 << 20); import time; time.sleep(30)'"
    job = _wait_final(cluster, cluster.ctl.submit(hog, "--memory", "64M"), 90)
    assert job["state"] == "FAILED", job
    attempt = job["attempts"][-1]
    if not CONTROLLERS:  # refused, never run unlimited
        assert attempt["reason"] == (
            "cannot start: cannot place it in its cgroup: "
            "cannot enforce --memory (systemd did not apply it) here"
        ), job["attempts"]
        return
    assert attempt["reason"] == "out of memory (limit 64M)", job["attempts"]
    assert attempt["usage"]["memory_peak"] <= 64 << 20, job["attempts"]


def test_containment_a_forked_daemon_dies_with_its_job(cluster: Cluster) -> None:
    """After an end, a cancel and a timeout, the host's process table has no trace of
    the daemon each job forked into a session of its own; its units are gone too."""
    tags = {how: 300000 + n * 1000 + int(time.time()) % 997 for n, how in enumerate("ECT")}
    ended = cluster.ctl.submit(f"setsid sleep {tags['E']} & echo forked")
    canceled = cluster.ctl.submit(f"setsid sleep {tags['C']} & exec sleep 1000")
    timed_out = cluster.ctl.submit(f"setsid sleep {tags['T']} & exec sleep 1000", "--timeout", "5")

    job = wait_for("the job to cancel runs", lambda: _running(cluster, canceled), 60)
    host = cluster.fleet.host(job["node"])
    wait_for("its daemon", lambda: _processes_with(host, f"sleep {tags['C']}") or None, 30)
    unit = f"schedjob-{canceled}-1.service"
    assert host.ssh_rc(f"systemctl is-active {unit}").stdout.strip() == "active"
    assert cluster.ctl.run("cancel", canceled).returncode == 0
    for job_id, state, tag in (
        (ended, "SUCCEEDED", tags["E"]),
        (canceled, "CANCELED", tags["C"]),
        (timed_out, "TIMED_OUT", tags["T"]),
    ):
        job = _wait_final(cluster, job_id, 90)
        assert job["state"] == state, job
        # Recorded only once its units are gone: nothing of it may be left now.
        ran_on = cluster.fleet.host(job["node"])
        assert _processes_with(ran_on, f"sleep {tag}") == [], (state, ran_on.name)
        assert job_id not in _job_units(ran_on), _job_units(ran_on)


@pytest.mark.skipif(not CONTROLLERS, reason="no writable cpu controller in an nspawn guest here")
def test_containment_a_cpu_quota_holds_a_busy_loop_to_half_a_cpu(cluster: Cluster) -> None:
    loop = "timeout 8 python3 -c 'while True: pass' || true"
    job = _wait_final(cluster, cluster.ctl.submit(loop, "--cpus", "0.5"), 90)
    assert job["state"] == "SUCCEEDED", job
    share = job["attempts"][-1]["usage"]["cpu_seconds"] / 8
    # ~1.0 without the quota on an idle CPU; less than 0.5 only if the CPU is busy.
    assert 0.3 < share < 0.6, job["attempts"][-1]


def test_containment_jobs_run_as_schedjob_and_cannot_read_the_agents_secrets(
    cluster: Cluster,
) -> None:
    peek = (
        "id -un; for f in /etc/schedagent/agent.yaml /etc/schedagent/tls/etcd-client.key; do"
        " cat $f >/dev/null 2>&1 && echo read $f || echo denied $f; done"
    )
    job = _wait_final(cluster, cluster.ctl.submit(peek), 60)
    assert job["state"] == "SUCCEEDED", job
    assert job["output_tail"] == (
        "schedjob\ndenied /etc/schedagent/agent.yaml\ndenied /etc/schedagent/tls/etcd-client.key\n"
    ), job["output_tail"]


def test_containment_a_job_that_writes_without_end_holds_little_disk(cluster: Cluster) -> None:
    """12 MB of output: its file on the host keeps its size but holds the blocks of
    little more than what the agent has not handed on yet; the tail is whole."""
    lines = 'python3 -c \'import sys; [sys.stdout.write("x" * 999 + "\\n") for _ in range(12000)]\''
    job_id = cluster.ctl.submit(f"{lines}; echo done writing; exec sleep 1000")
    job = wait_for("it runs", lambda: _running(cluster, job_id), 60)
    host = cluster.fleet.host(job["node"])
    path = f"/var/lib/schedagent/output/{job_id}-1.out"

    def held() -> tuple[int, int] | None:
        size, blocks, block = map(int, host.ssh(f"stat -c '%s %b %B' {path}").split())
        return (size, blocks * block) if size == 12_000_013 and blocks * block < 3 << 20 else None

    wait_for("all of it written and little of it held", held, 90)
    assert cluster.ctl.run("cancel", job_id).returncode == 0
    job = _wait_final(cluster, job_id, 60)
    assert job["state"] == "CANCELED", job
    assert job["output_tail"].endswith("x" * 999 + "\ndone writing\n"), job["output_tail"][-200:]
    assert host.ssh_rc(f"test -e {path}").returncode == 1  # removed with the attempt


def test_a_second_run_changes_nothing(cluster: Cluster) -> None:
    again = cluster.playbook("second")
    _assert_ok(again)
    changed = {host: counts["changed"] for host, counts in again.recap.items()}
    assert changed == {h.name: 0 for h in cluster.fleet.hosts}, "\n".join(again.changed_tasks())


def test_check_mode_on_the_deployed_hosts_reports_no_change(cluster: Cluster) -> None:
    check = cluster.playbook("check", "--check")
    _assert_ok(check)
    changed = {host: counts["changed"] for host, counts in check.recap.items()}
    assert changed == {h.name: 0 for h in cluster.fleet.hosts}, "\n".join(check.changed_tasks())


def _held_jobs(cluster: Cluster, tag: str) -> dict[str, str]:
    """One held job on each node (node -> job id), each running."""
    jobs = {
        h.name: cluster.ctl.submit(rolling.held_command(tag), "--node", h.name)
        for h in cluster.fleet.hosts
    }
    wait_for(
        "a held job runs on every node",
        lambda: all(cluster.ctl.job(j)["state"] == "RUNNING" for j in jobs.values()),
        60,
    )
    return jobs


def _assert_held_jobs_ran_once(cluster: Cluster, tag: str, jobs: dict[str, str]) -> None:
    """Each job SUCCEEDED at its first attempt, and its own marks agree: one start,
    one end, never a gap in its beats, on the node it was sent to."""
    for node, job_id in jobs.items():
        job = _wait_final(cluster, job_id, 120)
        assert (job["state"], len(job["attempts"]), job["node"]) == ("SUCCEEDED", 1, node), job
    seen = [m for h in cluster.fleet.hosts for m in rolling.host_marks(h, tag)]
    assert {m.host for m in seen if m.kind == "end"} == set(jobs)
    assert marks.ends(seen) == dict.fromkeys(jobs.values(), 1)
    assert {m.attempt for m in seen} == {1}
    assert marks.gaps(seen) == {}, marks.gaps(seen)
    # Beats every 0.2 s all along: a few seconds at most even on a busy machine.
    silences = rolling.longest_silence(seen)
    assert all(gap < 5 for gap in silences.values()), silences


def test_a_live_key_change_reloads_the_agents_under_their_jobs(cluster: Cluster) -> None:
    """A label for every node (labels reload live): the agents reload, keep their main
    process and their running jobs, and show the label."""
    tag = f"reload-{int(time.time())}"
    jobs = _held_jobs(cluster, tag)
    before = {h.name: _unit(h, "MainPID")["MainPID"] for h in cluster.fleet.hosts}

    def add_rack_label(inventory: dict[str, Any]) -> None:
        for host in inventory["all"]["hosts"].values():
            host["schedagent_labels"]["rack"] = "r1"

    rolling.edit_inventory(cluster.inventory, add_rack_label)
    result = cluster.playbook("reload")
    _assert_ok(result)
    changed = "\n".join(result.changed_tasks())
    assert "Reload schedagent's configuration]" in changed, changed
    assert "Restart schedagent, one agent at a time]" not in changed, changed
    after = {h.name: _unit(h, "MainPID")["MainPID"] for h in cluster.fleet.hosts}
    assert after == before
    nodes = {n["name"]: n for n in cluster.ctl.json("nodes")["nodes"]}
    assert all(nodes[h.name]["labels"].get("rack") == "r1" for h in cluster.fleet.hosts), nodes
    # The jobs outlived the reload: still running, their processes still on each host.
    for host in cluster.fleet.hosts:
        assert cluster.ctl.job(jobs[host.name])["state"] == "RUNNING"
        assert _processes_with(host, f"release-{tag}"), host.name
        rolling.release(host, tag)
    _assert_held_jobs_ran_once(cluster, tag, jobs)


def test_a_restart_key_change_restarts_agents_one_at_a_time_under_jobs(cluster: Cluster) -> None:
    """Another metrics port (a restart) and an etcd setting: etcd members and then
    agents restart one at a time, no two hosts down at once; each agent hands its
    running job to the next one, so the jobs run on through the restarts (their own
    beats show no gap), each to one end at its first attempt."""
    tag = f"restart-{int(time.time())}"
    jobs = _held_jobs(cluster, tag)
    before = {h.name: _unit(h, "MainPID")["MainPID"] for h in cluster.fleet.hosts}

    def new_port_and_etcd_setting(inventory: dict[str, Any]) -> None:
        inventory["all"]["vars"]["schedagent_metrics_listen"] = "127.0.0.1:9465"
        # etcd's default, written out: the file changes, the cluster's behaviour not.
        inventory["all"]["vars"]["etcd_extra_env"] = {"ETCD_HEARTBEAT_INTERVAL": "100"}

    rolling.edit_inventory(cluster.inventory, new_port_and_etcd_setting)
    _assert_ok(cluster.playbook("restart"))
    for service in ("schedagent", "etcd"):
        windows = rolling.down_windows(cluster.fleet.hosts, service)
        assert rolling.overlapping(windows) == [], (service, windows)
    after = {h.name: _unit(h, "MainPID")["MainPID"] for h in cluster.fleet.hosts}
    assert all(after[name] != before[name] for name in before), (before, after)
    for host in cluster.fleet.hosts:
        metrics = host.ssh(
            'python3 -c "import urllib.request as u; '
            "print(u.urlopen('http://127.0.0.1:9465/metrics').status)\""
        )
        assert metrics.strip() == "200", host.name
        # Through the restart: the same attempt, its process and unit still there.
        job = cluster.ctl.job(jobs[host.name])
        assert (job["state"], job["attempt"]) == ("RUNNING", 1), job
        assert _processes_with(host, f"release-{tag}"), host.name
        rolling.release(host, tag)
    _assert_held_jobs_ran_once(cluster, tag, jobs)


def _counting_job(name: str, lines: int) -> str:
    """A job that says a numbered line a second for `lines` seconds: its whole output
    is known, and a restart that cut or replayed it shows."""
    return f"for i in $(seq 1 {lines}); do echo {name} line $i; sleep 1; done"


def _whole_output(name: str, lines: int) -> str:
    return "".join(f"{name} line {i}\n" for i in range(1, lines + 1))


def test_a_job_runs_on_through_restarts_of_its_agent(cluster: Cluster) -> None:
    """A 60 s job, and `systemctl restart schedagent` twice on its host: the job runs on
    in its unit, the new agents take it over, and it ends SUCCEEDED once, at its first
    attempt, with all of its output once, in order."""
    host = cluster.fleet.hosts[1]
    job_id = cluster.ctl.submit(_counting_job("long", 60), "--node", host.name)
    wait_for("the job runs", lambda: cluster.ctl.job(job_id)["state"] == "RUNNING", 60)
    unit = f"schedjob-{job_id}-1.service"
    for restart in range(2):
        pid = _unit(host, "MainPID")["MainPID"]
        started = host.ssh(f"systemctl show -P ExecMainStartTimestampMonotonic {unit}")
        host.ssh("systemctl restart schedagent")
        assert _unit(host, "MainPID")["MainPID"] != pid, restart
        # The same process of the job, never started again.
        assert host.ssh(f"systemctl show -P ExecMainStartTimestampMonotonic {unit}") == started
        assert host.ssh_rc(f"systemctl is-active {unit}").stdout.strip() == "active"
        wait_for(
            "the new agent follows the job",
            lambda: "1 job running" in _unit(host, "StatusText")["StatusText"],
            30,
        )
    job = _wait_final(cluster, job_id, 120)
    assert (job["state"], len(job["attempts"])) == ("SUCCEEDED", 1), job
    assert job["output_tail"] == _whole_output("long", 60), job["output_tail"]
    logs = cluster.ctl.run("logs", job_id)
    assert logs.returncode == 0 and logs.stdout == _whole_output("long", 60), logs.stdout[-500:]
    assert job_id not in _job_units(host)


def test_killed_leader_agent_is_restarted_and_another_host_leads(cluster: Cluster) -> None:
    old = _leader(cluster)
    host = cluster.fleet.host(old)
    before = _unit(host, "MainPID", "NRestarts")
    host.ssh("systemctl kill -s KILL schedagent")
    job_id = cluster.ctl.submit("echo submitted while the leader was down")

    def new_leader() -> str | None:
        name = _leader(cluster)
        return name if name != old else None

    leader = wait_for("another host leads", new_leader, 60)

    def restarted() -> dict[str, str] | None:
        unit = _unit(host, "MainPID", "NRestarts", "ActiveState", "StatusText")
        return unit if unit["ActiveState"] == "active" and unit["MainPID"] != "0" else None

    unit = wait_for(f"systemd restarts schedagent on {old}", restarted, 60)
    assert int(unit["NRestarts"]) == int(before["NRestarts"]) + 1, unit
    assert unit["MainPID"] != before["MainPID"], unit
    job = _wait_final(cluster, job_id, 90)
    assert job["state"] == "SUCCEEDED", job
    assert job["output_tail"] == "submitted while the leader was down\n"
    # The restarted agent follows the new leader.
    wait_for(
        f"{old} follows {leader}",
        lambda: f"follower (leader {leader})" in _unit(host, "StatusText")["StatusText"],
        30,
    )


def test_upgrading_the_package_under_running_jobs_loses_none(cluster: Cluster) -> None:
    # One job per free CPU slot but one, each running longer than the restarts take.
    slots = sum(h.expected_cpus for h in cluster.fleet.hosts) - 1
    running = [cluster.ctl.submit(_counting_job(f"job{i}", 30)) for i in range(slots)]
    wait_for(
        "the jobs run",
        lambda: all(cluster.ctl.job(j)["state"] == "RUNNING" for j in running),
        60,
    )
    began = time.time()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        upgrade = pool.submit(
            cluster.playbook, "upgrade", "-e", f"schedagent_deb={cluster.debs.upgrade}"
        )
        # Jobs keep coming while the playbook runs; the agents restart one at a time.
        # Should a submit find no agent that answers, schedctl says so (its own exit
        # status) and the job was never accepted.
        during: list[str] = []
        refused: list[subprocess.CompletedProcess[str]] = []
        while not upgrade.done():
            proc = cluster.ctl.run("submit", "--cmd", f"echo during upgrade {len(during)}")
            if proc.returncode == 0:
                during.append(proc.stdout.strip())
            else:
                refused.append(proc)
            time.sleep(1)
        _assert_ok(upgrade.result())
    assert all(p.returncode == EXIT_NO_CLUSTER for p in refused), [
        (p.returncode, p.stderr) for p in refused
    ]
    assert during, "no job was accepted while the playbook ran"
    after = [cluster.ctl.submit(f"echo after upgrade {i}") for i in range(3)]
    for job_id in running + during + after:
        job = _wait_final(cluster, job_id, 180)
        assert job["state"] == "SUCCEEDED", job
    for i, job_id in enumerate(running):
        # Handed over through the upgrade's restart: the first attempt, all its output.
        job = cluster.ctl.job(job_id)
        assert len(job["attempts"]) == 1, job
        assert job["output_tail"] == _whole_output(f"job{i}", 30), job["output_tail"]

    for host in cluster.fleet.hosts:
        installed = host.ssh("dpkg-query -W -f='${Version}' schedagent")
        assert installed == cluster.debs.upgrade_version
        assert host.ssh_rc("systemctl is-active schedagent").stdout.strip() == "active"
    # Every agent was restarted on the new package and says so.
    nodes = cluster.ctl.json("nodes")["nodes"]
    assert {n["name"] for n in nodes} == {h.name for h in cluster.fleet.hosts}
    assert {n["version"] for n in nodes} == {cluster.debs.upgrade_version}
    assert all(n["started_at"] > began for n in nodes), [
        (n["name"], n["started_at"]) for n in nodes
    ]


FROZEN_MARKS = "frozen-marks"  # in the jobs' working directory, schedjob's home


def _zone_b_marks(cluster: Cluster, name: str) -> list[marks.Mark]:
    """The marks jobs wrote to `name` in the job user's home on node2 and node3."""
    zone_b = [h for h in cluster.fleet.hosts if h.name in ("node2", "node3")]
    return [
        mark
        for host in zone_b
        for mark in marks.parse(
            host.ssh(f"cat /var/lib/schedjob/{name} 2>/dev/null || true"), host.name
        )
    ]


def test_a_frozen_agents_jobs_die_before_they_run_elsewhere(cluster: Cluster) -> None:
    """SIGSTOP the agent: systemd's watchdog (WatchdogSec=3s, SIGKILL) kills it and
    its unit's jobs before the leader retries them (node_ttl 10 + grace 5 s). Overlap is
    judged from the jobs' own marks on both hosts (nspawn hosts share this kernel's
    clock)."""
    # zone=b: node2 or node3, never node1 (the admin host).
    command = marks.job_command(30, path=FROZEN_MARKS)
    ids = [cluster.ctl.submit(command, "--label", "zone=b", "--retries", "1") for _ in range(2)]

    def running() -> list[dict[str, Any]] | None:
        jobs = [cluster.ctl.job(j) for j in ids]
        return jobs if all(j["state"] == "RUNNING" for j in jobs) else None

    jobs = wait_for("the jobs run", running, 60)
    frozen = cluster.fleet.host(jobs[0]["node"])
    victims = [j["id"] for j in jobs if j["node"] == frozen.name]
    before = _unit(frozen, "MainPID", "NRestarts")
    frozen.ssh(f"kill -STOP {before['MainPID']}")
    for job_id in victims:
        job = _wait_final(cluster, job_id, 120)
        assert job["state"] == "SUCCEEDED" and len(job["attempts"]) == 2, job["attempts"]
        first = job["attempts"][0]
        assert first["node"] == frozen.name, job["attempts"]
        assert first["reason"] in ("node lost", "agent restarted"), job["attempts"]
    for job_id in set(ids) - set(victims):
        assert _wait_final(cluster, job_id, 120)["state"] == "SUCCEEDED"

    seen = _zone_b_marks(cluster, FROZEN_MARKS)
    assert marks.overlaps(seen) == []
    assert marks.ends(seen) == dict.fromkeys(ids, 1)
    gaps = marks.gaps(seen)
    assert set(gaps) == set(victims), gaps
    # systemd's watchdog killed it, and restarted it: a new main process.
    after = _unit(frozen, "MainPID", "NRestarts")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, after
    assert after["MainPID"] != before["MainPID"], after
    watchdog = frozen.ssh("journalctl -u schedagent --no-pager -n 200 | grep -c 'Watchdog timeout'")
    assert int(watchdog) >= 1, watchdog
    print(f"frozen agent's jobs: next attempt {min(gaps.values()):.2f}s after they died")


BROKEN_MARKS = "broken-marks"  # in the jobs' working directory, schedjob's home


def test_a_restart_into_a_broken_config_stops_the_jobs_before_they_run_elsewhere(
    cluster: Cluster,
) -> None:
    """The agent hands its job over for a restart, but the new one refuses its config
    and never takes it: the job must die before its lease can expire and the leader
    retry it elsewhere (judged from the job's own marks on both zone=b hosts)."""
    command = marks.job_command(30, path=BROKEN_MARKS)
    job_id = cluster.ctl.submit(command, "--label", "zone=b", "--retries", "1")
    wait_for("the job runs", lambda: cluster.ctl.job(job_id)["state"] == "RUNNING", 60)
    host = cluster.fleet.host(cluster.ctl.job(job_id)["node"])
    config = "/etc/schedagent/agent.yaml"
    host.ssh(f"cp {config} {config}.good && echo 'no_such_setting: 1' >> {config}")
    try:
        restart = host.ssh_rc("systemctl restart schedagent")
        assert restart.returncode != 0, "the agent started on a broken config"
        job = _wait_final(cluster, job_id, 120)
    finally:
        host.ssh(f"mv {config}.good {config}")
        host.ssh("systemctl reset-failed schedagent; systemctl start schedagent")
    assert job["state"] == "SUCCEEDED" and len(job["attempts"]) == 2, job["attempts"]
    assert job["attempts"][0]["node"] == host.name, job["attempts"]
    assert job["attempts"][1]["node"] != host.name, job["attempts"]
    seen = _zone_b_marks(cluster, BROKEN_MARKS)
    assert marks.overlaps(seen) == []
    assert marks.ends(seen) == {job_id: 1}
    assert job_id not in _job_units(host), _job_units(host)
    wait_for(
        f"{host.name}'s agent back",
        lambda: host.ssh_rc("systemctl is-active schedagent").stdout.strip() == "active",
        60,
    )


def test_a_job_on_a_host_that_loses_power_finishes_elsewhere(cluster: Cluster) -> None:
    # zone=b: node2 or node3, never node1 (the admin host), so two hosts stay up.
    job_id = cluster.ctl.submit(
        "sleep 20; echo finished on $(hostname)", "--label", "zone=b", "--retries", "1"
    )

    def running() -> dict[str, Any] | None:
        job = cluster.ctl.job(job_id)
        return job if job["state"] == "RUNNING" else None

    job = wait_for("the job runs", running, 60)
    doomed = cluster.fleet.host(job["node"])
    assert doomed.name in ("node2", "node3")
    doomed.power_off()
    survivor = ({"node2", "node3"} - {doomed.name}).pop()

    job = _wait_final(cluster, job_id, 120)
    assert job["state"] == "SUCCEEDED", job
    assert job["node"] == survivor, job
    assert job["output_tail"] == f"finished on {survivor}\n"
    first, last = job["attempts"][0], job["attempts"][-1]
    assert (first["node"], first["reason"]) == (doomed.name, "node lost"), job["attempts"]
    assert (last["node"], last["state"]) == (survivor, "SUCCEEDED"), job["attempts"]
    wait_for(
        f"{doomed.name} leaves the node list",
        lambda: {n["name"] for n in cluster.ctl.json("nodes")["nodes"]} == {"node1", survivor},
        60,
    )
