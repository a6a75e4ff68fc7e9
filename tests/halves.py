"""`make test`'s pytest: the suite in two halves at once, one pytest process each.

- The host half: tests marked `runtime` or `registry`. They use what the host shares (runc
  and conmon, cgroups, CNI bridges and iptables, registries on ports, a browser) and check
  that state before and after, so they run one at a time, as they always have.
- The in-process half: everything else, each test with a daemon of its own in this
  process and nothing outside its temporary directory.

The two take about as long as each other, and on two cores together they take about
half of what they took one after the other. The host half's output streams; the other's
is printed once both are done. The exit status is the first failing half's (5, "no tests
collected", counts as passing when a selection leaves one half empty).

    python -m tests.halves [pytest arguments for both halves]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HOST = "runtime or registry"
NO_TESTS_COLLECTED = 5


def main(argv: list[str]) -> int:
    base = Path(tempfile.gettempdir()) / f"cargohold-tests-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)  # pytest makes a basetemp, not its parents
    pytest = [sys.executable, "-m", "pytest", "-q", *argv]
    with tempfile.TemporaryFile("w+") as in_process_output:
        # Each half's temporary files apart: pytest clears and numbers its basetemp per run.
        in_process = subprocess.Popen([*pytest, "-m", f"not ({HOST})", f"--basetemp={base}/in-process"],
                                      stdout=in_process_output, stderr=subprocess.STDOUT)
        try:
            host = subprocess.run([*pytest, "-m", HOST, f"--basetemp={base}/host"]).returncode
        finally:
            in_process_status = in_process.wait()
        in_process_output.seek(0)
        print(f"\n--- the in-process half (-m 'not ({HOST})') ---", flush=True)
        sys.stdout.write(in_process_output.read())
    statuses = [status for status in (host, in_process_status) if status != NO_TESTS_COLLECTED]
    if not statuses:
        return NO_TESTS_COLLECTED
    return next((status for status in statuses if status != 0), 0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
