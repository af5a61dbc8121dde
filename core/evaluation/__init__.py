"""Evaluation jobs (perplexity, generation metrics, judge, lm-eval), their scoring and reading results back."""
