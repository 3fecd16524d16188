"""The CPU training allocator policy: freed large blocks are reused without new page faults."""

from __future__ import annotations

import json
import os
import sys

from tests.helpers.launch import Started
from tests.helpers.paths import REPO_ROOT

MIB_PER_STEP = 48 + 16 + 64 + 8
# A training step in miniature: allocate and fill a few large tensors, free them; repeat. Reports
# the minor page faults of the last step.
_PROBE = """
import json, resource, torch
from mindspeed_llm.patches import cpu_malloc
applied = cpu_malloc.keep_freed_memory()
torch.set_num_threads(1)
def step():
    tensors = [torch.empty(n << 20, dtype=torch.uint8) for n in (48, 16, 64, 8)]
    for t in tensors:
        t.fill_(1)
for _ in range(4):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(folder, **env) -> dict:
    """The probe in a process of its own, forked from an interpreter that imported torch with no MALLOC_*
    variables set (tests.helpers.preloaded: glibc's malloc as a fresh one starts it; nothing of mindspeed_llm
    is imported, so the policy is not applied before the probe applies it)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    full_env.update(PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", **env)
    probe = folder / "probe.py"
    probe.write_text(_PROBE)
    out = Started([sys.executable, "-u", str(probe)], env=full_env, cwd=folder).result()
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults(tmp_path):
    kept = _probe(tmp_path)
    if not sys.platform.startswith("linux"):  # glibc's mallopt only: elsewhere the policy does nothing
        assert kept["applied"] is False
        return
    default = _probe(tmp_path, MINDSPEED_LLM_CPU_MALLOC="default")
    assert kept["applied"] is True and default["applied"] is False
    pages = (MIB_PER_STEP << 20) // 4096
    assert default["faults"] > pages // 2  # glibc's default: a fresh mmap, every page faulted again
    assert kept["faults"] < pages // 20  # kept: the same pages, already mapped
