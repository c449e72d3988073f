"""The fusion-depth grid: cell names, the network each cell builds, the report's heat map."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lungfusion.fusion_grid import grid_names, grid_widths, parse_grid_name

torch = pytest.importorskip("torch")


def test_every_cell_has_a_name_that_parses_back():
    names = grid_names({"stages": [1, 2, 5], "blocks": [1, 3]})
    assert len(names) == 6 and len(set(names)) == 6
    assert [parse_grid_name(n) for n in names] == [(1, 1), (1, 3), (2, 1), (2, 3), (5, 1), (5, 3)]
    assert grid_names(None) == [] and parse_grid_name("multistage_L3") is None
    assert grid_widths([4, 8, 16], 2) == [4, 8] and grid_widths([4, 8], 4) == [4, 8, 16, 32]


@pytest.mark.parametrize(("stages", "blocks"), [(1, 1), (2, 3), (4, 2)])
def test_a_cell_builds_the_multistage_network_of_its_depth(stages, blocks):
    from lungfusion.models import build_model, required_modalities

    name = f"multistage_L{stages}_N{blocks}"
    model = build_model(name, n_classes=2, in_shape=(16, 32, 32),
                        widths=grid_widths([4, 8, 16], stages), blocks_per_stage=blocks)  # fmt: skip
    assert required_modalities(name) == {"ct", "pet"}
    assert len(model.fusion) == stages  # a fusion block after every stage
    batch = {"ct": torch.rand(2, 1, 16, 32, 32), "pet": torch.rand(2, 1, 16, 32, 32),
             "has_pet": torch.ones(2, dtype=torch.bool)}  # fmt: skip
    assert model(batch).shape == (2, 2)


def test_the_report_draws_the_grid_and_outlines_the_cell_chosen_on_validation(tmp_path):
    from lungfusion.report.build import _fusion_grid

    rows, losses = [], {(1, 1): 0.7, (1, 2): 0.5, (2, 1): 0.6, (2, 2): 0.9}
    for (stages, blocks), loss in losses.items():
        name = f"multistage_L{stages}_N{blocks}"
        rows.append({"model": name, "metric": "auroc", "value": 0.6 + 0.1 * stages})
        for fold in (0, 1):
            folder = tmp_path / "train" / name / f"fold{fold}"
            folder.mkdir(parents=True)
            (folder / "summary.json").write_text(json.dumps({"best_val_loss": loss + 0.01 * fold}))
    rows.append({"model": "ct", "metric": "auroc", "value": 0.9})
    table, chosen = _fusion_grid(tmp_path, pd.DataFrame(rows))
    assert chosen == (1, 2)  # the lowest validation loss, not the best test AUROC
    assert table.shape == (2, 2) and table.loc[2, 1] == pytest.approx(0.8)
