"""A miniature benchmark end to end (a few training steps per run): tables, resume/skip, both protocols."""

import hashlib
import json

import pytest

from partialseg.errors import PartialsegError
from partialseg.experiments.benchmark import BenchmarkPreset, MethodSpec, run_benchmark

TINY = BenchmarkPreset(
    train_cases=3, test_cases=2, phantom="cpu",
    overrides=(
        "train.steps=2", "train.batch_size=1", "train.patch_size=[32,32,32]", "train.val_every=0",
        "train.checkpoint_every=1", "network.options={base_channels: 4}", "data.val_fraction=0.34",
        "train.num_threads=1",
    ),
)


def test_method_spec_parsing():
    m = MethodSpec.parse("tct:threshold=mean, weighting=none")
    assert m.name == "tct" and m.label == "tct[threshold=mean,weighting=none]"
    assert m.overrides() == ["method.name=tct", "method.options.threshold=mean", "method.options.weighting=none"]
    assert "/" not in m.folder and "[" not in m.folder
    assert MethodSpec.parse("marginal").label == "marginal"
    with pytest.raises(PartialsegError):
        MethodSpec.parse("tct:threshold")


def test_ipnp_protocol_tables_and_rerun_skips(tmp_path):
    out = tmp_path / "bench"
    res = run_benchmark(out, keeps=[0.5], methods=["marginal", "exclusion:exclusion_weight=0.5"], preset=TINY,
                        progress=False)
    assert res.settings == ["upper_bound", "keep0.5"]
    assert set(res.results) == {("upper_bound", "full"), ("keep0.5", "marginal"), ("keep0.5", "exclusion[exclusion_weight=0.5]")}
    md = (out / "benchmark.md").read_text()
    assert "| spleen |" in md and "**mean**" in md and "% of upper bound" in md
    assert (out / "benchmark.csv").exists() and (out / "benchmark_dsc.png").stat().st_size > 1000
    recs = json.loads((out / "benchmark.json").read_text())
    assert {r["method"] for r in recs} == {"full", "marginal", "exclusion[exclusion_weight=0.5]"}
    # the partial training set really is partial; the test set was never trained on
    partial = json.loads((out / "data" / "keep0.5" / "dataset.json").read_text())
    assert partial["annotated_classes"] and partial["reference_labels"] == "labelsRef"
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    train_imgs = {digest(p) for p in (out / "data" / "train_full" / "imagesTr").iterdir()}
    test_imgs = {digest(p) for p in (out / "data" / "test" / "imagesTr").iterdir()}
    assert len(test_imgs) == 2 and not train_imgs & test_imgs
    model = out / "runs" / "keep0.5" / "marginal" / "model.pt"
    before = model.stat().st_mtime_ns
    run_benchmark(out, keeps=[0.5], methods=["marginal"], preset=TINY, progress=False)
    assert model.stat().st_mtime_ns == before  # finished work is skipped
    # ... but never reported under another configuration (here: an override the run was not made with)
    with pytest.raises(PartialsegError, match=r"another configuration.*optim.lr"):
        run_benchmark(out, keeps=[0.5], methods=["marginal"], preset=TINY, overrides=["optim.lr=0.5"], progress=False)
    # execution settings may differ
    run_benchmark(out, keeps=[0.5], methods=["marginal"], preset=TINY, overrides=["train.num_threads=2"], progress=False)


def test_ipnp_adopts_the_marginal_run_as_round_0(tmp_path):
    out = tmp_path / "bench"
    res = run_benchmark(out, keeps=[0.5], methods=["ipnp:rounds=1,tau=0.0", "marginal"], preset=TINY, upper_bound=False,
                        progress=False)
    assert res.methods["keep0.5"] == ["marginal", "ipnp[rounds=1,tau=0.0]"]  # marginal first, whatever the order given
    runs = out / "runs" / "keep0.5"
    r0 = runs / "ipnp__rounds-1_tau-0.0" / "round_0"
    assert (r0 / "model.pt").read_bytes() == (runs / "marginal" / "model.pt").read_bytes()
    assert not (r0 / "checkpoints").exists()


def test_rerun_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "bench"
    run_benchmark(out, keeps=[0.5], methods=[], preset=TINY, upper_bound=False, progress=False)  # data only
    with pytest.raises(PartialsegError, match="other settings"):
        run_benchmark(out, keeps=[0.5], methods=["marginal"], preset=TINY, seed=1, upper_bound=False, progress=False)


def test_tct_protocol_uses_five_organs_and_groups(tmp_path):
    out = tmp_path / "bench"
    res = run_benchmark(out, methods=["marginal"], preset=TINY, protocol="tct", progress=False)
    assert res.settings == ["upper_bound", "groups"]
    organs = list(res.results[("groups", "marginal")]["per_organ"])
    assert sorted(organs) == ["kidney_left", "kidney_right", "liver", "pancreas", "spleen"]
    groups = json.loads((out / "data" / "groups" / "dataset.json").read_text())
    assert set(groups["case_groups"].values()) <= {"kits", "msd_liver", "msd_pancreas", "msd_spleen", "chaos"}
