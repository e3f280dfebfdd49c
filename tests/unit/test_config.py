"""Configuration loading: defaults, validation errors that name the file and key, CLI exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from schedagent.config import AgentConfig, load_config, parse_config
from schedagent.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.etcd.endpoints == ("http://127.0.0.1:2379",)
    assert config.nats.urls == ("nats://127.0.0.1:4222",)
    assert config.node_ttl == 10
    assert config.node_name


def test_full_file_is_read(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "node_name: web-1\nlabels: {zone: a, rack: 3}\ncpus: 1.5\n"
            "etcd: {endpoints: ['http://10.0.0.1:2379', 'http://10.0.0.2:2379'], prefix: /x}\n"
            "nats: {urls: nats://10.0.0.1:4222, prefix: s.t}\njobs: {kill_grace: 0.5}\n",
        )
    )
    assert config.node_name == "web-1"
    assert config.labels == {"zone": "a", "rack": "3"}
    assert config.cpus == 1.5
    assert len(config.etcd.endpoints) == 2
    assert config.nats.urls == ("nats://10.0.0.1:4222",)
    assert config.jobs.kill_grace == 0.5


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("colour: blue\n", "colour", "unknown key"),
        ("etcd: {endpoint: x}\n", "etcd.endpoint", "unknown key"),
        ("node_ttl: ten\n", "node_ttl", "must be an integer"),
        ("node_ttl: 1\n", "node_ttl", "must be >= 2"),
        ("cpus: true\n", "cpus", "must be a number"),
        ("etcd: {endpoints: ['ftp://h:1']}\n", "etcd.endpoints", "not a valid URL"),
        ("nats: {urls: ['nats://h:notaport']}\n", "nats.urls", "not a valid URL"),
        ("node_name: 'a.b'\n", "node_name", "not a valid node name"),
        ("labels: [a, b]\n", "labels", "mapping"),
        ("log_level: loud\n", "log_level", "not one of"),
        ("etcd: 3\n", "etcd", "must be a mapping"),
        ("containment: {memory: lots}\n", "containment.memory", "'lots' is not a size"),
        ("containment: {memory: 1024}\n", "containment.memory", "from 1M to 1P"),
        ("containment: {tasks: 0}\n", "containment.tasks", "from 1 to 4194304"),
        ("containment: {cgroups: maybe}\n", "containment.cgroups", "true or false"),
        ("metrics: {listen: 9464}\n", "metrics.listen", "must be host:port or null"),
        ("metrics: {listen: 'localhost'}\n", "metrics.listen", "is not host:port"),
        ("metrics: {listen: '127.0.0.1:0'}\n", "metrics.listen", "a port from 1 to 65535"),
        ("metrics: {listen: 'a b:9464'}\n", "metrics.listen", "not an IP address or host"),
        ("metrics: {allow: 192.0.2.7}\n", "metrics.allow", "must be a list of IP addresses"),
        ("metrics: {allow: [prom.example]}\n", "metrics.allow", "not an IP address or network"),
        ("metrics: {allow: [10.1.2.3/16]}\n", "metrics.allow", "has host bits set"),
        ("metrics: {allow: ['10.0.0.0/33']}\n", "metrics.allow", "not an IP address or network"),
        ("metrics: {allow: [7]}\n", "metrics.allow", "7 is not an IP address or network"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(path) in str(info.value)


def test_metrics_listen_is_host_and_port_or_off(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "{}\n")).metrics.listen == ("127.0.0.1", 9464)
    text = "metrics: {listen: '[::1]:9100'}\n"
    assert load_config(write(tmp_path, text)).metrics.listen == ("::1", 9100)
    assert load_config(write(tmp_path, "metrics: {listen: null}\n")).metrics.listen is None


def test_metrics_allow_is_a_list_of_addresses_and_networks(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "{}\n")).metrics.allow == ()  # anyone who reaches it
    text = "metrics: {allow: [192.0.2.7, 10.1.0.0/16, '2001:db8::/32']}\n"
    allow = load_config(write(tmp_path, text)).metrics.allow
    assert [str(n) for n in allow] == ["192.0.2.7/32", "10.1.0.0/16", "2001:db8::/32"]


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [unclosed\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_containment_defaults_are_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "containment: {memory: 512M, tasks: 100}\n"))
    assert (config.containment.memory, config.containment.tasks) == (512 << 20, 100)
    assert config.containment.cgroups is True


def test_parse_config_returns_frozen_config() -> None:
    config = parse_config({"node_name": "n1"})
    assert isinstance(config, AgentConfig)
    with pytest.raises(AttributeError):
        config.node_name = "other"  # type: ignore[misc]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "schedagent", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = run_cli("check-config", str(write(tmp_path, "node_name: n1\n")))
    assert good.returncode == 0, good.stderr
    bad = run_cli("check-config", str(write(tmp_path, "node_name: n1\nbogus_key: 1\n")))
    assert bad.returncode == 2
    assert "bogus_key" in bad.stderr and "unknown key" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_run_with_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    result = run_cli("run", "--config", str(write(tmp_path, "node_ttl: 'x'\n")))
    assert result.returncode == 2
    assert "node_ttl" in result.stderr and str(tmp_path) in result.stderr
    assert "Traceback" not in result.stderr
