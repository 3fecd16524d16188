"""A Python script run under a file-size limit, as a ``preexec_fn`` setting it would run it, but startable as
``python SCRIPT.py`` (so forked from a preloaded interpreter, tests/helpers/preloaded.py):

    python tests/e2e/scripts/with_file_size_limit.py BYTES SCRIPT.py ARGS...

``RLIMIT_FSIZE`` is set to BYTES with SIGXFSZ ignored (a write past the limit fails with EFBIG, as one on a
full disk fails with ENOSPC), then SCRIPT runs as ``__main__`` with ``sys.argv`` and ``sys.path[0]`` its own.
"""

import os
import resource
import runpy
import signal
import sys

if __name__ == "__main__":
    limit, script = int(sys.argv[1]), sys.argv[2]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.argv = sys.argv[2:]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")
