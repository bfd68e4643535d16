"""The figures of `graine report`, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Each function takes what `pipeline.report_data` read and returns a Figure; `png()` renders it. Labels that
come from run files (language and dataset names, drop reasons) go through `text()`: a `$` in a name is
shown as is, never parsed as a mathtext formula (which could fail to parse and stop the drawing).
"""

from __future__ import annotations

import io

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.report_data import BlendEntry, EvalPoint, LanguageCounts, TrainingLog, number, series

STYLE = {"font.size": 9, "axes.grid": True, "grid.alpha": 0.3}
EVENT_STYLE = {"spike": ("tab:orange", "x"), "skip": ("tab:red", "v"), "rollback": ("tab:purple", "D"),
               "stop": ("black", "s")}


def text(value) -> str:
    """A run file's string as a matplotlib label: dollars escaped, so no mathtext."""
    return str(value).replace("$", r"\$")


def png(fig: Figure) -> bytes:
    with matplotlib.rc_context(STYLE):
        FigureCanvasAgg(fig)
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=100)
    return out.getvalue()


def _figure(rows: int = 1, cols: int = 1, width: float = 9.0, height: float = 3.6):
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


# ------------------------------------------------------------------------------------- training
def loss(log: TrainingLog) -> Figure:
    """Training and validation loss against tokens, with skipped steps, spike events and checkpoints."""
    fig, (ax,) = _figure(height=4.2)
    with matplotlib.rc_context(STYLE):
        x, y = series(log.train, "loss")
        ax.plot(x, y, color="tab:blue", lw=1, label="training loss")
        vx, vy = _with_tokens(log, log.valid, "loss")
        if vx:
            ax.plot(vx, vy, color="tab:green", marker="o", ms=4, lw=1.5, label="validation loss")
        by_step = {r["step"]: r for r in log.train}
        skipped = [(t, number(by_step[s].get("loss"))) for s in log.skipped_steps()
                   if (t := number(by_step[s].get("tokens"))) is not None]
        if skipped:
            ax.scatter([t for t, _ in skipped], [v if v is not None else _top(y) for _, v in skipped],
                       color="tab:red", marker="|", s=120, label=f"non-finite step skipped ({len(skipped)})")
        for kind, (color, marker) in EVENT_STYLE.items():
            points = [(t, number(e.get("loss"))) for e in log.events if e.get("kind") == kind
                      if (t := _event_tokens(log, e)) is not None]
            if points:
                ax.scatter([t for t, _ in points], [v if v is not None else _top(y) for _, v in points],
                           color=color, marker=marker, s=36, zorder=3, label=f"{kind} ({len(points)})")
        for i, (_, tokens) in enumerate(c for c in log.checkpoints if c[1] is not None):
            ax.axvline(tokens, color="grey", ls=":", lw=1, label="checkpoint on disk" if i == 0 else None)
        ax.set_xlabel("tokens consumed")
        ax.set_ylabel("loss (nats per token)")
        ax.set_title("loss")
        ax.legend(loc="upper right", fontsize=8)
    return fig


def _with_tokens(log: TrainingLog, records: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        value, tokens = number(r.get(key)), log.tokens_at(r["step"])
        if value is not None and tokens is not None:
            xs.append(tokens)
            ys.append(value)
    return xs, ys


def _event_tokens(log: TrainingLog, event: dict) -> float | None:
    tokens = number(event.get("tokens"))
    return tokens if tokens is not None else log.tokens_at(event["step"])


def _top(values: list[float]) -> float:
    return max(values) if values else 0.0


def schedule(log: TrainingLog) -> Figure:
    """The learning rate and the global batch size (its ramp-up) against tokens."""
    fig, (lr_ax, batch_ax) = _figure(1, 2, height=3.4)
    with matplotlib.rc_context(STYLE):
        lr_ax.plot(*series(log.train, "lr"), color="tab:blue")
        lr_ax.set(xlabel="tokens consumed", ylabel="learning rate", title="learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        batch_ax.step(*series(log.train, "global_batch"), where="post", color="tab:brown")
        batch_ax.set(xlabel="tokens consumed", ylabel="samples per step", title="global batch size")
    return fig


def throughput(log: TrainingLog) -> Figure:
    """Tokens/s and MFU (TFLOP/s per device where no peak is known: CPUs) over wall-clock time."""
    fig, (rate_ax, mfu_ax) = _figure(1, 2, height=3.4)
    times = [t for r in log.train if (t := number(r.get("time"))) is not None]
    start, span = (min(times), max(times) - min(times)) if times else (0.0, 0.0)
    unit, scale = ("s", 1) if span < 120 else ("min", 60) if span < 7200 else ("h", 3600)
    records = [{**r, "elapsed": (t - start) / scale} for r in log.train if (t := number(r.get("time"))) is not None]
    xlabel = f"{unit} since the first logged step"
    with matplotlib.rc_context(STYLE):
        rate_ax.plot(*series(records, "tokens_per_s", x="elapsed"), color="tab:blue", marker=".", lw=1)
        rate_ax.set(xlabel=xlabel, ylabel="tokens/s (all ranks)", title="throughput")
        mx, my = series(records, "mfu", x="elapsed")
        if mx:
            mfu_ax.plot(mx, [100 * v for v in my], color="tab:green", marker=".", lw=1)
            mfu_ax.set(ylabel="MFU (%)", title="model FLOPs utilisation")
        else:
            mfu_ax.plot(*series(records, "tflops_per_device", x="elapsed"), color="tab:green", marker=".", lw=1)
            mfu_ax.set(ylabel="TFLOP/s per device", title="TFLOP/s per device (no MFU: peak unknown)")
        mfu_ax.set_xlabel(xlabel)
    return fig


# ----------------------------------------------------------------------------------- evaluation
def perplexity(results: dict[str, list[EvalPoint]]) -> Figure:
    """Per-language validation perplexity and bits per byte across the evaluated checkpoints."""
    fig, (ppl_ax, bpb_ax) = _figure(1, 2, height=3.8)
    with matplotlib.rc_context(STYLE):
        colors = matplotlib.colormaps["tab10" if len(results) <= 10 else "tab20"]
        for i, (dataset, points) in enumerate(sorted(results.items())):
            style = {"marker": "o", "ms": 3, "color": colors(i % colors.N), "label": text(dataset)}
            ppl = [(p.step, p.perplexity) for p in points if p.perplexity is not None]
            bpb = [(p.step, p.bits_per_byte) for p in points if p.bits_per_byte is not None]
            ppl_ax.plot([s for s, _ in ppl], [v for _, v in ppl], **style)
            bpb_ax.plot([s for s, _ in bpb], [v for _, v in bpb], **style)
        ppl_ax.set(xlabel="checkpoint step", ylabel="perplexity", title="validation perplexity per dataset")
        if any(p.perplexity for ps in results.values() for p in ps):
            ppl_ax.set_yscale("log")
        bpb_ax.set(xlabel="checkpoint step", ylabel="bits per byte", title="bits per byte (compares tokenisations)")
        bpb_ax.legend(fontsize=7, ncol=2, loc="upper right")
    return fig


# ------------------------------------------------------------------------------------- data mix
def clean_mix(stats: dict[str, LanguageCounts]) -> Figure:
    """Documents and bytes per language before and after cleaning, and what was dropped, by reason."""
    langs = sorted(stats, key=lambda lang: -stats[lang].docs_in)
    fig, (docs_ax, bytes_ax, drop_ax) = _figure(3, 1, width=max(9.0, 0.5 * len(langs)), height=3.0)
    pos = list(range(len(langs)))
    with matplotlib.rc_context(STYLE):
        for ax, key, unit in ((docs_ax, "docs", "documents"), (bytes_ax, "bytes", "MB")):
            scale = 1e6 if unit == "MB" else 1
            ax.bar([p - 0.2 for p in pos], [getattr(stats[g], f"{key}_in") / scale for g in langs], 0.4,
                   label="before cleaning", color="tab:gray")
            ax.bar([p + 0.2 for p in pos], [getattr(stats[g], f"{key}_out") / scale for g in langs], 0.4,
                   label="kept", color="tab:blue")
            ax.set(ylabel=unit, title=f"{unit} per language, before and after cleaning")
            ax.set_xticks(pos, [text(g) for g in langs])
            ax.legend(fontsize=8)
        reasons = sorted({r for c in stats.values() for r in c.dropped})
        bottom = [0.0] * len(langs)
        for reason in reasons:
            counts = [stats[g].dropped.get(reason, 0.0) for g in langs]
            drop_ax.bar(pos, counts, 0.6, bottom=bottom, label=text(reason))
            bottom = [b + c for b, c in zip(bottom, counts)]
        drop_ax.set(ylabel="documents", title="documents dropped per language, by reason")
        drop_ax.set_xticks(pos, [text(g) for g in langs])
        if reasons:
            drop_ax.legend(fontsize=7, ncol=3)
    return fig


def blend_mix(blend: dict[str, BlendEntry]) -> Figure:
    """Tokens per dataset in the shards (train and valid) and the blend's sampling weights."""
    names = sorted(blend, key=lambda n: -blend[n].train_tokens)
    fig, (tok_ax, weight_ax) = _figure(1, 2, width=max(9.0, 0.8 * len(names)), height=3.6)
    pos = list(range(len(names)))
    with matplotlib.rc_context(STYLE):
        tok_ax.bar([p - 0.2 for p in pos], [blend[n].train_tokens for n in names], 0.4, label="train", color="tab:blue")
        tok_ax.bar([p + 0.2 for p in pos], [blend[n].valid_tokens for n in names], 0.4, label="valid", color="tab:green")
        tok_ax.set(ylabel="tokens", title="tokens per dataset after cleaning (shards)")
        tok_ax.set_xticks(pos, [text(n) for n in names], rotation=45, ha="right")
        tok_ax.legend(fontsize=8)
        total = sum(blend[n].train_tokens for n in names) or 1.0
        weight_ax.bar([p - 0.2 for p in pos], [100 * blend[n].train_tokens / total for n in names], 0.4,
                      label="share of train tokens", color="tab:gray")
        weight_ax.bar([p + 0.2 for p in pos], [100 * (blend[n].weight or 0.0) for n in names], 0.4,
                      label="blend weight (sampled)", color="tab:orange")
        weight_ax.set(ylabel="%", title="blend weights vs natural shares")
        weight_ax.set_xticks(pos, [text(n) for n in names], rotation=45, ha="right")
        weight_ax.legend(fontsize=8)
    return fig


def tokenizer(measures: dict[str, dict[str, float | None]]) -> Figure:
    """Bytes per token (and tokens per word) per language on held-out documents."""
    langs = sorted(measures, key=lambda lang: -(measures[lang].get("bytes_per_token") or 0.0))
    fig, (bpt_ax, tpw_ax) = _figure(1, 2, width=max(9.0, 0.8 * len(langs)), height=3.4)
    pos = list(range(len(langs)))
    with matplotlib.rc_context(STYLE):
        bpt_ax.bar(pos, [measures[g].get("bytes_per_token") or 0.0 for g in langs], color="tab:blue")
        bpt_ax.set(ylabel="UTF-8 bytes per token", title="bytes per token (higher: fewer tokens per text)")
        bpt_ax.set_xticks(pos, [text(g) for g in langs])
        tpw_ax.bar(pos, [measures[g].get("tokens_per_word") or 0.0 for g in langs], color="tab:purple")
        tpw_ax.set(ylabel="tokens per word", title="tokens per whitespace word")
        tpw_ax.set_xticks(pos, [text(g) for g in langs])
    return fig
