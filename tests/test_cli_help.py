"""Every ``--help`` of the CLI is fast: it imports none of the heavy packages (issue: ``nasforge --help`` took 12 s
on a loaded machine). No time is measured; importing nothing heavy is what keeps help fast.

The help texts list registry names written out in the command files (printing help must not load the
registries); the last tests check those lists against the registries.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nasforge.cli import main

HEAVY = ("torch", "onnx", "onnxruntime", "optuna")

# Runs in a fresh interpreter: walks the parser, prints every command's help in turn, then reports the exit
# codes and which heavy packages got imported.
_WALK_ALL_HELP = '''
import argparse, contextlib, io, json, sys
from nasforge.cli import build_parser, main

def commands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                yield sub.prog.split()[1:]  # "nasforge prune meta-train" -> ["prune", "meta-train"]
                yield from commands(sub)

paths = [[], *commands(build_parser())]
codes = {}
for path in paths:
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        try:
            rc = main([*path, "--help"])
        except SystemExit as exc:
            rc = exc.code
    codes[" ".join(path)] = [rc, "usage: nasforge" in out.getvalue()]
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))
print(json.dumps({"codes": codes, "heavy": heavy}))
'''


def test_every_help_imports_no_heavy_package() -> None:
    res = subprocess.run([sys.executable, "-c", _WALK_ALL_HELP, *HEAVY], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    codes = report["codes"]
    for expected in ("", "run", "train", "search", "space describe", "profile", "export", "latency build-table",
                     "latency validate", "prune", "prune meta-train", "quantize", "data pack", "agent serve"):
        assert expected in codes, sorted(codes)
    failed = {path: got for path, got in codes.items() if got != [0, True]}
    assert not failed, f"--help that did not print usage and exit 0: {failed}"
    assert report["heavy"] == [], f"--help imported {report['heavy']} (commands: {sorted(codes)})"


def test_unknown_criterion_is_refused_at_parse_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "zoo:resnet8", "--out", "o", "--criterion", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--criterion: invalid choice: 'nope'" in err and "l2" in err, err


def test_help_name_lists_match_the_registries() -> None:
    import nasforge.quantize
    from nasforge.cli_prune import CRITERIA, ZOO_MODELS
    from nasforge.cli_quantize import CALIBRATIONS, GROUPS, METHODS, POLICIES, TARGETS
    from nasforge.prune import list_criteria, list_models

    assert sorted(ZOO_MODELS) == list_models()
    assert sorted(CRITERIA) == sorted([*list_criteria(), "gmn"])
    assert (METHODS, CALIBRATIONS, TARGETS) == (nasforge.quantize.METHODS, nasforge.quantize.CALIBRATIONS,
                                                nasforge.quantize.TARGETS)
    assert POLICIES == nasforge.quantize.POLICIES and GROUPS == tuple(nasforge.quantize.GROUP_DESCRIPTIONS)
