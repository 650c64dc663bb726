from mlintern.evaluation.lmeval import evaluate_model

__all__ = ["evaluate_model"]
