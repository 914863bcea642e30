"""Start product-photo runs and follow them: ``python start_runs.py "a red bicycle" [--video]``.

Needs the worker running (``celery -A photo.worker worker``) and, with ``--video``, the receiver.
"""

from __future__ import annotations

import argparse
import sys

from photo.pipelines import start_product_photo
from photo.worker import mp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prompts", nargs="+", help="one run per prompt")
    parser.add_argument("--video", action="store_true", help="add the provider's video step")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to follow each run")
    args = parser.parse_args(argv)
    for prompt in args.prompts:
        run = start_product_photo(mp, prompt, video=args.video)
        print(f"{run.run_id}: {prompt!r}")
        for event in mp.store.follow_events(run.run_id, timeout_s=args.timeout):
            step = getattr(event, "step_id", None)
            print(f"  {event.seq:>3} {event.kind}" + (f" [{step}]" if step else ""))
        print(f"  -> {mp.store.require(run.run_id, include_events=False).status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
