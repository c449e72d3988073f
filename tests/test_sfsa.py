from __future__ import annotations

import json

import pandas as pd
from training_helpers import assert_prediction_columns, write_cohort

from lungfusion.training.sfsa import (
    CandidateResult,
    exhaustive_record,
    exhaustive_search,
    nonempty_subsets,
    sequential_forward_search,
)


def _fake_trainer(losses: dict[tuple[int, ...], float], calls: list):
    """Deterministic stand-in: a fixed loss per position set; records the warm-start source."""

    def train(positions, source):
        calls.append((positions, None if source is None else source.positions))
        return CandidateResult(val_loss=losses[positions], epochs=3, state=positions)

    return train


def test_search_adds_positions_while_the_loss_falls():
    losses = {(): 1.0, (0,): 0.9, (1,): 0.7, (2,): 0.8, (3,): 1.1}
    losses |= {(0, 1): 0.75, (1, 2): 0.6, (1, 3): 0.65}
    losses |= {(0, 1, 2): 0.61, (1, 2, 3): 0.62}
    calls = []
    result = sequential_forward_search(_fake_trainer(losses, calls), positions=(0, 1, 2, 3))
    assert result.best.positions == (1, 2)
    assert [c[0] for c in calls] == [(), (0,), (1,), (2,), (3,), (0, 1), (1, 2), (1, 3),
                                     (0, 1, 2), (1, 2, 3)]  # fmt: skip
    # every candidate of a step is warm-started from the best so far
    assert {c[1] for c in calls[1:5]} == {()}
    assert {c[1] for c in calls[5:8]} == {(1,)}
    assert {c[1] for c in calls[8:]} == {(1, 2)}
    table = result.table()
    assert list(table.columns) == [
        "step", "positions", "warm_start_from", "val_loss", "epochs", "best_of_step", "chosen",
    ]  # fmt: skip
    assert table.positions.tolist()[:3] == ["none", "0", "1"]
    assert table.warm_start_from.tolist()[:2] == ["scratch", "none"]
    chosen = table[table.chosen]
    assert chosen.positions.tolist() == ["1+2"]
    # the choice follows from the losses: the lowest loss of all candidates tried here
    assert chosen.val_loss.iloc[0] == table.val_loss.min()


def test_search_keeps_the_baseline_when_no_position_helps():
    losses = {(): 0.5, (0,): 0.6, (1,): 0.5, (2,): 0.7}
    calls = []
    result = sequential_forward_search(_fake_trainer(losses, calls), positions=(0, 1, 2))
    assert result.best.positions == ()  # a tie does not count as an improvement
    assert len(result.candidates) == 4


def test_search_stops_when_all_positions_are_used():
    losses = {(): 1.0, (0,): 0.5, (1,): 0.6, (0, 1): 0.4}
    result = sequential_forward_search(_fake_trainer(losses, []), positions=(0, 1))
    assert result.best.positions == (0, 1)
    assert len(result.candidates) == 4


def test_exhaustive_search_ranks_the_greedy_choice_among_every_subset():
    """Every non-empty subset trains once from scratch; the baseline is the greedy search's own,
    and a warm-started greedy candidate is never taken for the same positions from scratch."""
    warm = {(): 1.0, (0,): 0.9, (1,): 0.7, (2,): 0.8, (0, 1): 0.75, (1, 2): 0.6, (0, 1, 2): 0.65}
    scratch = {(0,): 0.95, (1,): 0.85, (2,): 0.9, (0, 1): 0.8, (0, 2): 0.55, (1, 2): 0.7}
    scratch[(0, 1, 2)] = 0.65
    calls = []

    def train(positions, source):
        calls.append((positions, None if source is None else source.positions))
        loss = scratch[positions] if source is None and positions else warm[positions]
        return CandidateResult(val_loss=loss, epochs=len(positions) + 1)

    greedy = sequential_forward_search(train, positions=(0, 1, 2))
    assert greedy.best.positions == (1, 2)
    n_greedy = len(calls)
    table = exhaustive_search(train, positions=(0, 1, 2), baseline=greedy.candidates[0])
    exhaustive_calls = calls[n_greedy:]
    assert sorted(exhaustive_calls) == sorted((s, None) for s in nonempty_subsets((0, 1, 2)))
    assert len(exhaustive_calls) == len(set(exhaustive_calls)) == 2**3 - 1
    assert list(table.columns) == ["positions", "val_loss", "epochs", "rank"]
    assert table.positions.tolist() == ["0+2", "0+1+2", "1+2", "0+1", "1", "2", "0", "none"]
    assert table["rank"].tolist() == list(range(1, 9))
    losses = dict(zip(table.positions, table.val_loss, strict=True))
    assert losses["1+2"] == 0.7 and losses["none"] == 1.0  # from scratch; the baseline reused
    record = exhaustive_record(table, greedy.best.positions)
    assert record["greedy_label"] == "1+2" and record["best_label"] == "0+2"
    assert record["rank"] == 3 and record["n_subsets"] == 8
    assert abs(record["val_loss_gap"] - 0.15) < 1e-12


def test_exhaustive_ranks_ties_alike_and_the_best_choice_first():
    table = exhaustive_search(
        lambda positions, source: CandidateResult(val_loss=0.5, epochs=1),
        positions=(0, 1),
        baseline=sequential_forward_search(
            lambda positions, source: CandidateResult(val_loss=0.5, epochs=1), positions=(0, 1)
        ).best,
    )
    assert table["rank"].tolist() == [1, 1, 1, 1]
    record = exhaustive_record(table, ())
    assert record["rank"] == 1 and record["val_loss_gap"] == 0.0


def _sfsa_command(tmp_path, **train_settings):
    """Write a tiny cohort and its folds, run ``lungfusion sfsa`` on fold 1; its out dir."""
    from lungfusion.cli import main

    roi_dir, sheet = write_cohort(tmp_path, n=12, without_pet=(2,))
    folds = tmp_path / "splits" / "folds.tsv"
    train = {"epochs": 1, "batch_size": 4, "widths": [2, 4], "device": "cpu", **train_settings}
    params = {"splits": {"n_folds": 2, "validation_fraction": 0.3, "seed": 0}, "train": train}
    common = ["--params", json.dumps(params)]
    io = ["--sample-sheet", str(sheet), "--roi-dir", str(roi_dir)]
    assert main([*common, "splits", *io, "--out", str(folds)]) == 0
    out = tmp_path / "sfsa" / "fold1"
    argv = [*common, "sfsa", "--fold", "1", "--folds", str(folds), *io, "--out-dir", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    return out


def test_sfsa_command_writes_search_and_scores_the_choice(tmp_path):
    out = _sfsa_command(tmp_path)
    search = pd.read_csv(out / "search.tsv", sep="\t", dtype={"positions": str})
    best = json.loads((out / "best.json").read_text())
    assert search.positions.iloc[0] == "none" and len(search) >= 5
    assert search[search.chosen].positions.tolist() == [best["label"]]
    assert best["val_loss"] == search.val_loss.min()  # the loss fell at every accepted step
    train_dir = tmp_path / "train" / "sfsa" / "fold1"
    summary = json.loads((train_dir / "summary.json").read_text())
    assert summary["model"] == "sfsa" and summary["excluded_missing_modality"]["count"] == 1
    assert_prediction_columns(train_dir)
    assert (train_dir / "val_predictions.tsv").is_file() and (train_dir / "model.pt").is_file()
    assert "exhaustive" not in best and not (out / "exhaustive.tsv").exists()  # off by default


def test_sfsa_command_with_exhaustive_search_keeps_the_greedy_choice(tmp_path):
    from lungfusion.models import MMTM_POSITIONS

    out = _sfsa_command(tmp_path, sfsa_exhaustive=True)
    m = len(MMTM_POSITIONS)
    search = pd.read_csv(out / "search.tsv", sep="\t", dtype={"positions": str})
    table = pd.read_csv(out / "exhaustive.tsv", sep="\t", dtype={"positions": str})
    best = json.loads((out / "best.json").read_text())
    subsets = {"+".join(map(str, s)) for s in nonempty_subsets(MMTM_POSITIONS)}
    assert len(table) == 2**m and set(table.positions) == subsets | {"none"}
    for label in subsets:  # each subset's own run from scratch, beside the greedy candidates
        assert (out / "candidates" / f"scratch-{label}" / "model.pt").is_file()
    baseline = search.val_loss[search.positions == "none"].iloc[0]
    assert table.val_loss[table.positions == "none"].iloc[0] == baseline  # reused, not retrained
    assert not (out / "candidates" / "scratch-none").exists()
    record = best["exhaustive"]
    assert record["n_subsets"] == 2**m and record["greedy_label"] == best["label"]
    greedy_row = table[table.positions == best["label"]].iloc[0]
    assert record["rank"] == greedy_row["rank"] == 1 + (table.val_loss < greedy_row.val_loss).sum()
    assert record["best_label"] == table.positions.iloc[0]
    assert record["val_loss_gap"] == greedy_row.val_loss - table.val_loss.min() >= 0
    summary = json.loads((tmp_path / "train" / "sfsa" / "fold1" / "summary.json").read_text())
    assert summary["sfsa"]["label"] == search[search.chosen].positions.iloc[0]  # still greedy
