"""Fine-tuning a trained run on another dataset (TCT paper, Table 4: partial-label pre-training, then
fine-tuning on a fully labelled target, against training the target from scratch).

The new run starts from the trained run's configuration (network, preprocessing, optimiser, schedule)
with the method the target needs (``full`` by default: the target is fully labelled) and any
overrides. Its network is built for the target's label space and takes every trained tensor whose
name and shape it shares; class-indexed tensors (the head's output rows, class embeddings, task
queries or tokens; ``SegmentationNetwork.class_parameters``) are remapped by class name, so a target
class the source knew starts from the source's row and a new class from a fresh one.
``RUN2/finetune.json`` records which classes were matched and which tensors started fresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from partialseg.errors import InputError, PartialsegError
from partialseg.io import read_json

FINETUNE_FILE = "finetune.json"


def transfer_state(
    source: dict[str, torch.Tensor],
    source_classes: Sequence[str],
    target: dict[str, torch.Tensor],
    target_classes: Sequence[str],
    class_keys: Sequence[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The target's state dict with every transferable source tensor copied in, and a report.

    A key in ``class_keys`` has one row per class on its first axis, plus a leading background row
    when it is one longer than the class list (on both sides alike); rows move by class name, the
    background row as is. Any other key is copied when its shape matches; the rest keep the target's
    fresh initialisation. A backbone wrapped by a method's heads (``backbone.<key>``) and a plain
    one (``<key>``) match each other.
    """
    out = {k: v.clone() for k, v in target.items()}
    loaded, fresh = [], []
    # a method that wraps the backbone (dynamic heads, task queries, tokens) keeps it under "backbone."
    source = {**{k.removeprefix("backbone."): v for k, v in source.items() if f"backbone.{k}" not in target},
              **{f"backbone.{k}": v for k, v in source.items() if f"backbone.{k}" in target}, **source}
    src_index = {n: i for i, n in enumerate(source_classes)}
    matched = [n for n in target_classes if n in src_index]
    for key, t in target.items():
        s = source.get(key)
        if key in class_keys and s is not None and s.shape[1:] == t.shape[1:]:
            bg_s, bg_t = s.shape[0] - len(source_classes), t.shape[0] - len(target_classes)
            if bg_s == bg_t and bg_s in (0, 1):
                rows = out[key]
                if bg_t:
                    rows[0] = s[0]
                for j, name in enumerate(target_classes):
                    if name in src_index:
                        rows[bg_t + j] = s[bg_s + src_index[name]]
                loaded.append(key)
                continue
        if s is not None and s.shape == t.shape and key not in class_keys:
            out[key] = s.clone()
            loaded.append(key)
        else:
            fresh.append(key)
    report = {
        "matched_classes": matched,
        "new_classes": [n for n in target_classes if n not in src_index],
        "source_only_classes": [n for n in source_classes if n not in set(target_classes)],
        "loaded_tensors": len(loaded),
        "fresh_tensors": fresh,
    }
    return out, report


def finetune(
    source_run: str | Path,
    dataset: str | Path,
    out: str | Path,
    *,
    method: str | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Fine-tune the model of ``source_run`` on ``dataset`` into the new run folder ``out``."""
    from partialseg import checkpoint as ckpt
    from partialseg.config import load_config
    from partialseg.data.dataset import PartialDataset
    from partialseg.labels import LabelSpace
    from partialseg.preprocessing import PreparedDataset
    from partialseg.training.trainer import build_model, train

    source_run, out, dataset = Path(source_run), Path(out), Path(dataset)
    model_file = source_run / ckpt.MODEL_FILE if source_run.is_dir() else source_run
    m = ckpt.load(model_file)
    if "state_dict" not in m or "config" not in m or "label_space" not in m:
        raise InputError(model_file, "not a partialseg model file (no state_dict/config/label_space)")
    if resume:
        if not (out / FINETUNE_FILE).exists() or not (out / "config.yaml").exists():
            raise InputError(out, f"nothing to resume: no {FINETUNE_FILE} and config.yaml in this run folder")
        saved = read_json(out / FINETUNE_FILE)
        if saved["source_model"] != str(model_file.resolve()):
            raise InputError(out / FINETUNE_FILE, f"this run was fine-tuned from {saved['source_model']}, not {model_file}")
        cfg = load_config(out / "config.yaml")
    else:
        base = dict(m["config"])
        base["method"] = {"name": method or "full", "options": {}}
        cfg = load_config(None, list(overrides), base=base)
        from partialseg.methods import get_method

        if get_method(cfg.method.name).procedure is not None:
            raise PartialsegError(f"method {cfg.method.name!r} trains in several stages; fine-tuning trains one run "
                                  "(use full, marginal, tct, ...)")
        trained = m["config"]["network"]
        if cfg.network.name != trained["name"] or cfg.network.options != trained["options"]:
            raise PartialsegError(f"fine-tuning keeps the trained network ({trained}); got network "
                                  f"{cfg.network.name} {cfg.network.options}")
    space = (PreparedDataset.load(dataset) if (dataset / "prepared.json").exists() else PartialDataset.load(dataset)).label_space
    src_names = tuple(m["label_space"])
    src_method, src_net = build_model(load_config(None, [], base=m["config"]), LabelSpace(src_names))
    src_net.load_state_dict(m["state_dict"])  # a model file that does not fit its own configuration fails here
    _, net = build_model(cfg, space)
    keys = tuple(set(net.class_parameters()) | set(src_net.class_parameters()))
    state, report = transfer_state(m["state_dict"], src_names, net.state_dict(), space.names, keys)
    if report["loaded_tensors"] == 0:
        raise PartialsegError(f"nothing in {model_file} fits the network of method {cfg.method.name!r}")
    record = {"source_model": str(model_file.resolve()), "source_method": src_method.name, "method": cfg.method.name, **report}
    # resuming rebuilds the same start (it is deterministic); the checkpoint, if any, then replaces it
    return train(dataset, out, None if resume else cfg, resume=resume, init_weights=state, progress=progress,
                 run_files={FINETUNE_FILE: record})


__all__ = ["FINETUNE_FILE", "finetune", "transfer_state"]
