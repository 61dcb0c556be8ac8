"""Evaluation: DSC and HD95 (mm) per organ per case, aggregated per organ (methods.md, "Data conventions")."""

from partialseg.evaluation.evaluate import EvaluationResult, aggregate, evaluate_case, evaluate_folders, format_table
from partialseg.evaluation.metrics import dice, hd95

__all__ = ["EvaluationResult", "aggregate", "dice", "evaluate_case", "evaluate_folders", "format_table", "hd95"]
