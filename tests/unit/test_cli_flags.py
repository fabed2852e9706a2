"""One flag name, one meaning, across every `rayfleet` command (issue 13 items 3 and 4).

The click tree typer builds is walked the way `--help` sees it. A flag that several commands
take is declared once (cli/options.py, cli/output.py) and so has one help text everywhere;
where commands word it for their own use, the flag is listed below with the one thing it
means, so a new command that gives an old name a second meaning fails here until someone
decides.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import typer

from rayfleet.cli.main import app

pytestmark = pytest.mark.unit

# Flags whose help is worded per command, each with the one thing it names everywhere.
WORDED_PER_COMMAND = {
    "--storage": "a storage root or URI (where runs, sweeps, datasets and logs live)",
    "--address": "the Ray dashboard URL",
    "--token-file": "the Ray auth token's file",
    "--run": "a run's name under the storage root",
    "--sweep": "a sweep's name under the storage root",
    "--dataset": "a dataset name under <storage>/datasets/ or its URI",
    "--follow": "keep streaming a job's log until it ends",
    "--force": "resume a run's checkpoint written by a different training",
    "--overwrite": "replace what is already at the destination",
    "--namespace": "a Kubernetes namespace",
    "--retries": "attempts again after a failure",
    "--shards": "Parquet files in a dataset's train split",
    "--timeout": "seconds to wait",
}


def flag_uses() -> dict[str, dict[str, str]]:
    """{--flag: {command path: help}} for every long option of every command."""
    uses: dict[str, dict[str, str]] = defaultdict(dict)

    def walk(command, path: str) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())
        for param in command.params:
            if param.param_type_name == "option" and not param.hidden:
                for opt in param.opts:
                    if opt.startswith("--"):
                        uses[opt][path] = param.help or ""

    walk(typer.main.get_command(app), "")
    return uses


def test_a_flag_several_commands_take_is_declared_once_or_listed_with_its_meaning():
    shared = {flag: by_cmd for flag, by_cmd in flag_uses().items() if len(by_cmd) > 1}
    assert {"--output", "--set", "--address", "--context", "--token-file"} <= set(shared)
    worded = {
        flag: by_cmd
        for flag, by_cmd in shared.items()
        if len(set(by_cmd.values())) > 1 and flag not in WORDED_PER_COMMAND
    }
    assert worded == {}, "declare these once in cli/options.py, or list their one meaning"
    unused = set(WORDED_PER_COMMAND) - set(shared)
    assert unused == set(), "no longer taken by several commands: drop them from the list"


def test_every_flag_has_help():
    missing = sorted(
        f"{cmd} {flag}" for flag, by_cmd in flag_uses().items() for cmd, text in by_cmd.items()
        if not text.strip()
    )  # fmt: skip
    assert missing == []


def test_the_ray_token_and_serves_token_have_their_own_names():
    uses = flag_uses()
    assert all("Ray auth token" in text for text in uses["--token-file"].values())
    assert set(uses["--serve-token-file"]) == {"serve start", "predict"}
    assert all("bearer token" in text for text in uses["--serve-token-file"].values())
