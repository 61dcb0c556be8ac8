import pytest

from partialseg.pseudolabel.tau import choose_tau


def _row(tau, dsc, added, correct):
    return {"tau": tau, "dsc": dsc, "specialist_dsc": 0.5, "added": added, "added_correct": correct,
            "removed": 0, "removed_wrong": 0}


def test_choose_tau_by_mean_dsc_and_counts_added_voxels():
    rows = [_row(0.1, 0.7, 10, 8), _row(0.1, 0.5, 0, 0), _row(0.5, 0.6, 0, 0), _row(0.5, 0.6, 0, 0),
            _row(0.3, 0.6, 4, 1), _row(0.3, 0.6, 0, 0)]
    tau, summary = choose_tau(rows)
    by = {s["tau"]: s for s in summary}
    assert [s["tau"] for s in summary] == [0.1, 0.3, 0.5]
    assert by[0.1]["added"] == 10 and by[0.1]["added_precision"] == pytest.approx(0.8)
    assert by[0.5]["added_precision"] is None and by[0.3]["added_precision"] == pytest.approx(0.25)
    # all three average 0.6: the tie goes to the largest τ, the paper's refinement when nothing is gained
    assert tau == 0.5
    rows.append(_row(0.1, 0.9, 0, 0))
    assert choose_tau(rows)[0] == 0.1


def test_sweep_tau_on_the_validation_cases_of_a_tiny_run(tmp_path, small_space):
    from typer.testing import CliRunner

    from partialseg.cli import app
    from partialseg.pseudolabel.tau import sweep_tau
    from tests.conftest import write_block_dataset

    ds = write_block_dataset(tmp_path / "blocks", small_space, n_cases=4, annotated={"case_000": ["liver"]})
    run = tmp_path / "run"
    args = ["train", str(ds), "--out", str(run), "--method", "marginal"]
    for s in ["train.steps=2", "train.batch_size=1", "train.patch_size=[32,16,16]", "train.val_every=0",
              "network.options={base_channels: 4}", "data.spacing=[2.0,2.5,3.0]", "train.num_threads=1",
              "data.val_fraction=0.5"]:
        args += ["--set", s]
    assert CliRunner().invoke(app, args).exit_code == 0
    rows = sweep_tau(run, [0.0, 0.5], padding=1, dilation=2, progress=False)
    import json

    val = json.loads((run / "split.json").read_text())["validation"]
    assert rows and {r["case"] for r in rows} <= set(val)
    assert {r["tau"] for r in rows} == {0.0, 0.5}
    for r in rows:
        assert 0.0 <= r["dsc"] <= 1.0 and 0 <= r["added_correct"] <= r["added"]
        if r["tau"] == 0.5:
            assert r["added"] == 0  # τ ≥ 0.5 keeps the pseudo-label inside the specialist's argmax
