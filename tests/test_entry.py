"""The shared entry-point plumbing: run options and one-line user errors."""

import argparse

import pytest

from claimbench.entry import add_run_options, run_entry


def test_run_options_defaults_and_user_error_exit(capsys):
    ap = argparse.ArgumentParser()
    add_run_options(ap)
    seen = {}

    def run(args):
        seen.update(vars(args))
        raise ValueError("config: lr: -1 is not positive")

    with pytest.raises(SystemExit) as exc:
        run_entry(ap, run, ["--seed", "3"])
    assert exc.value.code == 2
    assert seen == {"scale": "tiny", "seed": 3, "threads": 1, "device": "cpu"}
    assert capsys.readouterr().err.strip() == "error: config: lr: -1 is not positive"


def test_scale_none_leaves_scale_to_the_caller_and_bugs_propagate():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", required=True)
    add_run_options(ap, scale=None)

    def run(args):
        raise KeyError("a bug, not a user error")

    with pytest.raises(KeyError):
        run_entry(ap, run, ["--scale", "small"])
