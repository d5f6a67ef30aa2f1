"""The four perturbation tasks, the trial runner, scoring and reports."""
