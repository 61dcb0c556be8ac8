"""Progress output: bars only in a terminal, plain periodic lines (no carriage returns) elsewhere."""

from __future__ import annotations

import io

from partialseg.progress import LineProgress, progress


def test_plain_lines_every_five_percent_with_rate_and_eta():
    out = io.StringIO()
    bar = LineProgress(total=100, desc="train marginal", unit="step", stream=out, every_s=1e9)
    for i in range(100):
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 20
    assert lines[0].startswith("train marginal: 5/100 steps (5%)") and "ETA" in lines[0] and "loss=0.200" in lines[0]
    assert lines[-1].startswith("train marginal: 100/100 steps (100%)") and "ETA" not in lines[-1]


def test_iteration_resumed_count_and_time_based_lines():
    out = io.StringIO()
    seen = list(LineProgress(range(3), desc="predict", unit="case", stream=out, every_s=0.0))
    assert seen == [0, 1, 2]
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == [
        "predict: 1/3 cases (33%)", "predict: 2/3 cases (67%)", "predict: 3/3 cases (100%)"]
    out = io.StringIO()
    bar = LineProgress(total=10, initial=8, desc="train", unit="step", stream=out)  # a resumed run
    bar.update(2)
    bar.close()
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]] and "10/10" in out.getvalue()


def test_redirected_stderr_gets_plain_lines(capsys):
    # under pytest, stderr is not a terminal: the plain form
    assert isinstance(progress(total=3, desc="x"), LineProgress)
    assert list(progress([1, 2], enabled=False)) == [1, 2]
    for _ in progress(range(2), desc="phantom", unit="case"):
        pass
    err = capsys.readouterr().err
    assert "phantom: 2/2 cases (100%)" in err and "\r" not in err


def test_quiet_and_verbose_anywhere_on_the_command_line(tmp_path, monkeypatch, capsys):
    import logging

    import pytest

    from partialseg import cli
    from partialseg.progress import NORMAL, QUIET, VERBOSE, set_verbosity, verbosity

    assert cli._global_flags_first(["train", "D", "--quiet", "--set", "a=1", "--", "-v"]) == [
        "--quiet", "train", "D", "--set", "a=1", "--", "-v"]

    def run(*argv):
        monkeypatch.setattr("sys.argv", ["partialseg", *argv])
        with pytest.raises(SystemExit) as e:
            cli.main()
        return e.value.code, capsys.readouterr()

    try:
        code, out = run("synth", str(tmp_path / "a"), "--cases", "1", "--shape", "24,24,20", "--spacing", "16,14,18")
        assert code == 0 and "wrote 1 cases" in out.out and "phantom" in out.err
        code, out = run("synth", str(tmp_path / "b"), "--cases", "1", "--shape", "24,24,20", "--spacing", "16,14,18", "--quiet")
        assert code == 0 and verbosity() == QUIET and out.out == "" and out.err == ""
        assert (tmp_path / "b" / "dataset.json").exists()
        code, out = run("-v", "methods")
        assert code == 0 and verbosity() == VERBOSE and "marginal" in out.out
        logging.getLogger("partialseg.train").info("step 10: val_dsc_mean=0.5")
        assert "step 10: val_dsc_mean=0.5" in capsys.readouterr().err
        code, out = run("methods", "-q", "-v")
        assert code != 0 and "exclude each other" in out.err
    finally:
        set_verbosity(NORMAL)
    logging.getLogger("partialseg.train").info("not shown")
    assert "not shown" not in capsys.readouterr().err
