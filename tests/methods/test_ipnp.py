"""IPnP: one case's pseudo-labelling with the real default generalist, and a 2-round CLI run."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.data.dataset import PartialDataset
from partialseg.evaluation.metrics import dice
from partialseg.generalist.base import build_generalist
from partialseg.methods.ipnp import IPnPOptions
from partialseg.pseudolabel.loop import choose_sources, gate_case, pseudo_label_case
from tests.conftest import write_block_dataset


def _scene():
    """Two ellipsoid 'organs' with distinct HU in noisy fat; organ 1 annotated, organ 2 not."""
    rng = np.random.default_rng(0)
    shape = (40, 36, 30)
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    gt = np.zeros(shape, np.int16)
    gt[((x - 12) / 7) ** 2 + ((y - 18) / 8) ** 2 + ((z - 15) / 9) ** 2 <= 1] = 1
    gt[((x - 28) / 6) ** 2 + ((y - 16) / 6) ** 2 + ((z - 14) / 7) ** 2 <= 1] = 2
    hu = np.where(gt == 1, 60.0, np.where(gt == 2, 160.0, -90.0)) + rng.normal(0, 12, shape)
    # a specialist that finds organ 2 roughly: shifted by 2 voxels, confident inside
    probs = np.full((3, *shape), 0.05, np.float32)
    probs[0] = 0.9
    shifted = np.roll(gt == 2, 2, axis=0)
    probs[:, shifted] = np.array([0.15, 0.05, 0.8], np.float32)[:, None]
    probs[:, gt == 1] = np.array([0.1, 0.85, 0.05], np.float32)[:, None]
    return hu.astype(np.float32), gt, probs


def test_pseudo_label_case_recovers_an_unannotated_organ():
    hu, gt, probs = _scene()
    label = np.where(gt == 1, 1, 0).astype(np.int16)  # organ 2 unannotated
    opts = IPnPOptions(padding=3, dilation=4, tau=0.5)
    gen = build_generalist("random_walker")
    masks, decisions, ent = pseudo_label_case(probs, label, frozenset({1}), hu, (2.0, 2.0, 3.0), gen, opts, round_index=1)
    assert set(masks) == {2} and decisions[2].status == "accepted"
    assert dice(masks[2], gt == 2) > 0.6
    assert not (masks[2] & (label == 1)).any()
    # from round r_e on, a pseudo-label whose mean entropy is not lower than last round's is rejected
    prev = {2: (np.zeros_like(gt, bool), 0.0)}
    _, d2, _ = pseudo_label_case(probs, label, frozenset({1}), hu, (2.0, 2.0, 3.0), gen, opts, round_index=2, previous=prev)
    assert d2[2].status == "rejected_entropy"
    _, d1, _ = pseudo_label_case(probs, label, frozenset({1}), hu, (2.0, 2.0, 3.0), gen, opts, round_index=1, previous=prev)
    assert d1[2].status == "accepted"  # before r_e the rule is off


def test_no_prediction_no_prompt():
    hu, gt, probs = _scene()
    probs[:, probs.argmax(0) == 2] = np.array([0.9, 0.05, 0.05], np.float32)[:, None]
    _, decisions, _ = pseudo_label_case(probs, np.zeros_like(gt), frozenset({1}), hu, (1.0, 1.0, 1.0),
                                        build_generalist("random_walker"), IPnPOptions(), round_index=1)
    assert decisions[2].status == "no_prediction"


def test_specialist_source_and_gate_rejection():
    hu, gt, probs = _scene()
    label = np.where(gt == 1, 1, 0).astype(np.int16)
    gen = build_generalist("random_walker")
    opts = IPnPOptions(padding=3, dilation=4, tau=0.5)
    masks, dec, _ = pseudo_label_case(probs, label, frozenset({1}), hu, (2.0, 2.0, 3.0), gen, opts, round_index=1,
                                      sources={2: "specialist"})
    # self-training: exactly the specialist's confident region (the shifted organ), no generalist
    assert dec[2].status == "accepted"
    assert np.array_equal(masks[2], np.roll(gt == 2, 2, axis=0))
    masks, dec, _ = pseudo_label_case(probs, label, frozenset({1}), hu, (2.0, 2.0, 3.0), gen, opts, round_index=1,
                                      sources={2: None})
    assert masks == {} and dec[2].status == "rejected_gate"


def test_gate_case_scores_both_sources_on_an_annotated_organ():
    hu, gt, probs = _scene()
    # organ 2 annotated here: the evidence says how each source would have labelled it
    label = gt.astype(np.int16)
    ev = gate_case(probs, label, frozenset({1, 2}), hu, (2.0, 2.0, 3.0), build_generalist("random_walker"),
                   IPnPOptions(padding=3, dilation=4, tau=0.5))
    assert set(ev) == {1, 2}
    shifted = np.roll(gt == 2, 2, axis=0)
    assert ev[2]["specialist"] == pytest.approx(dice(shifted, gt == 2))
    # the generalist's score is that of the pseudo-label the organ would get if it were unannotated
    opts = IPnPOptions(padding=3, dilation=4, tau=0.5)
    masks, _, _ = pseudo_label_case(probs, np.where(gt == 1, 1, 0).astype(np.int16), frozenset({1}), hu, (2.0, 2.0, 3.0),
                                    build_generalist("random_walker"), opts, round_index=1, sources={2: "generalist"})
    assert ev[2]["generalist"] == pytest.approx(dice(masks[2], gt == 2)) and ev[2]["generalist"] > 0.6


def test_choose_sources_by_mean_dsc_with_a_floor():
    evidence = [
        {1: {"generalist": 0.9, "specialist": 0.7}, 2: {"generalist": 0.2, "specialist": 0.6}},
        {1: {"generalist": 0.7, "specialist": 0.7}, 2: {"generalist": 0.3, "specialist": 0.2}, 3: {"generalist": 0.1, "specialist": 0.3}},
    ]
    got = choose_sources(evidence, 5, min_dsc=0.35)
    assert got[1]["source"] == "generalist" and got[1]["n"] == 2 and got[1]["dsc_generalist"] == pytest.approx(0.8)
    assert got[2]["source"] == "specialist" and got[2]["dsc_specialist"] == pytest.approx(0.4)
    assert got[3]["source"] is None  # best 0.3 < 0.35: stays marginalised
    assert got[4] == {"source": "generalist", "n": 0}  # annotated nowhere: no evidence, the paper's choice


def test_ipnp_is_the_papers_configuration_and_ipnp_gated_our_variant():
    from partialseg.methods.ipnp import IPnPGatedOptions

    paper = IPnPOptions()
    assert (paper.pseudo_source, paper.pseudo_background, paper.largest_component, paper.vls) == (
        "generalist", "supervised", False, True)
    ours = IPnPGatedOptions()
    assert (ours.pseudo_source, ours.pseudo_background, ours.largest_component) == ("auto", "marginal", True)
    assert IPnPOptions(pseudo_source="none").pseudo_source == "none"  # the step control


def test_pseudo_label_quality_counts_what_the_generalist_added():
    from partialseg.pseudolabel.loop import pseudo_label_quality

    ref = np.zeros((6, 1, 1), bool)
    ref[1:5] = True  # voxels 1-4
    specialist = np.zeros_like(ref)
    specialist[2:4] = True  # 2, 3: under-segments
    pseudo = np.zeros_like(ref)
    pseudo[[1, 3, 4, 5]] = True  # adds 1, 4 (right) and 5 (wrong), drops 2 (wrongly)
    q = pseudo_label_quality(pseudo, specialist, ref)
    assert (q["added"], q["added_correct"], q["removed"], q["removed_wrong"]) == (3, 2, 1, 0)
    assert q["dsc"] == pytest.approx(2 * 3 / 8) and q["specialist_dsc"] == pytest.approx(2 * 2 / 6)


def test_options_validation():
    with pytest.raises(Exception, match="retrain"):
        IPnPOptions(retrain="sometimes")
    with pytest.raises(Exception, match="rounds"):
        IPnPOptions(rounds=0)
    with pytest.raises(Exception, match="pseudo_source"):
        IPnPOptions(pseudo_source="oracle")


def _tiny_ipnp_args(ds, run, rounds: int) -> list[str]:
    """``partialseg train`` of a tiny ipnp_gated run (2 steps per training)."""
    args = ["train", str(ds), "--out", str(run), "--method", "ipnp_gated"]
    for s in ["train.steps=2", "train.batch_size=1", "train.patch_size=[32,16,16]", "train.val_every=0",
              "network.options={base_channels: 4}", "data.spacing=[2.0,2.5,3.0]", "train.num_threads=1",
              f"method.options.rounds={rounds}", "method.options.tau=0.0", "method.options.padding=1",
              "method.options.dilation=2"]:
        args += ["--set", s]
    return args


def _count_windows(monkeypatch) -> list[str]:
    """Record the file of every caller of the sliding window (training's validation or a round's pass), through
    ``Predictor.window_probabilities``."""
    import sys

    from partialseg.inference import sliding_window

    passes: list[str] = []
    real_window = sliding_window.sliding_window_probabilities

    def counting_window(*a, **kw):
        frame = sys._getframe(1)
        while Path(frame.f_code.co_filename).name == "predict.py":
            frame = frame.f_back
        passes.append(Path(frame.f_code.co_filename).name)
        return real_window(*a, **kw)

    monkeypatch.setattr(sliding_window, "sliding_window_probabilities", counting_window)
    return passes


def test_two_round_cli_run_then_predict_and_export(tmp_path, small_space, monkeypatch):
    from partialseg.training import trainer

    seen_labels = []
    real_train = trainer.train

    def recording_train(*a, cases=None, **kw):
        seen_labels.extend(type(c.label) for c in cases or [])
        return real_train(*a, cases=cases, **kw)

    monkeypatch.setattr(trainer, "train", recording_train)
    passes = _count_windows(monkeypatch)
    ds = write_block_dataset(tmp_path / "blocks", small_space, n_cases=4,
                             annotated={"case_000": ["liver"], "case_001": ["spleen", "kidney_left"]})
    before = {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()}
    run = tmp_path / "run"
    args = _tiny_ipnp_args(ds, run, rounds=2)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    for d in ("round_0", "round_1", "round_2"):
        assert (run / d / "model.pt").exists()
    assert (run / "model.pt").exists()
    # streamed: every round's label maps on disk, memory-mapped by training (none held in RAM)
    assert len(seen_labels) == 8 and all(issubclass(t, np.memmap) for t in seen_labels)
    # one sliding window per case and round (every case is pseudo-labelled): the gate's pass also made the
    # pseudo-labels and their quality rows
    assert passes.count("loop.py") == 2 * 4
    assert not (run / "pseudo" / "round_1" / "candidates").exists()
    for r in (1, 2):
        names = {p.name for p in (run / "pseudo" / f"round_{r}").iterdir()}
        assert {f"case_{i:03d}.{e}" for i in range(4) for e in ("npy", "json")} <= names and not any(n.endswith(".npz") for n in names)
    dec = json.loads((run / "pseudo" / "round_1" / "decisions.json").read_text())
    assert set(dec) == {f"case_{i:03d}" for i in range(4)}
    assert set(dec["case_000"]) == {"spleen", "kidney_right", "kidney_left"}  # exactly the unannotated organs
    assert not dec["case_002"]  # fully annotated: nothing to pseudo-label
    # ipnp_gated's "auto" source: the organ gate's choice per organ, with its evidence
    src = json.loads((run / "pseudo" / "round_1" / "sources.json").read_text())
    assert set(src) == set(small_space.names)
    assert all(v["source"] in ("generalist", "specialist", None) for v in src.values())
    assert src["liver"]["n"] >= 1 and "dsc_specialist" in src["liver"]
    assert (run / "pseudo_quality.csv").exists() or all(
        d["status"] != "accepted" for c in dec.values() for d in c.values()
    )
    # a second invocation resumes and changes nothing
    mtime = (run / "model.pt").stat().st_mtime_ns
    r = CliRunner().invoke(app, ["train", str(ds), "--out", str(run), "--resume"])
    assert r.exit_code == 0, r.output
    assert (run / "model.pt").stat().st_mtime_ns == mtime
    # the saved configuration is resolved (every option), and a resume with other options is refused
    saved = (run / "config.yaml").read_text()
    assert "pseudo_background: marginal" in saved and "entropy_from_round: 2" in saved
    assert "pseudo_source: auto" in saved and "largest_component: true" in saved
    r = CliRunner().invoke(app, ["train", str(ds), "--out", str(run), "--resume", *args[4:], "--set", "method.options.tau=0.3"])
    assert r.exit_code != 0 and "method.options.tau" in r.output
    r = CliRunner().invoke(app, ["predict", str(run), str(ds / "imagesTr"), str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["pseudolabel", str(run), str(ds), str(tmp_path / "pseudo_ds")])
    assert r.exit_code == 0, r.output
    exported = PartialDataset.load(tmp_path / "pseudo_ds")
    exported.validate()
    meta = json.loads((tmp_path / "pseudo_ds" / "dataset.json").read_text())
    assert set(meta["pseudo_labelled_classes"]) == {c.case_id for c in exported.cases}
    orig = PartialDataset.load(ds)
    for c in orig.cases:
        a = c.load_label(orig.label_space).array
        b = exported.case(c.case_id).load_label(exported.label_space).array
        keep = np.isin(a, sorted(c.annotated)) & (a > 0)
        np.testing.assert_array_equal(a[keep], b[keep])  # annotated voxels never overwritten
        assert exported.case(c.case_id).annotated >= c.annotated
    assert {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()} == before  # user's files untouched


def test_round_0_adopted_from_a_marginal_run(tmp_path, small_space):
    ds = write_block_dataset(tmp_path / "blocks", small_space, n_cases=3, annotated={"case_000": ["liver"]})
    common = ["train.batch_size=1", "train.patch_size=[32,16,16]", "train.val_every=0", "network.options={base_channels: 4}",
              "data.spacing=[2.0,2.5,3.0]", "train.num_threads=1"]

    def train(out, method, *extra):
        args = ["train", str(ds), "--out", str(out), "--method", method]
        for s in [*common, *extra]:
            args += ["--set", s]
        return CliRunner().invoke(app, args)

    r = train(tmp_path / "marginal", "marginal", "train.steps=2")
    assert r.exit_code == 0, r.output
    ipnp_opts = ["method.options.rounds=1", f"method.options.specialist_run={tmp_path / 'marginal'}", "method.options.tau=0.0"]
    r = train(tmp_path / "ipnp", "ipnp", "train.steps=2", *ipnp_opts)
    assert r.exit_code == 0, r.output
    r0 = tmp_path / "ipnp" / "round_0"
    assert (r0 / "model.pt").read_bytes() == (tmp_path / "marginal" / "model.pt").read_bytes()
    assert not (r0 / "checkpoints").exists()  # adopted, not trained
    assert (tmp_path / "ipnp" / "round_1" / "model.pt").exists()
    # a specialist trained with other settings is refused, naming the run and the section
    r = train(tmp_path / "ipnp_bad", "ipnp", "train.steps=3", *ipnp_opts)
    assert r.exit_code != 0 and "other settings" in r.output and "train" in r.output
    # both read the dataset's shared cache, which the adopted run's deletion leaves alone
    split = json.loads((r0 / "split.json").read_text())
    assert split["prepared"] == json.loads((tmp_path / "marginal" / "split.json").read_text())["prepared"]
    assert not Path(split["prepared"]).is_relative_to(tmp_path / "marginal") and not (r0 / "prepared").exists()
    shutil.rmtree(tmp_path / "marginal")
    r = CliRunner().invoke(app, ["train", str(ds), "--out", str(tmp_path / "ipnp"), "--resume"])
    assert r.exit_code == 0, r.output


def test_pseudo_background_option_reaches_the_loss(small_space):
    import torch
    from torch import nn

    from partialseg.methods import Batch, StepContext
    from partialseg.methods.ipnp import IPnP

    class Fixed(nn.Module):  # logits that predict class 2 on the first half of the voxels
        def forward(self, x):
            logits = torch.zeros(1, 3, 4, 4, 2)
            logits[:, 2, :2] = 5.0
            return logits

    target = torch.zeros(1, 4, 4, 2, dtype=torch.long)
    target[:, 3] = 2  # the pseudo-label of class 2 misses the voxels the network gives it
    batch = Batch(torch.zeros(1, 1, 4, 4, 2), target, torch.tensor([[True, False, True]]),
                  torch.tensor([[False, False, True]]))
    losses = {mode: IPnP(small_space, {"pseudo_background": mode}).loss(Fixed(), None, batch, StepContext(0, 1))[0].item()
              for mode in ("supervised", "vls", "marginal")}
    # dropping the contradicted background voxels (vls) or not teaching "not 2" at all (marginal)
    # removes most of what the paper's loss penalises here
    assert losses["vls"] < losses["supervised"] and losses["marginal"] < losses["supervised"]
    with pytest.raises(Exception, match="pseudo_background"):
        IPnPOptions(pseudo_background="sometimes")


def test_a_round_killed_after_the_gate_resumes_without_another_pass(tmp_path, small_space, monkeypatch):
    from partialseg.pseudolabel import round as ipnp_round

    ds = write_block_dataset(tmp_path / "blocks", small_space, n_cases=3, annotated={"case_000": ["liver"]})
    run = tmp_path / "run"
    args = _tiny_ipnp_args(ds, run, rounds=1)
    real_pseudo = ipnp_round._pseudo_label

    def killed(*a, **kw):
        raise KeyboardInterrupt  # as if the process died after the gate, before the first pseudo-label

    passes = _count_windows(monkeypatch)
    monkeypatch.setattr(ipnp_round, "_pseudo_label", killed)
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0, r.output
    cand = run / "pseudo" / "round_1" / "candidates"
    assert sorted(p.name for p in cand.iterdir()) == [f"case_{i:03d}.npz" for i in range(3)]
    assert (run / "pseudo" / "round_1" / "sources.json").exists() and passes.count("loop.py") == 3
    monkeypatch.setattr(ipnp_round, "_pseudo_label", real_pseudo)
    passes.clear()
    r = CliRunner().invoke(app, ["train", str(ds), "--out", str(run), "--resume"])
    assert r.exit_code == 0, r.output
    assert passes.count("loop.py") == 0  # the pseudo-labels came from the saved candidates
    assert (run / "model.pt").exists() and not cand.exists()
    dec = json.loads((run / "pseudo" / "round_1" / "decisions.json").read_text())
    assert set(dec["case_000"]) == {"spleen", "kidney_right", "kidney_left"}
