"""The CPU training allocator policy: freed large blocks are reused without new page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

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


def _probe(**env) -> dict:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    full_env.update(PYTHONPATH=str(REPO_ROOT), **env)
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=full_env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults():
    kept = _probe()
    if not sys.platform.startswith("linux"):  # glibc's mallopt only: elsewhere the policy does nothing
        assert kept["applied"] is False
        return
    default = _probe(MINDSPEED_LLM_CPU_MALLOC="default")
    assert kept["applied"] is True and default["applied"] is False
    pages = (MIB_PER_STEP << 20) // 4096
    assert default["faults"] > pages // 2  # glibc's default: a fresh mmap, every page faulted again
    assert kept["faults"] < pages // 20  # kept: the same pages, already mapped
