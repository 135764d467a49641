"""A follower rank: `python -m engine.tensor_parallel.follower`, started by rank 0 (group.py).

Reads its job (what to load) from CGW_TP_JOB, joins the collectives, loads its shard, reports
ready, then runs the calls rank 0 broadcasts until told to stop.  Never started by hand.
"""
from __future__ import annotations

import json
import os
import sys


def main() -> int:
    from ..errors import EngineError
    from .group import JOB_ENV, follower_liveness, init_collectives
    from .load import build_local
    from .remote import Channel, follow

    job = json.loads(os.environ[JOB_ENV])
    rank, world = int(os.environ["PADDLE_TRAINER_ID"]), int(os.environ["PADDLE_TRAINERS_NUM"])
    follower_liveness()
    init_collectives()
    channel = Channel()
    try:
        local = build_local(job, rank, world, channel)
    except EngineError:
        return 1  # the same files and options: rank 0 meets the same error and reports it
    channel.flag(None)  # loaded: rank 0 waits for every rank here
    follow(local, channel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
