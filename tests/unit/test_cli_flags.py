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


# ------------------------------------------------- flags declared on the options they fill


def test_import_flags_are_the_import_options_fields():
    from dataclasses import fields

    from rayfleet.data.options import ImportOptions

    uses = flag_uses()
    declared = {f"--{f.name.replace('_', '-')}" for f in fields(ImportOptions)}
    taken = {flag for flag, by_cmd in uses.items() if "data import source" in by_cmd}
    assert declared == taken - {"--output"}
    # digits shares the split's flags, declared once
    for flag in ("--seed", "--val-fraction"):
        assert uses[flag]["data import digits"] == uses[flag]["data import source"]


def test_the_library_call_is_checked_as_the_flag_is():
    from rayfleet.data.options import ImportOptions
    from rayfleet.errors import BadInputError

    with pytest.raises(BadInputError, match=r"^--vocab-size 2: must be >= 3$"):
        ImportOptions(vocab_size=2)
    with pytest.raises(BadInputError, match=r"^--val-fraction 0.9: must be >= 0.05 and <= 0.5$"):
        ImportOptions(val_fraction=0.9)


def test_options_from_parses_text_and_keeps_defaults():
    from rayfleet.data.options import IMPORT_FLAGS, ImportOptions
    from rayfleet.flags import options_from

    got = options_from(
        ImportOptions, IMPORT_FLAGS, {"features": "a, b,,c", "size": "32x16", "shards": None}
    )
    assert got == ImportOptions(features=["a", "b", "c"], size=(32, 16))
    assert options_from(ImportOptions, IMPORT_FLAGS, {}) == ImportOptions()


def test_a_bad_flag_value_is_one_line_and_exit_2(tmp_path):
    from typer.testing import CliRunner

    (tmp_path / "t.csv").write_text("x,y\n1,0\n2,1\n")
    args = ["data", "import", str(tmp_path / "t.csv"), str(tmp_path / "out"), "--label", "y"]
    result = CliRunner().invoke(app, [*args, "--size", "3"])
    assert result.exit_code == 2
    assert "--size '3': use HxW with positive whole numbers, e.g. 32x32" in result.output
    assert not (tmp_path / "out").exists()
