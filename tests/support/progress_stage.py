"""A toy stage whose tasks report progress and wait for a go file: for `graine status` on a running array.

Each task of `toy-progress` counts 1,000 "docs" of 100 bytes, 10 every 20 ms; every task but the first
stops after 200 until the file named by TOY_PROGRESS_GO exists, so a test can look at the array while
one task is done and the others run. Registered by
value (cloudpickle) so local job processes run this code without importing tests/.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cloudpickle

from core.stage import Stage, Step, TaskContext
from pipeline import registry

DOCS = 1000


def count_docs(ctx: TaskContext) -> None:
    go = Path(os.environ["TOY_PROGRESS_GO"])
    with ctx.progress(total=DOCS, unit="docs") as progress:
        for i in range(0, DOCS, 10):
            while i >= 200 and ctx.rank > 0 and not go.exists():
                time.sleep(0.05)
            time.sleep(0.02)
            progress.update(10, 1000)
    (ctx.work_dir / f"done-{ctx.rank:05d}").write_text(str(progress.done))


def publish_counts(ctx: TaskContext) -> None:
    total = sum(int(p.read_text()) for p in ctx.work_dir.glob("done-*"))
    (ctx.out_dir / "count.txt").write_text(f"{total}\n")


STAGE = Stage(name="toy-progress", needs=(), sections=("seed",),
              steps=(Step("count", count_docs, lambda cfg: cfg.clean.num_tasks), Step("sum", publish_counts)))


def register() -> None:
    import sys

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    registry.register(STAGE)


def unregister() -> None:
    registry.unregister(STAGE.name)
