"""Two small stages for testing the orchestration without the product's stages.

`toy-parts` writes one part per task and merges them; `toy-sum` reads it. Knobs come from the
environment so that local and Slurm jobs see them: TOY_EXEC_LOG (append one line per task run),
TOY_DELAY (seconds per task), TOY_FAIL_RANK (that rank raises).
"""

from __future__ import annotations

import contextlib
import os
import time

import cloudpickle

from core.stage import Stage, Step, TaskContext
from pipeline import registry


def _note(ctx: TaskContext) -> None:
    path = os.environ.get("TOY_EXEC_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{ctx.stage}/{ctx.step}/{ctx.rank}\n")


def write_part(ctx: TaskContext) -> None:
    _note(ctx)
    time.sleep(float(os.environ.get("TOY_DELAY", "0")) * (1 + ctx.rank % 3) / 2)
    if os.environ.get("TOY_FAIL_RANK") == str(ctx.rank):
        raise RuntimeError(f"toy failure in task {ctx.rank}")
    part = ctx.work_dir / f"part-{ctx.rank:05d}.txt"
    lines = [f"{ctx.cfg.seed}:{ctx.cfg.clean.text_field}:{ctx.rank}:{i}" for i in range(100)]
    tmp = part.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, part)


def merge_parts(ctx: TaskContext) -> None:
    _note(ctx)
    parts = sorted(ctx.work_dir.glob("part-*.txt"))
    (ctx.out_dir / "all.txt").write_text("".join(p.read_text() for p in parts))


def sum_lines(ctx: TaskContext) -> None:
    _note(ctx)
    n = len((ctx.input_dir("toy-parts") / "all.txt").read_text().splitlines())
    (ctx.out_dir / "count.txt").write_text(f"{n} {ctx.cfg.tokenizer.vocab_size}\n")


def num_parts(cfg) -> int:
    return cfg.clean.num_tasks


PARTS = Stage(name="toy-parts", needs=(), sections=("seed", "clean"),
              steps=(Step("write", write_part, num_parts), Step("merge", merge_parts)),
              summary=lambda d: f"{len((d / 'all.txt').read_text().splitlines())} lines")
SUM = Stage(name="toy-sum", needs=("toy-parts",), sections=("tokenizer",), steps=(Step("sum", sum_lines),))


@contextlib.contextmanager
def registered():
    """The toy stages, registered for the duration of the block."""
    register()
    try:
        yield
    finally:
        registry.unregister(PARTS.name)
        registry.unregister(SUM.name)


def register() -> None:
    # Jobs run in other processes that cannot import tests/: ship this module's code with the pickle.
    import sys

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    registry.register(PARTS)
    registry.register(SUM)
