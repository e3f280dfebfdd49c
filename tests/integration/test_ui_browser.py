"""`schedctl ui` in headless Chromium against a real dev cluster: submit from the form,
watch the job succeed, read its output, cancel a long one and see its process gone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By

from helpers import live_processes_with, marker
from schedagent.dev.cluster import LocalCluster
from schedagent.dev.procs import free_port

SCHEDCTL = str(Path(sys.executable).parent / "schedctl")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DESKTOP, PHONE = (1280, 800), (390, 844)
# Debian's browser and driver, named: Selenium Manager is never asked to download one.
os.environ.setdefault("SE_OFFLINE", "true")
# SCHEDAGENT_UI_SCREENSHOTS=docs/img writes the screenshots docs/ui.md shows.
SCREENSHOTS = os.environ.get("SCHEDAGENT_UI_SCREENSHOTS")


def wait_for(what: str, check: Callable[[], Any], deadline: float = 30.0) -> Any:
    """check()'s first truthy value; a page reloading under it only means: ask again."""
    end = time.monotonic() + deadline
    while True:
        try:
            value = check()
            if value:
                return value
        except (StaleElementReferenceException, NoSuchElementException):
            pass  # the old page went away, or the new one is not there yet
        except WebDriverException as exc:
            # chromedriver's words for a stale element read while the page reloads.
            if "does not belong to the document" not in str(exc.msg):
                raise
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        time.sleep(0.1)


# A lost node's jobs move within seconds (as in test_failures.py).
FAST = {"node_ttl": 3, "jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0, "kill_grace": 1.0}}


@pytest.fixture
def cluster(cluster_factory: Callable[..., LocalCluster]) -> LocalCluster:
    return cluster_factory(
        2, agent_overrides=FAST, labels={"node1": {"zone": "a"}, "node2": {"zone": "b"}}
    )


@pytest.fixture
def console(cluster: LocalCluster, tmp_path: Path) -> Iterator[str]:
    """`schedctl ui` on a free loopback port, as the operator runs it; its base URL."""
    env = dict(os.environ, SCHEDCTL_NATS_URL=cluster.nats_url, SCHEDCTL_KEY=str(cluster.key_path))
    port = free_port()
    log = (tmp_path / "ui.log").open("w")
    proc = subprocess.Popen(
        [SCHEDCTL, "ui", "--listen", f"127.0.0.1:{port}"], env=env, stdout=log, stderr=log
    )
    try:
        wait_for(
            "schedctl ui to listen", lambda: "schedctl ui on" in (tmp_path / "ui.log").read_text()
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        assert proc.wait(15) == 0, (tmp_path / "ui.log").read_text()
        log.close()


def start_chromium(javascript: bool = True) -> Any:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        # Fail, not skip (as conftest does for the servers): a green run must mean it ran.
        pytest.fail("needs Debian's chromium and chromium-driver; run scripts/setup")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def state_of(browser: Any) -> str:
    return str(browser.find_element(By.ID, "state").text)


def submit_from_form(browser: Any, base: str, cmd: str) -> str:
    """Fill the submit form the jobs page links to; the id of the job page it lands on."""
    browser.get(f"{base}/jobs")
    browser.find_element(By.LINK_TEXT, "Submit a job").click()
    wait_for("the submit form", lambda: browser.find_elements(By.ID, "cmd"))
    browser.find_element(By.ID, "cmd").send_keys(cmd)
    browser.find_element(By.ID, "submit").click()
    wait_for("the job's page", lambda: "/jobs/" in browser.current_url)
    return str(browser.current_url.rsplit("/", 1)[1])


def fits(browser: Any) -> bool:
    """The page needs no sideways scrolling (wide tables scroll in their own box)."""
    return bool(
        browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    )


def shoot(browser: Any, name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.png"
    browser.save_screenshot(str(path))
    if SCREENSHOTS:
        shutil.copy(path, Path(SCREENSHOTS) / f"ui-{name}.png")


def schedctl(cluster: LocalCluster, *args: str) -> str:
    env = dict(os.environ, SCHEDCTL_NATS_URL=cluster.nats_url, SCHEDCTL_KEY=str(cluster.key_path))
    done = subprocess.run([SCHEDCTL, *args], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def paused(cluster: LocalCluster, name: str) -> bool:
    listing = json.loads(schedctl(cluster, "schedule", "list", "--json"))
    return bool(next(s for s in listing["schedules"] if s["definition"]["name"] == name)["paused"])


def pause_and_resume_a_schedule(browser: Any, base: str, cluster: LocalCluster) -> None:
    schedctl(cluster, "schedule", "create", "hourly", "--every", "1h", "--cmd", "true")
    browser.get(f"{base}/schedules")
    browser.find_element(By.LINK_TEXT, "hourly").click()
    wait_for("the schedule's page", lambda: browser.current_url.endswith("/schedules/hourly"))
    browser.find_element(By.ID, "toggle").click()
    wait_for("paused", lambda: browser.find_element(By.ID, "sched-state").text == "paused")
    assert paused(cluster, "hourly")  # as the cluster holds it, signed and all
    browser.find_element(By.ID, "toggle").click()
    wait_for("active", lambda: browser.find_element(By.ID, "sched-state").text == "active")
    assert not paused(cluster, "hourly")


def test_submit_follow_read_and_cancel_in_a_browser(
    cluster: LocalCluster, console: str, browser: Any, tmp_path: Path
) -> None:
    mark = marker()
    hostile = "<script>window.pwned = 1</script>"
    job = submit_from_form(browser, console, f"echo '{hostile}'; echo done-{mark}")
    wait_for("SUCCEEDED", lambda: state_of(browser) == "SUCCEEDED")
    output = browser.find_element(By.ID, "output").text
    assert hostile in output and f"done-{mark}" in output  # shown as text ...
    assert browser.execute_script("return typeof window.pwned") == "undefined"  # ... not run
    assert hostile in browser.find_element(By.ID, "cmd").text

    browser.get(f"{console}/jobs")
    row = browser.find_element(By.CSS_SELECTOR, f'a[href="/jobs/{job}"]')
    row_text = row.find_element(By.XPATH, "./ancestor::tr").text
    assert "SUCCEEDED" in row_text
    row.click()
    wait_for("the job page again", lambda: browser.current_url.endswith(f"/jobs/{job}"))
    assert f"done-{mark}" in browser.find_element(By.ID, "output").text
    shoot(browser, "job", tmp_path)

    # A long job: its output shows up while it runs, then Cancel kills its process.
    after_sleep = tmp_path / f"after-{mark}"
    long_job = submit_from_form(
        browser, console, f"echo started-{mark}; sleep {mark}; touch {after_sleep}"
    )
    wait_for(
        "live output",
        lambda: f"started-{mark}" in browser.find_element(By.ID, "output").text,
    )
    wait_for("the job's process", lambda: live_processes_with(f"sleep {mark}"))
    assert state_of(browser) == "RUNNING"
    shoot(browser, "running", tmp_path)
    browser.find_element(By.ID, "cancel").click()
    wait_for("CANCELED", lambda: state_of(browser) == "CANCELED")
    assert browser.current_url.endswith(f"/jobs/{long_job}")
    # The job's shell names the mark too: once no process does, nothing of it can run.
    wait_for("its processes gone", lambda: not live_processes_with(str(mark)), 15)
    assert not after_sleep.exists()  # nothing of the job ran on after the cancel

    pause_and_resume_a_schedule(browser, console, cluster)
    for page in ("nodes", "jobs", "submit", "schedules"):
        browser.get(f"{console}/{page}")
        assert fits(browser), page
        shoot(browser, page, tmp_path)
    browser.get(f"{console}/nodes")
    assert "zone=a" in browser.find_element(By.ID, "nodes").text
    browser.set_window_size(*PHONE)
    for page in ("jobs", f"jobs/{job}", "submit"):
        browser.get(f"{console}/{page}")
        assert fits(browser), f"{page} on a phone"
    browser.get(f"{console}/jobs/{long_job}")
    shoot(browser, "phone-job", tmp_path)


def test_without_javascript_the_pages_still_read_and_submit(console: str) -> None:
    browser = start_chromium(javascript=False)
    try:
        mark = marker()
        job = submit_from_form(browser, console, f"sleep 1; echo plain-{mark}")
        # No script follows the output: the page refreshes itself until the job is final.
        wait_for("SUCCEEDED by refreshing", lambda: state_of(browser) == "SUCCEEDED", 40)
        assert f"plain-{mark}" in browser.find_element(By.ID, "output").text
        browser.get(f"{console}/jobs")
        assert browser.find_elements(By.CSS_SELECTOR, f'a[href="/jobs/{job}"]')
        browser.find_element(By.LINK_TEXT, "Fleet").click()
        wait_for("the fleet runs page", lambda: browser.current_url.endswith("/fleet"))
        assert "No fleet runs" in browser.find_element(By.ID, "runs").text
    finally:
        browser.quit()


def test_a_job_page_follows_the_output_across_a_failover(
    cluster: LocalCluster, console: str, browser: Any, tmp_path: Path
) -> None:
    mark, runs = marker(), tmp_path / "runs"
    # Each attempt numbers itself from a file: what the page shows says which one ran.
    cmd = f"n=$(($(cat {runs} 2>/dev/null || echo 0) + 1)); echo $n > {runs}; "
    cmd += f"echo run-$n-of-{mark}; sleep {mark}"
    browser.get(f"{console}/submit")
    browser.find_element(By.ID, "cmd").send_keys(cmd)
    retries = browser.find_element(By.NAME, "retries")
    retries.clear()
    retries.send_keys("1")
    browser.find_element(By.ID, "submit").click()
    wait_for("the job's page", lambda: "/jobs/" in browser.current_url)
    job = browser.current_url.rsplit("/", 1)[1]

    def output() -> str:
        return str(browser.find_element(By.ID, "output").text)

    wait_for("attempt 1's output", lambda: f"run-1-of-{mark}" in output())
    victim = json.loads(schedctl(cluster, "status", job, "--json"))["job"]["node"]
    cluster.agents[victim].kill()
    cluster.agents[victim].kill_orphans()  # outside systemd its job would outlive it
    # The same page, never reloaded by hand, goes on to attempt 2 on the other node.
    wait_for("attempt 2's output", lambda: f"run-2-of-{mark}" in output(), 60)
    assert f"run-1-of-{mark}" in output()
    wait_for("RUNNING again", lambda: state_of(browser) == "RUNNING")
    browser.find_element(By.ID, "cancel").click()
    wait_for("CANCELED", lambda: state_of(browser) == "CANCELED")
    wait_for("its processes gone", lambda: not live_processes_with(str(mark)), 15)


def click(browser: Any, element_id: str) -> None:
    """Click an element of a page that reloads itself: found afresh if it went stale."""
    wait_for(f"#{element_id} clicked", lambda: browser.find_element(By.ID, element_id).click() or 1)


def test_a_fleet_run_page_shows_its_hosts_links_its_parts_and_cancels(
    cluster: LocalCluster, console: str, browser: Any, tmp_path: Path
) -> None:
    mark = marker()
    after_sleep = tmp_path / f"after-{mark}"
    cmd = f"echo up-{mark}; sleep {mark}; touch {after_sleep}"
    group = schedctl(cluster, "run", "--nodes", "node1,node2", "--cmd", cmd).strip()

    def sleeps() -> int:  # the parts' own `sleep` processes (their shells name it too)
        found = live_processes_with(f"sleep {mark}")
        return sum(p.info["cmdline"] == ["sleep", str(mark)] for p in found)

    wait_for("both parts running", lambda: sleeps() == 2)
    # From the navigation to the list of runs, and from its row to the run's page.
    browser.get(f"{console}/jobs")
    browser.find_element(By.LINK_TEXT, "Fleet").click()
    wait_for("the fleet runs page", lambda: browser.current_url.endswith("/fleet"))
    (row,) = browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
    cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == group and cells[4] == "rolling out" and f"up-{mark}" in cells[2], cells
    assert fits(browser)
    shoot(browser, "fleets", tmp_path)
    browser.find_element(By.LINK_TEXT, group).click()
    wait_for("the run's page", lambda: browser.current_url.endswith(f"/fleet/{group}"))

    def hosts() -> list[list[str]]:
        rows = browser.find_elements(By.CSS_SELECTOR, "#hosts tbody tr")
        return [[c.text for c in r.find_elements(By.TAG_NAME, "td")] for r in rows]

    wait_for(
        "both hosts running",
        lambda: [h[:2] for h in hosts()] == [["node1", "running"], ["node2", "running"]],
    )
    assert fits(browser)
    shoot(browser, "fleet", tmp_path)
    # A host's part is one click away, and its page links back to the run.
    browser.find_element(By.LINK_TEXT, "node2").click()
    wait_for("the part's page", lambda: "/jobs/" in browser.current_url)
    assert state_of(browser) == "RUNNING"
    click(browser, "fleet")
    wait_for("the run's page again", lambda: browser.current_url.endswith(f"/fleet/{group}"))
    click(browser, "cancel")
    # The page reloads itself until the run has ended: every host canceled, by the agents.
    wait_for("ended", lambda: browser.find_element(By.ID, "group-state").text == "ended (canceled)")
    assert [h[:2] for h in hosts()] == [["node1", "canceled"], ["node2", "canceled"]]
    wait_for("its processes gone", lambda: not live_processes_with(str(mark)), 15)
    assert not after_sleep.exists()  # nothing of either part ran on after the cancel
    browser.set_window_size(*PHONE)
    browser.get(f"{console}/fleet/{group}")
    assert fits(browser), "the fleet run's page on a phone"
    browser.get(f"{console}/fleet")
    assert group in browser.find_element(By.ID, "runs").text and fits(browser), "runs, phone"
