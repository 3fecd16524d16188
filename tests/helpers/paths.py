"""Where the repository and the test fixtures are."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HF_CONFIG_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "hf_configs"  # hub config.json files (README there)
