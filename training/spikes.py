"""Loss spikes: detected from running statistics, skipped or rolled back past, and logged as events.

Detection (`SpikeDetector`): a step is a spike when its loss, or its gradient norm, exceeds the mean plus
`train.spike.sigma` standard deviations of the last `train.spike.window` calm steps, once
`train.spike.warmup_steps` have been seen. Both values are the all-reduced ones (the mean loss over every
rank, the global gradient norm), so every rank takes the same decision without a collective of its own.
Spikes do not enter the window: a spike that lasts stays a spike.

Policy (`SpikePolicy`, `train.spike.action`):
    off       nothing is measured (no host read per step)
    log       spikes are logged as events, nothing else
    skip      a loss spike's update is not applied (OLMo-core's SkipStepAdamW idea); spikes that persist
              stop the run with an error naming the last checkpoint before them
    rollback  as skip, and spikes that persist (`persist_spikes` within `persist_steps` steps, or the loss
              above `loss_factor` x its pre-spike mean for `persist_steps` steps in a row) reload the last
              checkpoint saved before the spikes began, skip the samples consumed since plus
              `margin_samples`, optionally lower the LR, save at once, and continue; after `max_rollbacks`
              rollbacks the run stops with an error.
The loss is known before the update, so a loss spike can be skipped; the gradient norm is computed inside
DeepSpeed's optimizer step (ZeRO 1-3), so a gradient-norm spike is counted (and can cause a rollback)
but its clipped update is applied.

The step counter never goes back: after a rollback at step D the run continues at D+1 from the older
weights, and the rollback's checkpoint is `global_step<D>`. So checkpoint names and metrics stay unique
and a kill at any moment resumes onto the uninterrupted trajectory: before that save is published the
run replays from an older checkpoint to the same decision, after it the save holds the outcome.

Samples are skipped by position in the global sample order (`SkipRanges`), never by step, so a range
means the same data whatever the batch size, its ramp-up or the number of ranks. Ranges come from
`train.skip_samples` (by hand) and from rollbacks (in the checkpoint's state, under "spikes").

Events go to `logs/events.jsonl`, one JSON object per line (rank 0 writes it). An attempt killed before
its next checkpoint replays its last steps, so an event may appear twice: `read_events` keeps the last of
each (kind, step).

Plain Python: the config section is imported whenever the run's config is assembled.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.config import param
from core.errors import ConfigError, StageError

log = logging.getLogger("graine.train")

EVENTS_FILE = "events.jsonl"


@dataclass(kw_only=True)
class SpikeConfig:
    action: Literal["off", "log", "skip", "rollback"] = param(
        "off", help="what a loss spike does: off (not measured), log (an event), skip (its update is dropped), "
                    "rollback (skip; and when spikes persist, reload the checkpoint before them and skip their data)")
    sigma: float = param(6.0, gt=0.0, help="a spike exceeds the window's mean + sigma x its std "
                                           "(OLMo-core's SkipStepOptimizer: 6)")
    window: int = param(128, ge=2, help="recent calm steps the mean and std cover (OLMo-core: 128)")
    warmup_steps: int = param(128, ge=2, help="calm steps seen before detection starts (the early loss falls too "
                                              "fast for its mean to mean much)")
    grad_norm: bool = param(True, help="also test the gradient norm (counted, not skippable with ZeRO 1-3)")
    persist_spikes: int = param(3, ge=1, help="N: N spikes within train.spike.persist_steps steps persist")
    persist_steps: int = param(20, ge=1, help="M: the span of train.spike.persist_spikes, and how many steps in a "
                                              "row the loss may stay above loss_factor x its pre-spike mean")
    loss_factor: float = param(1.5, ge=0.0, help="see persist_steps; 0 disables that test")
    margin_samples: int = param(0, ge=0, help="samples skipped after the spike's data on a rollback, beyond those "
                                              "consumed since the reloaded checkpoint (PaLM skipped 200-500 batches)")
    lr_factor: float = param(1.0, gt=0.0, le=1.0, help="LR multiplier after a rollback (1 = unchanged)")
    lr_samples: int = param(0, ge=0, help="samples trained at the lowered LR after a rollback")
    max_rollbacks: int = param(3, ge=0, help="rollbacks before the run stops with an error")

    def __post_init__(self) -> None:
        if self.persist_spikes > self.persist_steps:
            raise ConfigError(f"train.spike.persist_spikes={self.persist_spikes} exceeds train.spike.persist_steps="
                              f"{self.persist_steps}: that many spikes cannot fit in the span; lower persist_spikes")


# ------------------------------------------------------------------------------------ sample ranges
class SkipRanges:
    """Sorted, merged, half-open ranges [start, end) of positions in the global sample order."""

    def __init__(self, ranges=()):
        merged: list[list[int]] = []
        for start, end in sorted((int(a), int(b)) for a, b in ranges if b > a):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.ranges = merged
        self._starts = [a for a, _ in merged]

    @classmethod
    def from_config(cls, pairs: list, key: str = "train.skip_samples") -> SkipRanges:
        """`[[start, end], ...]` as the config gives it; ConfigError naming the bad pair."""
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, list) and len(pair) == 2 and 0 <= pair[0] < pair[1]):
                raise ConfigError(f"{key}[{i}]={pair!r} is not a range of samples; write [start, end] with "
                                  f"0 <= start < end, e.g. {key}='[[1000, 1500]]'")
        return cls(pairs)

    def __or__(self, other: SkipRanges) -> SkipRanges:
        return SkipRanges(self.ranges + other.ranges)

    def __len__(self) -> int:
        return sum(b - a for a, b in self.ranges)

    def take(self, position: int, n: int) -> tuple[list[int], int]:
        """The next `n` positions from `position` that are not skipped, and the position after them."""
        out: list[int] = []
        while len(out) < n:
            i = bisect.bisect_right(self._starts, position) - 1
            if i >= 0 and position < self.ranges[i][1]:  # inside a range: jump over it
                position = self.ranges[i][1]
                continue
            following = self._starts[i + 1] if i + 1 < len(self._starts) else math.inf
            k = int(min(n - len(out), following - position))
            out.extend(range(position, position + k))
            position += k
        return out, position


# ---------------------------------------------------------------------------------------- detector
class SpikeDetector:
    """Running mean and std of the loss and gradient norm over the last `window` calm steps."""

    def __init__(self, window: int, warmup_steps: int, sigma: float):
        self.sigma, self.warmup = sigma, warmup_steps
        self.values = {"loss": deque(maxlen=window), "grad_norm": deque(maxlen=window)}
        self.seen = 0  # calm steps observed in the run's life

    def stats(self, name: str) -> tuple[float, float] | None:
        """(mean, std) of `name`'s window, or None while warming up."""
        values = self.values[name]
        if self.seen < self.warmup or len(values) < 2:
            return None
        mean = math.fsum(values) / len(values)
        return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))

    def threshold(self, name: str) -> float | None:
        stats = self.stats(name)
        return None if stats is None else stats[0] + self.sigma * stats[1]

    def is_spike(self, name: str, value: float | None) -> bool:
        limit = self.threshold(name)
        return value is not None and limit is not None and math.isfinite(value) and value > limit

    def add(self, loss: float, grad_norm: float | None) -> None:
        """A calm step enters the window."""
        self.values["loss"].append(loss)
        if grad_norm is not None and math.isfinite(grad_norm):
            self.values["grad_norm"].append(grad_norm)
        self.seen += 1

    def state_dict(self) -> dict:
        return {"seen": self.seen, **{k: list(v) for k, v in self.values.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.seen = int(state.get("seen", 0))
        for name, values in self.values.items():
            values.clear()
            values.extend(float(v) for v in state.get(name, ()))


# ------------------------------------------------------------------------------------------ events
class EventLog:
    """`logs/events.jsonl` (rank 0 writes; each line flushed), and a callback for TensorBoard."""

    def __init__(self, log_dir: Path, rank: int, on_event: Callable[[dict], None] | None = None):
        self.path, self.rank, self.on_event = Path(log_dir) / EVENTS_FILE, rank, on_event

    def write(self, kind: str, step: int, **fields) -> dict:
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **fields}
        if self.rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.on_event is not None:
                self.on_event(record)
        return record


def read_events(run_dir: str | Path) -> list[dict]:
    """The events of `<run_dir>/logs/events.jsonl` in step order, the last line of each (kind, step) kept
    (a replay after a kill writes the same event again); lines cut by a kill are ignored."""
    path = Path(run_dir) / "logs" / EVENTS_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    events: dict[tuple, dict] = {}
    for line in lines:
        try:
            record = json.loads(line)
            events[(record["kind"], record["step"])] = record
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(events.values(), key=lambda r: r["step"])


def describe_event(e: dict) -> str:
    """One line of `graine status`."""
    loss = f"loss {e['loss']:.4f}" if isinstance(e.get("loss"), float) else "loss ?"
    text = f"step {e['step']} {e['kind']}: {loss}"
    if isinstance(e.get("grad_norm"), float):
        text += f", grad norm {e['grad_norm']:.3g}"
    if e.get("checkpoint"):
        text += f"; reloaded {Path(e['checkpoint']).name}, skipped samples {e['skipped_samples']}"
    return text


# ------------------------------------------------------------------------------------------ policy
class SpikePolicy:
    """Decides, from the all-reduced loss and gradient norm of each step, what a spike does; keeps the
    run's spike ledger (counts, skipped ranges, the LR lowering, the last calm checkpoint) for the
    checkpoint. Every rank holds the same one."""

    def __init__(self, cfg: SpikeConfig, events: EventLog):
        self.cfg, self.events = cfg, events
        self.detector = SpikeDetector(cfg.window, cfg.warmup_steps, cfg.sigma)
        self.recent: list[int] = []  # steps of the spikes of the open episode within persist_steps
        self.episode: dict | None = None  # {"start", "pre_mean", "elevated"} from its first spike on
        self.spikes = self.skipped = self.rollbacks = 0
        self.ranges = SkipRanges()  # skipped by rollbacks
        self.lr_until = 0  # trained samples below which the LR is lowered
        self.anchor: int | None = None  # the last checkpoint saved with no episode open
        self.skipping = False  # this step's update is dropped

    @property
    def active(self) -> bool:
        return self.cfg.action != "off"

    # -- the step
    def before_update(self, step: int, loss: float) -> bool:
        """Whether this step's update is to be dropped (a loss spike under skip or rollback)."""
        self.skipping = self.cfg.action in ("skip", "rollback") and self.detector.is_spike("loss", loss)
        return self.skipping

    def after_update(self, step: int, loss: float, grad_norm: float | None, where: dict) -> str | None:
        """Record the step; returns "rollback" when the spikes persist and the action is rollback.
        `where` (tokens, samples) goes into the events."""
        grad_norm = grad_norm if self.cfg.grad_norm else None
        spiky = [n for n, v in (("loss", loss), ("grad_norm", grad_norm)) if self.detector.is_spike(n, v)]
        if not spiky:
            self.detector.add(loss, grad_norm)
        else:
            self.spikes += 1
            self.skipped += self.skipping
            limits = {f"{n}_threshold": self.detector.threshold(n) for n in spiky}
            self.events.write("skip" if self.skipping else "spike", step, loss=loss, grad_norm=grad_norm,
                              spiked=spiky, **limits, **where)
            log.warning("step %d: %s spike (loss %.4f, grad norm %s)%s", step, " and ".join(spiky), loss,
                        grad_norm, ": update skipped" if self.skipping else "")
            if self.episode is None:
                mean = self.detector.stats("loss")
                self.episode = {"start": step, "pre_mean": mean[0] if mean else loss, "elevated": 0}
            self.recent.append(step)
        return self._persistence(step, loss, grad_norm, where)

    def _persistence(self, step: int, loss: float, grad_norm: float | None, where: dict) -> str | None:
        ep, cfg = self.episode, self.cfg
        if cfg.action == "log":  # spikes are only logged: no episode to follow
            self.episode = None
            return None
        if ep is None:
            return None
        self.recent = [s for s in self.recent if s > step - cfg.persist_steps]
        elevated = cfg.loss_factor > 0 and loss > cfg.loss_factor * ep["pre_mean"]
        ep["elevated"] = ep["elevated"] + 1 if elevated else 0
        if len(self.recent) >= cfg.persist_spikes or ep["elevated"] >= cfg.persist_steps:
            why = (f"{len(self.recent)} spikes within {cfg.persist_steps} steps" if len(self.recent) >= cfg.persist_spikes
                   else f"loss above {cfg.loss_factor} x the pre-spike mean {ep['pre_mean']:.4f} for "
                        f"{ep['elevated']} steps")
            self._stop_unless_rollback(step, why, loss, grad_norm, where)
            return "rollback"
        if not self.recent and not ep["elevated"]:
            self.episode = None  # calm again for persist_steps steps
        return None

    def _stop_unless_rollback(self, step: int, why: str, loss: float, grad_norm, where: dict) -> None:
        anchor = f"global_step{self.anchor}" if self.anchor is not None else "none (no checkpoint before the spikes)"
        problem = None
        if self.cfg.action == "skip":
            problem = "train.spike.action=skip does not roll back; set train.spike.action=rollback"
        elif self.rollbacks >= self.cfg.max_rollbacks:
            problem = (f"train.spike.max_rollbacks={self.cfg.max_rollbacks} rollbacks were made already; lower "
                       "train.lr or train.spike.lr_factor, raise train.spike.margin_samples or max_rollbacks")
        elif self.anchor is None:
            problem = "no checkpoint was saved before the spikes began; lower checkpoint.interval"
        if problem:
            self.events.write("stop", step, loss=loss, grad_norm=grad_norm, reason=why, **where)
            raise StageError(f"loss spikes persist at step {step} ({why}, since step {self.episode['start']}): "
                             f"{problem}. Last checkpoint before them: {anchor}; to resume past the bad data by "
                             "hand, add its samples to train.skip_samples (README: Loss spikes)")

    # -- rollback, LR, checkpoints
    def rolled_back(self, step: int, anchor_state: dict, start: int, end: int, where: dict, trained: int) -> list[int]:
        """After reloading the anchor (whose loader had trained `trained` samples) at step `step`: the
        ledger goes on, the detector takes the anchor's (pre-spike) statistics, and positions
        [start, end + margin) are skipped. Returns that range."""
        skipped = [start, end + self.cfg.margin_samples]
        saved = anchor_state.get("spikes") or {}
        self.detector.load_state_dict(saved.get("detector") or {})
        self.episode, self.recent, self.skipping = None, [], False
        self.rollbacks += 1
        self.ranges = self.ranges | SkipRanges([skipped])
        self.lr_until = trained + self.cfg.lr_samples if self.cfg.lr_factor != 1.0 else self.lr_until
        self.events.write("rollback", step, checkpoint=f"global_step{self.anchor}", skipped_samples=skipped,
                          rollbacks=self.rollbacks, **where)
        log.warning("step %d: rolled back to global_step%s, skipping samples [%d, %d) (rollback %d of at most %d)",
                    step, self.anchor, *skipped, self.rollbacks, self.cfg.max_rollbacks)
        return skipped

    def lr_scale(self, consumed_samples: int) -> float:
        return self.cfg.lr_factor if consumed_samples < self.lr_until else 1.0

    def before_save(self, step: int) -> set[int]:
        """Called before each save of `step`: a save with no episode open is the new rollback anchor.
        Returns the steps retention must keep (the anchor, while spikes may still roll back to it)."""
        if self.episode is None:
            self.anchor = step
        return {self.anchor} if self.anchor is not None else set()

    def metrics(self) -> dict:
        return {"spikes": self.spikes, "spike_skips": self.skipped, "rollbacks": self.rollbacks} if self.active else {}

    def state_dict(self) -> dict:
        return {"detector": self.detector.state_dict(), "episode": self.episode, "recent": self.recent,
                "spikes": self.spikes, "skipped": self.skipped, "rollbacks": self.rollbacks,
                "skip_ranges": self.ranges.ranges, "lr_until": self.lr_until, "anchor": self.anchor}

    def load_state_dict(self, state: dict, step: int) -> None:
        """The ledger saved at `step`; a checkpoint from before spike handling is its own anchor."""
        self.detector.load_state_dict(state.get("detector") or {})
        self.episode, self.recent = state.get("episode"), [int(s) for s in state.get("recent", ())]
        self.spikes, self.skipped = int(state.get("spikes", 0)), int(state.get("skipped", 0))
        self.rollbacks, self.lr_until = int(state.get("rollbacks", 0)), int(state.get("lr_until", 0))
        self.ranges = SkipRanges(state.get("skip_ranges", ()))
        self.anchor = state["anchor"] if "anchor" in state else step
