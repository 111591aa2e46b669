"""Each method's defaults work on any lake with enough checkpoints to be meaningful (issue 22:
``dual`` with defaults refused the demo lake's 31 checkpoints), and the scoring API's errors
name what the caller wrote: Python parameters for a Python caller, flags on the command line."""

from __future__ import annotations

import numpy as np
import pytest

import cld_lake
from cld_lake.errors import ScoringError
from cld_lake.score import compute_scores
from tests.conftest import lake_hash
from tests.test_methods import make_values, write_method_lake


def _lake(tmp_path, k: int, n: int = 60):
    values = make_values(k, n, k, 0.02)
    labels = np.random.default_rng(k).integers(0, 3, n)
    return write_method_lake(tmp_path / f"lake{k}", values, labels, 3, channels=("loss",))


def _scored(lake, method: str, **params):
    result = compute_scores(lake, method, store=False, **params)[method]
    return result.scores, result.provenance["parameters"]


@pytest.mark.parametrize("k", [20, 31, 45])
def test_dual_defaults_score_a_lake_of_20_to_66_checkpoints(tmp_path, k) -> None:
    """The demo lake's 31 checkpoints: the early window holds 4, the default window is 4."""
    lake = _lake(tmp_path, k)
    scores, params = _scored(lake, "dual")
    early = int(np.floor(0.15 * k))
    assert params == {"early": 0.15, "early_checkpoints": early, "window_length": early}
    explicit, _ = _scored(lake, "dual", window_length=early)
    np.testing.assert_array_equal(scores, explicit)


@pytest.mark.parametrize(("method", "k"), [("dual", 70), ("dual", 90), ("dynunc", 12)])
def test_where_the_old_defaults_worked_the_scores_are_the_same(tmp_path, method, k) -> None:
    """The paper's J = 10 whenever the method's checkpoints hold 10: bit-identical to
    ``window_length=10``, as the old default computed them."""
    lake = _lake(tmp_path, k)
    scores, params = _scored(lake, method)
    assert params["window_length"] == 10
    explicit, _ = _scored(lake, method, window_length=10)
    np.testing.assert_array_equal(scores, explicit)


def test_dynunc_defaults_to_every_selected_checkpoint_below_ten(tmp_path) -> None:
    lake = _lake(tmp_path, 6)
    scores, params = _scored(lake, "dynunc")
    assert params == {"window_length": 6}
    np.testing.assert_array_equal(scores, _scored(lake, "dynunc", window_length=6)[0])
    scores, params = _scored(lake, "dynunc", checkpoints="0:3")
    assert params == {"window_length": 3}


def test_below_three_checkpoints_the_default_refuses_with_the_fixes(tmp_path) -> None:
    lake = _lake(tmp_path, 14)  # dual: 15% of 14 = 2 checkpoints in the early window
    before = lake_hash(lake.path)
    with pytest.raises(ScoringError) as err:
        compute_scores(lake, "dual")
    assert str(err.value) == (
        "method='dual' needs at least 3 checkpoints; its early window (early=0.15 of 14) holds "
        "2; use window_length=2, early=0.22 or more checkpoints (record more, or widen "
        "checkpoints=)"
    )
    # each fix it names works
    assert _scored(lake, "dual", window_length=2)[1]["window_length"] == 2
    assert _scored(lake, "dual", early=0.22)[1] == {
        "early": 0.22,
        "early_checkpoints": 3,
        "window_length": 3,
    }
    with pytest.raises(ScoringError, match=r"'dynunc' needs at least 3 checkpoints; 2 are sel"):
        compute_scores(lake, "dynunc", checkpoints="0:2")
    assert lake_hash(lake.path) == before


@pytest.mark.parametrize(
    ("params", "python", "flags"),
    [
        # the CLI's own range checks answer first there, naming the flag
        ({"method": "dual", "early": 1.5}, "early=1.5: give", "'--early': 1.5"),
        ({"method": "dual", "window_length": 1}, "window_length=1: a window", "'--window-length'"),
        (
            {"method": "dynunc", "window_length": 30},
            "method='dynunc' needs at least 30 checkpoints; 20 are selected; use "
            "window_length=20 (or less) or more checkpoints (record more, or widen checkpoints=)",
            "--method dynunc needs at least 30 checkpoints; 20 are selected; use "
            "--window-length 20 (or less) or more checkpoints (record more, or widen "
            "--checkpoints)",
        ),
        ({"method": "nosuch"}, "method='nosuch': choose among", "'--method': 'nosuch'"),
        ({"method": "aum"}, "method='aum' needs the 'margin' channel", "--method aum needs the"),
        ({"name": "1st"}, "name='1st': a score name is", "--name 1st: a score name is"),
        (
            {"method": "mean_loss", "early": 0.5},
            "early= applies to method='early_loss' / 'dual' / 'el2n'; none of them is in "
            "method='mean_loss'",
            "--early applies to --method early_loss / dual / el2n; none of them is in --method "
            "mean_loss",
        ),
        (
            {"method": "aum", "engine": "duckdb"},
            "engine='duckdb' runs method='cld' alone; for method='aum' use engine='numpy' or "
            "'dask'",
            "--engine duckdb runs --method cld alone; for --method aum use --engine numpy or dask",
        ),
        (
            {"reference": "nearest"},
            "reference='nearest': use group (its alias: class), global or split:NAME",
            "'--reference'",
        ),
    ],
)
def test_errors_name_the_python_parameter_or_the_flag(tmp_path, cli, params, python, flags):
    """One message, spelled for its caller: ``cld_lake.score(..., early=...)`` is told
    ``early=``, ``cld-lake score --early`` is told ``--early``."""
    lake = _lake(tmp_path, 20)
    before = lake_hash(lake.path)
    with pytest.raises(ScoringError) as err:
        cld_lake.score(lake, **params)
    flag_of = {key: f"--{key.replace('_', '-')}" for key in params}
    assert python in str(err.value) and not any(f in str(err.value) for f in flag_of.values())
    args = []
    for key, value in params.items():
        args += [flag_of[key], str(value)]
    r = cli("score", lake.path, *args)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert flags in r.err and not any(f"{key}=" in r.err for key in params), r.err
    assert lake_hash(lake.path) == before
