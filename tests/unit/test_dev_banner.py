"""`schedagent dev`'s banner names each agent's own metrics address (nothing is started)."""

from __future__ import annotations

import re
from pathlib import Path

from schedagent.dev.cluster import LocalCluster
from schedagent.dev.command import _banner


def test_each_agent_gets_a_port_of_its_own_and_the_banner_prints_it(tmp_path: Path) -> None:
    cluster = LocalCluster(3, base_dir=tmp_path)
    urls = [agent.metrics_url for agent in cluster.agents.values()]
    assert all(url is not None for url in urls)
    assert len(set(urls)) == 3
    assert all(re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", str(url)) for url in urls)
    banner = _banner(cluster)
    for name, agent in cluster.agents.items():
        assert re.search(rf"^  {name}\s+metrics {re.escape(str(agent.metrics_url))}$", banner, re.M)


def test_the_banner_offers_the_web_console(tmp_path: Path) -> None:
    banner = _banner(LocalCluster(1, base_dir=tmp_path))
    assert re.search(
        r"^  \S*schedctl ui   # the web console, on http://127\.0\.0\.1:8090/$", banner, re.M
    )


def test_an_agent_with_metrics_off_has_no_address(tmp_path: Path) -> None:
    cluster = LocalCluster(["n1"], base_dir=tmp_path, agent_overrides={"metrics": {"listen": None}})
    assert cluster.agents["n1"].metrics_url is None
    assert cluster.agents["n1"].write_config().read_text().count("listen: null") == 1
