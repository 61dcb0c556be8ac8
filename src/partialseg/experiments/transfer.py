"""The benchmark's transfer setting (TCT paper, Table 4): every method's model, trained on the partial
labels, is fine-tuned on a small fully labelled target with another label space, against the same
training from scratch; all are evaluated on the target's test cases.

Target: new phantoms (seeds apart from the benchmark's training and test streams) with all 15 AMOS
organs labelled, so the TCT protocol's five organs are matched by name and ten are new. The results
go to ``OUT/transfer/`` (``benchmark.md`` there), apart from the main table, whose organs differ.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from partialseg.config import ExperimentConfig
from partialseg.io import write_json_atomic

log = logging.getLogger("partialseg.benchmark")

TRANSFER = "transfer"
SCRATCH = "scratch"

def run_transfer(
    out: Path,
    sources: Sequence[tuple[str, str, Path]],
    *,
    phantom: Any,
    train_cases: int,
    test_cases: int,
    seed: int,
    scratch_config: ExperimentConfig,
    finetune_overrides: Sequence[str],
    progress: bool = True,
) -> Any:
    """Fine-tune each ``(label, folder name, run folder)`` of ``sources`` and train ``scratch_config``
    (``full`` with the benchmark's recipe) on the target.

    ``finetune_overrides`` apply over each source run's own configuration (the benchmark's ``--set``
    and the step budget, which should equal the scratch run's).
    """
    from partialseg.checkpoint import MODEL_FILE
    from partialseg.evaluation.evaluate import evaluate_folders
    from partialseg.experiments.benchmark import (
        RUN_LABEL_FILE,
        BenchmarkResult,
        RunSpec,
        _ensure_dataset,
        _reference_dir,
        train_predict_evaluate,
        write_benchmark_tables,
    )
    from partialseg.inference.predict import predict_folder
    from partialseg.synthetic import synthesize_dataset
    from partialseg.training.finetune import finetune

    out = Path(out)
    data = out / "data"
    train = _ensure_dataset(data / "transfer_train", lambda: synthesize_dataset(
        data / "transfer_train", cases=train_cases, seed=seed + 200_003, config=phantom))
    test = _ensure_dataset(data / "transfer_test", lambda: synthesize_dataset(
        data / "transfer_test", cases=test_cases, seed=seed + 300_007, config=phantom))
    tout = out / TRANSFER
    result = BenchmarkResult(tout, [TRANSFER], {TRANSFER: []})
    spec = RunSpec(TRANSFER, SCRATCH, train, tout / "runs" / SCRATCH)
    result.methods[TRANSFER].append(SCRATCH)
    result.results[(TRANSFER, SCRATCH)] = train_predict_evaluate(spec, scratch_config, test, progress=progress)
    write_benchmark_tables(result)
    for label, folder, source in sources:
        name = f"{label} → fine-tuned"
        run = tout / "runs" / folder
        if not (run / MODEL_FILE).exists():
            log.info("transfer: fine-tuning %s", label)
            finetune(source, train, run, overrides=list(finetune_overrides), resume=(run / "config.yaml").exists(),
                     progress=progress)
        pred = run / "test_pred"
        if not pred.exists():
            predict_folder(run, test / "imagesTr", pred, progress=progress)
        res_file = run / "test_eval.json"
        if not res_file.exists():
            evaluate_folders(pred, _reference_dir(test), out=res_file, dataset=test)
        if not (run / RUN_LABEL_FILE).exists():
            write_json_atomic({"setting": TRANSFER, "method": name}, run / RUN_LABEL_FILE)
        result.methods[TRANSFER].append(name)
        result.results[(TRANSFER, name)] = json.loads(res_file.read_text())
        write_benchmark_tables(result)
    return result


__all__ = ["SCRATCH", "TRANSFER", "run_transfer"]
