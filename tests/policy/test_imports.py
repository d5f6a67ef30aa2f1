"""The numpy-only modules must stay importable on a robot PC without torch/transformers."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_numpy_modules_do_not_import_torch_or_transformers():
    code = ("import sys; import policy, policy.action_tokenizer, policy.normalization, policy.prompt, "
            "policy.processing, policy.precision; "
            "heavy = sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules); print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_cli_registration_does_not_import_torch():
    code = ("import sys, argparse; import policy.cli as c; p = argparse.ArgumentParser(); "
            "c.register(p.add_subparsers()); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
