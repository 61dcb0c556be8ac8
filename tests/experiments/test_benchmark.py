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
    assert MethodSpec.parse("marginal:train.steps=5,ce_weight=2").overrides() == [
        "method.name=marginal", "train.steps=5", "method.options.ce_weight=2"]
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
    # balance="equal": the paper's proportions need 102 phantoms (tested in tests/data/test_simulate.py)
    res = run_benchmark(out, methods=["marginal"], preset=TINY, protocol="tct", balance="equal", progress=False)
    assert res.settings == ["upper_bound", "groups"]
    organs = list(res.results[("groups", "marginal")]["per_organ"])
    assert sorted(organs) == ["kidney_left", "kidney_right", "liver", "pancreas", "spleen"]
    groups = json.loads((out / "data" / "groups" / "dataset.json").read_text())
    assert set(groups["case_groups"].values()) <= {"kits", "msd_liver", "msd_pancreas", "msd_spleen", "chaos"}


def test_seeds_summary_with_matched_steps(tmp_path):
    import yaml

    from partialseg.experiments.headline import run_seeds

    out = tmp_path / "bench"
    summary = run_seeds(out, [0, 1], methods=["full", "marginal", "ipnp:rounds=1,steps_per_round=1,tau=0.0"],
                        keeps=[0.5], preset=TINY, match_steps=True, progress=False)
    runs = out / "seed_1" / "runs"
    steps = lambda run: yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"]  # noqa: E731
    # IPnP: 2 steps of round 0 + 1 round of 1 step; everyone else, the upper bound too, trains 3
    assert steps(runs / "upper_bound" / "full") == 3 and steps(runs / "keep0.5" / "marginal") == 3
    assert steps(runs / "keep0.5" / "full") == 3 and steps(runs / "keep0.5" / "marginal@2") == 2
    ipnp = runs / "keep0.5" / "ipnp__rounds-1_steps_per_round-1_tau-0.0"
    assert (ipnp / "round_0" / "model.pt").read_bytes() == (runs / "keep0.5" / "marginal@2" / "model.pt").read_bytes()
    data = json.loads((out / "summary.json").read_text())
    rows = {(r["setting"], r["method"]): r for r in data["rows"]}
    assert set(rows) == {("upper_bound", "full"), ("keep0.5", "marginal@2"), ("keep0.5", "full"),
                         ("keep0.5", "marginal"), ("keep0.5", "ipnp[rounds=1,steps_per_round=1,tau=0.0]")}
    full = rows[("keep0.5", "full")]
    assert len(full["dsc_per_seed"]) == 2 and full["n_pairs"] == 4  # 2 seeds x 2 test cases
    # the per-case differences are recomputed from the two runs' test evaluations
    diffs = []
    for s in (0, 1):
        ev = {m: json.loads((out / f"seed_{s}" / "runs" / "keep0.5" / m / "test_eval.json").read_text())
              for m in ("full", "marginal")}
        for case in ev["full"]["per_case"]:
            vals = {m: [o["dsc"] for o in ev[m]["per_case"][case]["organs"].values() if o["dsc"] is not None]
                    for m in ev}
            diffs.append(sum(vals["full"]) / len(vals["full"]) - sum(vals["marginal"]) / len(vals["marginal"]))
    assert full["delta_dsc_mean"] == pytest.approx(sum(diffs) / 4)
    assert "delta_dsc_mean" not in rows[("keep0.5", "marginal")]
    md = summary.read_text()
    assert "Wilcoxon" in md and "| keep0.5 | full |" in md and "missed / spurious" in md
    # the archive (no models, predictions or data) gives the same summary
    from partialseg.experiments.headline import archive_results, summarise_seeds

    arch = archive_results(out, [0, 1], tmp_path / "archive")
    assert not list(arch.rglob("*.pt")) and not list(arch.rglob("*.nii.gz"))
    assert summarise_seeds(arch, [0, 1])["rows"] == data["rows"]
    with pytest.raises(PartialsegError, match="exists"):
        archive_results(out, [0, 1], arch)


def test_transfer_setting_fine_tunes_every_method_against_scratch(tmp_path):
    import dataclasses

    from partialseg.evaluation.evaluate import case_means
    from partialseg.experiments.headline import archive_results, run_seeds, summarise_seeds

    preset = dataclasses.replace(TINY, transfer_cases=2)
    bench = tmp_path / "bench"
    run_seeds(bench, [0], methods=["marginal", "dodnet"], preset=preset, protocol="tct", balance="equal",
              upper_bound=False, transfer=True, progress=False)
    out = bench / "seed_0"
    md = (out / "transfer" / "benchmark.md").read_text()
    assert "scratch" in md and "marginal → fine-tuned" in md and "dodnet → fine-tuned" in md
    assert "| pancreas |" in md and "| stomach |" in md  # the target's 15 organs, ten of them new
    runs = out / "transfer" / "runs"
    # the transfer summary: each fine-tuned model against scratch, paired on the target's test cases
    summary = json.loads((bench / "transfer" / "summary.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    # in the order the benchmark ran them: the reference first
    assert summary["reference"] == "scratch" and list(rows) == ["scratch", "marginal → fine-tuned", "dodnet → fine-tuned"]
    assert "delta_dsc_mean" not in rows["scratch"] and rows["dodnet → fine-tuned"]["n_pairs"] == 2
    per_case = {r: case_means({c: v["organs"] for c, v in json.loads((runs / r / "test_eval.json").read_text())["per_case"].items()})
                for r in ("scratch", "marginal")}
    diffs = [per_case["marginal"][c]["dsc"] - per_case["scratch"][c]["dsc"] for c in per_case["scratch"]]
    assert rows["marginal → fine-tuned"]["delta_dsc_mean"] == pytest.approx(sum(diffs) / len(diffs))
    arch = archive_results(bench, [0], tmp_path / "archive")
    assert (arch / "seed_0" / "transfer" / "runs" / "marginal" / "finetune.json").exists()
    assert summarise_seeds(arch, [0], reference="scratch", subfolder="transfer")["rows"] == summary["rows"]
    rec = json.loads((runs / "marginal" / "finetune.json").read_text())
    assert len(rec["matched_classes"]) == 5 and len(rec["new_classes"]) == 10 and rec["method"] == "full"
    rec = json.loads((runs / "dodnet" / "finetune.json").read_text())
    assert rec["loaded_tensors"] > 0 and any("head" in k for k in rec["fresh_tensors"])  # backbone only
    assert not (runs / "scratch" / "finetune.json").exists()


def test_tables_score_raw_predictions_and_report_the_postprocessed_ones(tmp_path):
    import torch

    out = tmp_path / "bench"
    run_benchmark(out, keeps=[0.5], methods=["marginal"], preset=TINY, upper_bound=False, progress=False)
    run = out / "runs" / "keep0.5" / "marginal"
    assert json.loads((run / "test_pred" / "labels.json").read_text())["largest_component"] == []  # raw
    model = torch.load(run / "model.pt", weights_only=True)
    model["postprocessing"] = {"largest_component": ["liver", "spleen"]}  # as if chosen on validation
    torch.save(model, run / "model.pt")
    res = run_benchmark(out, keeps=[0.5], methods=["marginal"], preset=TINY, upper_bound=False, progress=False)
    pp = res.postprocessed[("keep0.5", "marginal")]
    assert pp["organs"] == ["liver", "spleen"] and (run / "test_eval_pp.json").exists()
    md = (out / "benchmark.md").read_text()
    assert "Postprocessing chosen on validation" in md and "liver, spleen" in md
    assert res.results[("keep0.5", "marginal")] == json.loads((run / "test_eval.json").read_text())  # unchanged


def test_validation_dsc_reads_the_final_models_log(tmp_path):
    from partialseg.experiments.headline import validation_dsc

    def log(path, values):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("step,loss,val_dsc_mean\n" + "".join(f"{i},0.5,{v}\n" for i, v in enumerate(values)))

    plain, pfl, ipnp = tmp_path / "marginal", tmp_path / "pfl", tmp_path / "ipnp"
    log(plain / "log.csv", ["", "0.5", "", "0.7", ""])
    log(pfl / "teachers" / "teacher_0" / "log.csv", ["0.9"])
    log(pfl / "student" / "log.csv", ["0.6", "0.8"])
    log(ipnp / "round_0" / "log.csv", ["0.9"])
    log(ipnp / "round_10" / "log.csv", ["0.4"])
    log(ipnp / "round_2" / "log.csv", ["0.3"])
    assert validation_dsc(plain) == 0.7 and validation_dsc(pfl) == 0.8 and validation_dsc(ipnp) == 0.4
    assert validation_dsc(tmp_path / "none") is None
