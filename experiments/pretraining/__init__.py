"""The pre-training report (issue #14): every family against the baselines."""
