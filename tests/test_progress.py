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
