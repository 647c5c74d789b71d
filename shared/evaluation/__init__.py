"""The evaluation harness: temporal leave-last-out split, full-catalog ranking, baselines."""
