"""The fuzz test's worker: runs `edgepress.cli.main.main(argv)` in this one process for case after case.

Reads one JSON object per line on stdin ({"id": ..., "argv": [...]}) and answers each with one JSON line
({"id", "code", "stderr", "escaped"}) on the stdout it was started with. Everything the case prints goes
elsewhere: Python's stdout and stderr into buffers, and the file descriptors 1 and 2 (ONNX Runtime's and
torch's native messages) into a scratch file whose text joins the case's stderr. An exception that escapes
main() would be a traceback in a real run: it is reported as `escaped`. Started by tests/test_fuzz.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import sys
import tempfile
import time
import traceback

# A case that makes edgepress allocate more than this fails with MemoryError (which edgepress must turn
# into a one-line error) instead of taking the machine's memory.
ADDRESS_SPACE_LIMIT = int(os.environ.get("FUZZ_ADDRESS_SPACE_BYTES", 12 << 30))


def main() -> int:
    channel = os.fdopen(os.dup(1), "w", buffering=1)  # the JSON answers; fd 1 itself is the case's
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    from edgepress.cli.main import main as cli_main  # imported once: torch alone takes seconds
    import edgepress.running.pipeline  # noqa: F401 - the stages and their libraries, before the first case's clock starts

    native = tempfile.TemporaryFile()
    channel.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        case = json.loads(line)
        native.seek(0)
        native.truncate()
        saved = os.dup(1), os.dup(2)
        os.dup2(native.fileno(), 1)
        os.dup2(native.fileno(), 2)
        out, err = io.StringIO(), io.StringIO()
        escaped = None
        started = time.monotonic()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli_main(case["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # noqa: B902 - anything at all: the parent judges it
            code, escaped = 2, "".join(traceback.format_exception(exc))[-4000:]
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
        native.seek(0)
        native_text = native.read().decode("utf-8", "replace")
        channel.write(json.dumps({"id": case["id"], "code": code, "stderr": err.getvalue() + native_text,
                                  "stdout": out.getvalue()[-2000:], "escaped": escaped,
                                  "seconds": round(time.monotonic() - started, 3)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
