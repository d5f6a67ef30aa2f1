"""A recording process for the crash tests: it prints ``HALT <point> <detail>`` when it reaches the
requested fault point and then waits there, so the test can SIGKILL it at exactly that moment.

    python -m tests.collect.store_crash_child STORE ACTION --schema JSON --point P [--detail S] [--occurrence N]

ACTION: ``record`` (record --before episodes, arm the halt, record one more), ``recover`` (arm, then
open for appending), ``filter`` (arm, then recompute the no-op mask), ``create`` (arm, then create).
Prints ``DONE`` if the point was never reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from collect.atomic_store import set_fault_hook
from collect.merge import recompute_noop
from collect.noop import NoopThresholds
from collect.schema import StoreSchema
from collect.store import EpisodeStore
from tests.collect.store_testing import record_episode


def arm(point: str, detail: str, occurrence: int) -> None:
    seen = 0

    def hook(name: str, where: str) -> None:
        nonlocal seen
        if name == point and detail in where:
            seen += 1
            if seen == occurrence:
                print(f"HALT {name} {where}", flush=True)
                time.sleep(600)  # the test kills us here

    set_fault_hook(hook)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("action", choices=["record", "recover", "filter", "create"])
    parser.add_argument("--point", required=True)
    parser.add_argument("--detail", default="")
    parser.add_argument("--occurrence", type=int, default=1)
    parser.add_argument("--before", type=int, default=2, help="episodes recorded before arming (record)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--schema", required=True, help="StoreSchema.to_attrs() as JSON (spares loading hardware.yaml)")
    args = parser.parse_args(argv)
    schema = StoreSchema.from_attrs(json.loads(args.schema))
    if args.action == "create":
        arm(args.point, args.detail, args.occurrence)
        EpisodeStore.create(args.store, schema).close()
    elif args.action == "record":
        with EpisodeStore.open_or_create(args.store, schema) as store:
            for _ in range(args.before):
                record_episode(store, store.num_episodes, args.steps)
            print(f"SAVED {store.num_episodes}", flush=True)
            arm(args.point, args.detail, args.occurrence)
            # One image thread: while the hook holds it, no other frame is written (exact tail counts).
            record_episode(store, store.num_episodes, args.steps, image_threads=1)
    elif args.action == "recover":
        arm(args.point, args.detail, args.occurrence)
        EpisodeStore.open(args.store, mode="a").close()
    else:
        arm(args.point, args.detail, args.occurrence)
        recompute_noop(args.store, NoopThresholds(joint_eps_rad=0.5, gripper_eps=0.5))
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
