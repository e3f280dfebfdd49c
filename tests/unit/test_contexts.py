"""schedctl's config file: a bad one names the file, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from schedagent.ctl.contexts import Context, chosen_context, load_config


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.yaml"
    monkeypatch.setenv("SCHEDCTL_CONFIG", str(path))
    return path


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("contexts: {a: {nats: []}}", "contexts.a.nats must be a URL or a list of URLs"),
        ("contexts: {a: {nats: x, url: y}}", "contexts.a: unknown key(s) url"),
        ("contexts: {a: {nats: 'nats://u:p@h:4222'}}", "put user:password in a credentials"),
        ("contexts: {a: {nats: x, prefix: 3}}", "contexts.a.prefix must be a string"),
        ("- a", "must be a mapping with contexts: and current:"),
        ("contexts: [a]", "contexts must map names to clusters"),
    ],
)
def test_a_bad_config_names_file_key_and_problem(config: Path, text: str, problem: str) -> None:
    config.write_text(text)
    with pytest.raises(click.UsageError) as caught:
        load_config()
    assert str(config) in caught.value.message and problem in caught.value.message


def test_no_file_no_context_and_the_current_one_otherwise(config: Path) -> None:
    assert chosen_context(None) is None
    config.write_text("current: b\ncontexts: {a: {nats: n1}, b: {nats: [n2, n3], prefix: p}}\n")
    assert chosen_context(None) == Context("b", ("n2", "n3"), prefix="p")
    assert chosen_context("a") == Context("a", ("n1",))


def test_credentials_go_into_every_url(config: Path, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.write_text("ops:s3cr.et~x\n")
    creds.chmod(0o600)
    context = Context("a", ("nats://h1:4222", "tls://h2:4222"), credentials=str(creds))
    assert context.urls() == "nats://ops:s3cr.et~x@h1:4222,tls://ops:s3cr.et~x@h2:4222"
    for bad in ("no-colon\n", "ops:p@ss\n", ":nouser\n", ""):
        creds.write_text(bad)
        with pytest.raises(click.UsageError, match="must hold user:password"):
            context.urls()
