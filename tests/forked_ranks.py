"""Start a test worker's ranks as ``torchrun`` does, forked from one process that has imported
the worker once.

    python tests/forked_ranks.py N WORKER.py [ARG ...]

Each rank gets torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and runs ``WORKER.main(args)``; the ranks
join their process group through it as under torchrun. A rank then costs its work, where a
torchrun rank first imports torch, TransformerLens and SAELens for itself (seconds each, most
of a small test's time). As torchrun does, the first rank to fail stops the others, and the
launcher exits with its status. The tests of what the launcher itself does (a dying rank under
torchrun, ``crosslens train`` launched by torchrun) use torchrun.

The launcher only imports before it forks, and the tests start it with one OpenMP thread: no
rank inherits a thread pool whose threads fork left behind.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
import traceback
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_rank(worker, rank: int, world: int, port: int, args: list[str]) -> int:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        return int(worker.main(args) or 0)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1


def main(argv: list[str]) -> int:
    nproc, script, *args = argv
    world, script_path = int(nproc), Path(script).resolve()
    sys.path.insert(0, str(script_path.parent))
    worker = importlib.import_module(script_path.stem)
    port = free_port()
    sys.stdout.flush()
    sys.stderr.flush()
    ranks: dict[int, int] = {}
    for rank in range(world):
        pid = os.fork()
        if pid == 0:
            status = run_rank(worker, rank, world, port, args)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        ranks[pid] = rank
    failed = 0
    while ranks:
        pid, wait_status = os.wait()
        rank, status = ranks.pop(pid), os.waitstatus_to_exitcode(wait_status)
        if status != 0 and not failed:
            failed = status if status > 0 else 128 - status
            print(f"forked_ranks: rank {rank} exited with {status}; stopping the others", file=sys.stderr)
            for other in ranks:
                os.kill(other, signal.SIGTERM)
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
