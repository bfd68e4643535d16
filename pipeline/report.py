"""`graine report`: one HTML page and its PNG figures about a run, from the files its stages wrote.

    <run_dir>/report/index.html   the page; figures referenced by relative path, no network, no script
    <run_dir>/report/*.png        loss, schedule, throughput, perplexity, data_clean, data_blend, tokenizer

The report folder is built beside the old one and swapped in, so a reader never sees half a report and a
figure whose input has gone does not linger. A section whose input is missing (its stage not run yet) is a
paragraph naming the stage to run. Every string read from the run is HTML-escaped: run files are input
from whoever wrote them.
"""

from __future__ import annotations

import html
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from core.fs import fsync_dir, write_atomic
from core.lineage import RECORD
from pipeline import registry
from pipeline import report_data as data
from pipeline.config import RunConfig
from pipeline.report_data import Unavailable

FOLDER = "report"
INDEX = "index.html"
# The make target of each stage where it is not the stage's name.
MAKE_TARGET = {"clean": "clean-corpus"}


def build_report(cfg: RunConfig) -> Path:
    """Write `<run_dir>/report/` and return the path of its index.html."""
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_dir():
        from core.errors import ConfigError

        raise ConfigError(f"run_dir={run_dir} does not exist: run a stage first (graine run clean -c CONFIG)")
    tmp = run_dir / f".{FOLDER}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_atomic(tmp / INDEX, Page(cfg, tmp).render())
        _swap(tmp, run_dir / FOLDER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return run_dir / FOLDER / INDEX


def _swap(new: Path, target: Path) -> None:
    old = target.with_name(f".{FOLDER}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def e(value) -> str:
    """A run file's string, safe in HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def _fmt(value, digits: int = 4) -> str:
    value = data.number(value)
    return "–" if value is None else f"{value:.{digits}g}" if not value.is_integer() else f"{int(value):,}"


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Page:
    """The sections of the report, each from its own inputs; a missing input becomes a placeholder."""

    def __init__(self, cfg: RunConfig, out: Path):
        self.cfg, self.out, self.run_dir = cfg, out, Path(cfg.run_dir)
        self.figures: list[str] = []

    def render(self) -> str:
        sections = [("Training loss", self.training_loss), ("Learning rate and batch size", self.schedule),
                    ("Throughput and MFU", self.throughput),
                    ("Validation perplexity per language", self.perplexity),
                    ("Data mix: cleaning", self.clean_mix), ("Data mix: shards and blend", self.blend_mix),
                    ("Tokenizer: bytes per token", self.tokenizer), ("Lineage", self.lineage)]
        body = "".join(f"<section><h2>{e(title)}</h2>{self._section(build)}</section>" for title, build in sections)
        return PAGE.format(title=e(f"graine report: {self.run_dir.name}"), run_dir=e(self.run_dir),
                           when=e(time.strftime("%Y-%m-%d %H:%M:%S")), body=body)

    def _section(self, build: Callable[[], str]) -> str:
        try:
            return build()
        except Unavailable as missing:
            target = MAKE_TARGET.get(missing.stage, missing.stage)
            return (f'<p class="missing">Not available: {e(missing.why)}. Run the <code>{e(missing.stage)}</code> '
                    f"stage: <code>graine run {e(missing.stage)} -c CONFIG</code> (<code>make {e(target)}</code>), "
                    "then <code>graine report -c CONFIG</code> again.</p>")

    def figure(self, name: str, fig, caption: str) -> str:
        from pipeline.report_figures import png

        write_atomic(self.out / f"{name}.png", png(fig))
        self.figures.append(f"{name}.png")
        return f'<figure><img src="{name}.png" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption></figure>'

    def folder(self, stage: str) -> str:
        return registry.folder_of(stage)

    # --------------------------------------------------------------------------------- training
    def _training(self) -> data.TrainingLog:
        log = data.read_training(self.run_dir)
        if not log.train:
            raise Unavailable(f"{data.METRICS} holds no training record yet", "pretrain")
        return log

    def training_loss(self) -> str:
        from pipeline import report_figures as figs

        log = self._training()
        last = log.train[-1]
        facts = (f"<p>{len(log.train)} logged steps, last step {e(last['step'])}: loss {e(_fmt(last.get('loss')))}, "
                 f"{e(_fmt(last.get('tokens')))} tokens; {len(log.valid)} validation losses; "
                 f"{len(log.skipped_steps())} non-finite steps skipped; {len(log.checkpoints)} checkpoints on disk."
                 + (f" {log.bad_lines} unreadable log lines ignored." if log.bad_lines else "") + "</p>")
        events = ""
        if log.events:
            rows = [[ev.get("step"), ev.get("kind"), _fmt(ev.get("loss")), _fmt(ev.get("tokens")),
                     ev.get("checkpoint") or ev.get("reason") or ""] for ev in log.events]
            events = f"<h3>Events ({e(data.EVENTS)})</h3>" + table(["step", "kind", "loss", "tokens", "detail"], rows)
        return facts + self.figure("loss", figs.loss(log), "training and validation loss against tokens; skipped "
                                   "steps, spikes, rollbacks and checkpoints marked") + events

    def schedule(self) -> str:
        from pipeline import report_figures as figs

        return self.figure("schedule", figs.schedule(self._training()), "learning rate and global batch size (ramp-up)")

    def throughput(self) -> str:
        from pipeline import report_figures as figs

        log = self._training()
        rates = [v for r in log.train if (v := data.number(r.get("tokens_per_s"))) is not None]
        mfus = [v for r in log.train if (v := data.number(r.get("mfu"))) is not None]
        facts = (f"<p>Median {e(_fmt(sorted(rates)[len(rates) // 2]))} tokens/s"
                 + (f", median MFU {e(_fmt(100 * sorted(mfus)[len(mfus) // 2], 3))}%" if mfus else
                    "; no MFU: the device's peak is unknown (CPU), TFLOP/s per device shown instead")
                 + ".</p>") if rates else ""
        return facts + self.figure("throughput", figs.throughput(log), "tokens/s and MFU over time")

    # ------------------------------------------------------------------------------- evaluation
    def perplexity(self) -> str:
        from pipeline import report_figures as figs

        results = data.read_eval(self.run_dir, self.folder("evaluate"))
        last = max(p.step for ps in results.values() for p in ps)
        rows = [[name, last, _fmt(p.perplexity), _fmt(p.bits_per_byte, 3)]
                for name, ps in sorted(results.items()) for p in ps if p.step == last]
        return (self.figure("perplexity", figs.perplexity(results), "per-language validation perplexity and bits "
                            "per byte across checkpoints")
                + table(["dataset", "step", "perplexity", "bits per byte"], rows))

    # --------------------------------------------------------------------------------- data mix
    def clean_mix(self) -> str:
        from pipeline import report_figures as figs

        stats = data.read_clean_stats(self.run_dir, self.folder("clean"))
        rows = [[lang, _fmt(c.docs_in), _fmt(c.docs_out), _fmt(c.bytes_in), _fmt(c.bytes_out),
                 ", ".join(f"{r} {_fmt(n)}" for r, n in sorted(c.dropped.items(), key=lambda kv: -kv[1]))]
                for lang, c in sorted(stats.items())]
        return (self.figure("data_clean", figs.clean_mix(stats), "documents and bytes per language before and after "
                            "cleaning, and drops by reason")
                + table(["language", "docs in", "docs kept", "bytes in", "bytes kept", "dropped"], rows)
                + "<p>Tokens exist only after cleaning (the shards, below): the corpus is tokenized once it is clean."
                  "</p>")

    def blend_mix(self) -> str:
        from pipeline import report_figures as figs

        blend = data.read_blend(self.run_dir, self.folder("preprocess"))
        rows = [[name, b.lang, _fmt(b.train_documents), _fmt(b.train_tokens), _fmt(b.valid_tokens), _fmt(b.weight, 3)]
                for name, b in sorted(blend.items())]
        return (self.figure("data_blend", figs.blend_mix(blend), "tokens per dataset and blend weights")
                + table(["dataset", "language", "train documents", "train tokens", "valid tokens", "blend weight"], rows))

    def tokenizer(self) -> str:
        from pipeline import report_figures as figs

        measures = data.read_tokenizer_report(self.run_dir, self.folder("tokenizer"))
        rows = [[lang, _fmt(m.get("documents")), _fmt(m.get("bytes_per_token"), 3), _fmt(m.get("tokens_per_word"), 3)]
                for lang, m in sorted(measures.items())]
        return (self.figure("tokenizer", figs.tokenizer(measures), "tokenizer bytes per token per language "
                            "(held-out documents)")
                + table(["language", "held-out documents", "bytes per token", "tokens per word"], rows))

    # ---------------------------------------------------------------------------------- lineage
    def lineage(self) -> str:
        rows = []
        for name in registry.known():
            row = data.lineage_row(self.cfg, registry.get(name), registry.folder_of)
            inputs = ", ".join(f"{k} {v}" for k, v in sorted(row.inputs.items()))
            rows.append([row.stage, f"{row.folder}/", row.state, row.finished, inputs, row.config_hash,
                         row.output_hash, row.jobs, row.host])
        return (table(["stage", "folder", "state", "finished", "input hashes", "config hash", "output hash", "jobs",
                       "host"], rows)
                + f"<p>From each stage's <code>{e(RECORD)}</code>; <code>graine verify -c CONFIG</code> re-hashes the "
                  "outputs against them.</p>")


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="script-src 'none'; object-src 'none'; connect-src 'none'; base-uri 'none'; form-action 'none'">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
img {{ max-width: 100%; }} figure {{ margin: 1em 0; }} figcaption {{ color: #555; font-size: 12px; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 0.5em 0; }}
th, td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; }} th {{ background: #f3f3f3; }}
.missing {{ background: #fff6e0; border-left: 4px solid #e0a000; padding: 0.5em; }}
code {{ background: #f3f3f3; padding: 0 3px; }}
</style></head>
<body><h1>{title}</h1>
<p>Run directory <code>{run_dir}</code>; report built {when} by <code>graine report</code>.</p>
{body}
</body></html>
"""


# ------------------------------------------------------------------------------------ for status
def report_status(run_dir: Path, config: str = "CONFIG") -> str:
    """One line for `graine status`: where the report is, and whether run files changed since it was built."""
    index = run_dir / FOLDER / INDEX
    if not index.is_file():
        return f"report: none yet; build it with `graine report -c {config}` (make report)"
    built = index.stat().st_mtime
    inputs = [data.METRICS, data.EVENTS, f"{registry.folder_of('evaluate')}/results.jsonl",
              *(f"{registry.folder_of(name)}/{RECORD}" for name in registry.known())]
    newer = [rel for rel in inputs if (run_dir / rel).is_file() and (run_dir / rel).stat().st_mtime > built]
    if newer:
        return (f"report: {index} (older than {', '.join(newer)}; rebuild it with `graine report -c {config}`)")
    return f"report: {index} (up to date with the run's metrics and records)"
