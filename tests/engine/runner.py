"""A runner process for the engine tests: `runner.py <flow_dir> <work_dir> [plan.json]`.

Under the instance lock, runs the plan (freezing it if new) or, without a plan file, resumes
the plan in progress. Prints the result as JSON and exits with the result's exit code, as the
real `apply`/`resume` commands will.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fioup_flow.checkpoint import CheckpointStore, store_path  # noqa: E402
from fioup_flow.engine import Executor, RetryPolicy  # noqa: E402
from fioup_flow.errors import FioupFlowError  # noqa: E402
from fioup_flow.graph import Plan  # noqa: E402
from fioup_flow.lock import LOCK_NAME, InstanceLock  # noqa: E402
from tests.engine.kinds import all_kinds  # noqa: E402

FAST_RETRY = RetryPolicy(attempts=4, base_s=0.01, max_wait_s=0.05, budget_s=5)


def main(flow_dir: Path, work: Path, plan_file: Path | None) -> int:
    with InstanceLock(flow_dir / LOCK_NAME), CheckpointStore(store_path(flow_dir)) as store:
        plan = Plan.from_json(plan_file.read_text()) if plan_file else None
        result = Executor(store, all_kinds(work), limits={"disk": 1}, retry=FAST_RETRY, poll_s=0.05).run(plan)
    print(json.dumps({"outcome": result.outcome, "ran": result.ran,
                      "failed": {k: str(v) for k, v in result.failed.items()}}), flush=True)
    return result.exit_code


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    try:
        sys.exit(main(args[0], args[1], args[2] if len(args) > 2 else None))
    except FioupFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
