"""The CI gate: metrics, rules, targets, baselines and drift, verdicts and CI formats."""

from .core import *  # noqa: F403
