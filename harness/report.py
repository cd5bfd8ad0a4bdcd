"""One self-contained HTML report from the store: no server, no CDN, no script.

It reads only the results file, so it works on a file copied from another machine. Every string
that came from a model or a user goes through `html.escape`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from harness import __version__, store
from harness.errors import UserError
from harness.leakage import flagged_by_method, worst

SAMPLES_SHOWN = 6

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#1d2329;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{margin-top:2.2rem;border-bottom:1px solid #d8dde3;padding-bottom:.3rem}
.meta{color:#5b6670} table{border-collapse:collapse;width:100%;margin:.6rem 0}
th,td{border-bottom:1px solid #e4e8ec;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f5f7f9;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.bar{position:relative;height:.8rem;background:#eef1f4;border-radius:3px;min-width:120px}
.bar .fill{position:absolute;top:0;bottom:0;left:0;background:#3b82c4;border-radius:3px}
.bar .ci{position:absolute;top:-.15rem;bottom:-.15rem;border-left:2px solid #1d2329;border-right:2px solid #1d2329}
.ci-txt{color:#5b6670;font-size:.85em} .best{font-weight:700}
.pass{color:#15803d;font-weight:600} .fail{color:#b91c1c;font-weight:600} .failed{color:#b91c1c}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font:12.5px/1.4 ui-monospace,Consolas,monospace;background:#f7f8fa;padding:.35rem;border-radius:4px}
.wide{overflow-x:auto} .charts{display:flex;flex-wrap:wrap;gap:1rem} figure{margin:.5rem 0}
figcaption{font-size:.9em;color:#3d4750;max-width:460px} svg.chart{background:#fbfcfd;border:1px solid #e4e8ec;border-radius:4px} .sample{margin:1rem 0 1.6rem} .sample h4{margin:.2rem 0}
"""


def _num(x, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _bar(m: dict | None) -> str:
    if not m or m["value"] is None:
        return "–"
    v, lo, hi = m["value"], m["ci_low"], m["ci_high"]
    ci = ""
    if lo is not None and not math.isnan(lo):
        ci = f'<div class="ci" style="left:{lo * 100:.1f}%;width:{max(hi - lo, 0) * 100:.1f}%"></div>'
        txt = f'{v:.2f} <span class="ci-txt">[{lo:.2f}, {hi:.2f}]</span>'
    else:
        txt = f"{v:.2f}"
    return (f'<div>{txt}</div><div class="bar" title="95% confidence interval">'
            f'<div class="fill" style="width:{v * 100:.1f}%"></div>{ci}</div>')


def _stat(m: dict | None) -> str:
    """A value and its interval, for metrics without a 0–1 scale (nll, perplexity)."""
    if not m or m["value"] is None:
        return "–"
    return f"{m['value']:.3f} <span class='ci-txt'>[{m['ci_low']:.3f}, {m['ci_high']:.3f}]</span>"


def _diff(d: dict | None, holm: bool = False) -> str:
    """A paired difference with its interval; coloured only when the interval excludes 0."""
    if not d or d["diff"] is None or math.isnan(d["ci_low"]):
        return "–"
    cls = "pass" if d["ci_low"] > 0 else "fail" if d["ci_high"] < 0 else ""
    p = d["p_holm"] if holm else d["p_value"]
    return (f"<span class='{cls}'>{d['diff']:+.2f}</span> <span class='ci-txt'>[{d['ci_low']:+.2f}, "
            f"{d['ci_high']:+.2f}] {_p(p)}</span>")


def _p(p: float) -> str:
    # A bootstrap p-value of 0 means "below 1 / resamples", never exactly 0.
    return "" if p != p else "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _int(x) -> str:
    return "–" if x is None else f"{int(x):,}"


def _cost_cells(r: dict) -> str:
    train = "–" if r["train_wall_s"] is None else f"{r['train_wall_s']:.0f} s"
    evals = "–" if r["eval_wall_s"] is None else f"{r['eval_wall_s']:.0f} s"
    mem = "–" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:,.0f} MB"
    return (f'<td class="num">{train}</td><td class="num">{evals}</td><td class="num">{mem}</td>'
            f'<td class="num">{_int(r["trainable_params"])}</td><td class="num">{_int(r["train_tokens"])}</td>')


OVERFIT_RISE = 0.10  # validation loss this far (relative) above its lowest value at the end: overfitting


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher is better on both)."""
    return [i for i, (x, y) in enumerate(points)
            if not any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)]


def overfitting(eval_losses: list[float]) -> bool:
    return len(eval_losses) >= 2 and eval_losses[-1] > min(eval_losses) * (1 + OVERFIT_RISE)


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _scatter_svg(points: list[dict], x_label: str, y_label: str, tolerance: float) -> str:
    """Task gain (x) against capability change (y), each with its interval; the Pareto frontier
    joined; the forgetting limit (−tolerance) dashed. Inline SVG: no script."""
    W, H, L, R, T, B = 460, 320, 56, 16, 14, 42
    xs = [v for p in points for v in (p["xlo"], p["xhi"])] + [0.0]
    ys = [v for p in points for v in (p["ylo"], p["yhi"])] + [0.0, -tolerance]
    pad_x, pad_y = 0.05 * ((max(xs) - min(xs)) or 1), 0.08 * ((max(ys) - min(ys)) or 1)
    fx = _scale(min(xs) - pad_x, max(xs) + pad_x, L, W - R)
    fy = _scale(min(ys) - pad_y, max(ys) + pad_y, H - B, T)
    out = [f"<svg class='chart' viewBox='0 0 {W} {H}' width='{W}' height='{H}' role='img' "
           f"aria-label='{escape(y_label)} against {escape(x_label)}'>",
           f"<line x1='{L}' y1='{fy(0):.1f}' x2='{W - R}' y2='{fy(0):.1f}' stroke='#9aa5b1'/>",
           f"<line x1='{fx(0):.1f}' y1='{T}' x2='{fx(0):.1f}' y2='{H - B}' stroke='#9aa5b1'/>"]
    if tolerance:
        out.append(f"<line x1='{L}' y1='{fy(-tolerance):.1f}' x2='{W - R}' y2='{fy(-tolerance):.1f}' "
                   f"stroke='#b91c1c' stroke-dasharray='4 3'><title>forgetting limit −{tolerance:g}</title></line>")
    front = sorted((points[i] for i in pareto_front([(p["x"], p["y"]) for p in points])), key=lambda p: p["x"])
    if len(front) > 1:
        out.append("<polyline fill='none' stroke='#15803d' stroke-width='1.5' stroke-dasharray='5 3' points='"
                   + " ".join(f"{fx(p['x']):.1f},{fy(p['y']):.1f}" for p in front) + "'><title>Pareto frontier</title></polyline>")
    for p in points:
        x, y = fx(p["x"]), fy(p["y"])
        color = "#b91c1c" if p["forgetting"] else "#15803d" if p in front else "#3b82c4"
        out.append(f"<g><title>{escape(p['name'])}: gain {p['x']:+.3f} [{p['xlo']:+.3f}, {p['xhi']:+.3f}], change "
                   f"{p['y']:+.3f} [{p['ylo']:+.3f}, {p['yhi']:+.3f}]</title>"
                   f"<line x1='{fx(p['xlo']):.1f}' y1='{y:.1f}' x2='{fx(p['xhi']):.1f}' y2='{y:.1f}' stroke='{color}'/>"
                   f"<line x1='{x:.1f}' y1='{fy(p['ylo']):.1f}' x2='{x:.1f}' y2='{fy(p['yhi']):.1f}' stroke='{color}'/>"
                   f"<circle cx='{x:.1f}' cy='{y:.1f}' r='4' fill='{color}'/>"
                   f"<text x='{x + 6:.1f}' y='{y - 6:.1f}' font-size='11'>{escape(p['name'])}</text></g>")
    out.append(f"<text x='{(L + W - R) / 2:.0f}' y='{H - 8}' font-size='12' text-anchor='middle'>{escape(x_label)}</text>"
               f"<text x='14' y='{(T + H - B) / 2:.0f}' font-size='12' text-anchor='middle' "
               f"transform='rotate(-90 14 {(T + H - B) / 2:.0f})'>{escape(y_label)}</text>")
    for v in (min(xs), max(xs)):
        out.append(f"<text x='{fx(v):.1f}' y='{H - B + 14}' font-size='10' text-anchor='middle'>{v:+.2f}</text>")
    for v in (min(ys), max(ys)):
        out.append(f"<text x='{L - 4}' y='{fy(v) + 3:.1f}' font-size='10' text-anchor='end'>{v:+.2f}</text>")
    return "".join(out) + "</svg>"


def _forgetting_section(changes: list[dict], runs: list[dict]) -> list[str]:
    """What each variant learned (task suites) and lost (general suites) against the untouched base."""
    if not any(c["kind"] == "general" for c in changes):
        return []
    ref = changes[0]["reference"]
    variants = [r["variant"] for r in runs if any(c["variant"] == r["variant"] for c in changes)]
    suites = list(dict.fromkeys(c["suite"] for c in sorted(changes, key=lambda c: c["kind"] != "task")))
    cell = {(c["variant"], c["suite"]): c for c in changes}
    out = [f"<h2>Learning and forgetting</h2><p class='meta'>Every variant against the untouched model "
           f"(<b>{escape(ref)}</b>) on the same samples, per suite, on its headline metric (pass rate; "
           "nll for perplexity, with the sign turned so that a loss is negative), with 95% paired intervals. "
           "A variant <span class='fail'>forgets</span> on a general suite when its whole interval lies "
           "below −tolerance.</p>",
           "<div class='wide'><table><tr><th>variant</th>"
           + "".join(f"<th>{escape(s)} ({escape(next(c['kind'] for c in changes if c['suite'] == s))})</th>" for s in suites)
           + "</tr>"]
    for v in variants:
        cells = []
        for s in suites:
            c = cell.get((v, s))
            if c is None:
                cells.append("<td class='num'>–</td>")
                continue
            d = {"diff": c["change"], "ci_low": c["ci_low"], "ci_high": c["ci_high"], "p_value": float("nan")}
            flag = " <span class='fail'>forgetting</span>" if c["forgetting"] else ""
            cells.append(f"<td class='num'>{_diff(d)}{flag}</td>")
        out.append(f"<tr><td>{escape(v)}</td>{''.join(cells)}</tr>")
    out.append("</table></div>")
    task = next((c["suite"] for c in changes if c["kind"] == "task"), None)
    if task:
        charts = []
        for s in [s for s in suites if any(c["suite"] == s and c["kind"] == "general" for c in changes)]:
            pts = []
            for v in variants:
                gx, gy = cell.get((v, task)), cell.get((v, s))
                if gx and gy:
                    pts.append({"name": v, "x": gx["change"], "xlo": gx["ci_low"], "xhi": gx["ci_high"], "y": gy["change"],
                                "ylo": gy["ci_low"], "yhi": gy["ci_high"], "forgetting": gy["forgetting"]})
            if pts:
                tol = next(c["tolerance"] or 0.0 for c in changes if c["suite"] == s)
                charts.append(f"<figure><figcaption>{escape(s)}: change against {escape(ref)} (y) against the gain on "
                              f"{escape(task)} (x)</figcaption>"
                              + _scatter_svg(pts, f"{task}: gain", f"{s}: change", tol) + "</figure>")
        out.append("<div class='charts'>" + "".join(charts) + "</div>"
                   "<p class='meta'>Green, joined: the Pareto frontier (no other variant learned more and kept more). "
                   "Red: forgetting. Bars: 95% intervals.</p>")
    return out


def _loss_svg(train: list[tuple[int, float]], evals: list[tuple[int, float]]) -> str:
    W, H, L, R, T, B = 300, 150, 40, 8, 8, 22
    pts = train + evals
    steps, losses = [p[0] for p in pts], [p[1] for p in pts]
    fx = _scale(min(steps), max(steps), L, W - R)
    fy = _scale(min(losses), max(losses), H - B, T)

    def line(series, color, dash=""):
        return (f"<polyline fill='none' stroke='{color}' stroke-width='1.5' {dash} points='"
                + " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in series) + "'/>") if len(series) > 1 else ""

    return (f"<svg class='chart' viewBox='0 0 {W} {H}' width='{W}' height='{H}' role='img' aria-label='loss curves'>"
            f"<line x1='{L}' y1='{H - B}' x2='{W - R}' y2='{H - B}' stroke='#9aa5b1'/>"
            + line(train, "#3b82c4") + line(evals, "#d97706", "stroke-dasharray='4 2'")
            + "".join(f"<circle cx='{fx(x):.1f}' cy='{fy(y):.1f}' r='2.5' fill='#d97706'/>" for x, y in evals)
            + f"<text x='{L - 4}' y='{fy(max(losses)) + 4:.1f}' font-size='10' text-anchor='end'>{max(losses):.2f}</text>"
            f"<text x='{L - 4}' y='{fy(min(losses)) + 4:.1f}' font-size='10' text-anchor='end'>{min(losses):.2f}</text>"
            f"<text x='{W - R}' y='{H - 6}' font-size='10' text-anchor='end'>step {max(steps)}</text></svg>")


def _training_section(logs: list[dict], runs: list[dict]) -> list[str]:
    by_run = defaultdict(list)
    for row in logs:
        by_run[row["run_id"]].append(row)
    figures = []
    for r in runs:
        rows = sorted(by_run.get(r["run_id"], []), key=lambda x: x["step"])
        train = [(x["step"], x["loss"]) for x in rows if x["loss"] is not None]
        evals = [(x["step"], x["eval_loss"]) for x in rows if x.get("eval_loss") is not None]
        if not train:
            continue
        note = ""
        if evals:
            low = min(evals, key=lambda e: e[1])
            note = f"validation loss {evals[-1][1]:.3f}, lowest {low[1]:.3f} at step {low[0]}"
            if overfitting([e[1] for e in evals]):
                note += f" <span class='fail'>overfitting</span> (ended more than {OVERFIT_RISE:.0%} above its lowest)"
        figures.append(f"<figure><figcaption><b>{escape(r['variant'])}</b> ({escape(r['method'])}) {note}</figcaption>"
                       + _loss_svg(train, evals) + "</figure>")
    if not figures:
        return []
    return ["<h2>Training</h2><p class='meta'>Training loss (blue) and, where a validation split was held out, "
            "validation loss (orange, dashed) per step.</p><div class='charts'>" + "".join(figures) + "</div>"]


def _differences(suite: str, diffs: list[dict], runs: list[dict], baseline: str) -> list[str]:
    """Every metric's paired difference against the baseline, over all samples and then per slice;
    p-values Holm-adjusted over the variants compared."""
    if not diffs:
        return []
    variants = [r["variant"] for r in runs if any(d["run_id"] == r["run_id"] for d in diffs)]
    cell = {(d["variant"], d["metric"], d["slice"]): d for d in diffs}
    metrics = sorted({d["metric"] for d in diffs}, key=lambda m: (m != "score", m != "pass_rate", m))
    slices = sorted({d["slice"] for d in diffs} - {"all"})

    def table(rows: list[tuple[str, str]], by_slice: bool) -> str:
        head = "".join(f"<th>{escape(v)}</th>" for v in variants)
        body = "".join(
            "<tr>" + (f"<td>{escape(sl)}</td>" if by_slice else "") + f"<td>{escape(m.removeprefix('criterion:'))}</td>"
            + "".join(f"<td class='num'>{_diff(cell.get((v, m, sl)), holm=True)}</td>" for v in variants) + "</tr>"
            for m, sl in rows)
        return (f"<div class='wide'><table><tr>{'<th>slice</th>' if by_slice else ''}<th>metric</th>{head}</tr>"
                f"{body}</table></div>")

    out = [f"<h3>Differences against {escape(baseline)} (paired, every metric)</h3>",
           "<p class='meta'>Each cell: variant − baseline on the same samples, its 95% interval and the "
           "Holm-adjusted p-value; green or red only when the interval excludes 0.</p>",
           table([(m, "all") for m in metrics], by_slice=False)]
    if slices:
        out.append(f"<details><summary>The same per slice ({len(slices)} slices × {len(metrics)} metrics)</summary>"
                   + table([(m, sl) for sl in slices for m in metrics], by_slice=True) + "</details>")
    return out


def _leakage_section(checked: list[dict], leaks: list[dict], audit: list[dict]) -> list[str]:
    """What the leakage check found, before training: per suite, the flagged samples beside the
    training text they match; and the audit of each training set."""
    if not checked:
        return []
    out = ["<h2>Leakage and training data</h2><p class='meta'>Checked before training: every training set against "
           "every eval set, on the prompt alone and on prompt + answer; exact (normalised text), n-gram (GPT-3 style, "
           "boilerplate ignored) and near duplicates (Jaccard of word 3-shingles). Every metric is also given on "
           "slice <b>clean</b>: the samples not flagged.</p><table><tr><th>eval set</th><th>samples</th>"
           "<th>flagged</th><th>by method</th></tr>"]
    for c in checked:
        by = flagged_by_method(leaks, c["suite"])
        out.append(f"<tr><td>{escape(c['suite'])}</td><td>{c['n']}</td><td>{c['flagged']}</td><td>"
                   + ", ".join(f"{m} {k}" for m, k in by.items() if k and m != "any") + "</td></tr>")
    out.append("</table>")
    if leaks:
        shown = worst(leaks, None)
        out.append(f"<details><summary>{len(shown)} flagged samples, strongest match each (first 50)</summary>"
                   "<div class='wide'><table><tr><th>eval sample</th><th>matched training sample</th><th>method</th>"
                   "<th>score</th><th>field</th><th>eval text</th><th>training text</th></tr>")
        for r in shown[:50]:
            out.append(f"<tr><td>{escape(r['suite'])}/{escape(r['sample_id'])}</td><td>{escape(r['source'])}/"
                       f"{escape(r['train_id'])}</td><td>{escape(r['method'])}</td><td>{r['score']:.2f}</td>"
                       f"<td>{escape(r['field'])}</td><td><pre>{escape(r['eval_text'])}</pre></td>"
                       f"<td><pre>{escape(r['train_text'])}</pre></td></tr>")
        out.append("</table></div></details>")
    if audit:
        sources = list(dict.fromkeys(a["source"] for a in audit))
        out.append("<h3>Training data audit</h3><div class='wide'><table><tr><th>check</th>"
                   + "".join(f"<th>{escape(s)}</th>" for s in sources) + "</tr>")
        by = {(a["source"], a["check"]): a for a in audit}
        for check in dict.fromkeys(a["check"] for a in audit):
            cells = []
            for s in sources:
                a = by.get((s, check))
                detail = "" if a is None or not a["detail"] else f"<div class='meta'>{escape(str(a['detail'])[:160])}</div>"
                cells.append("<td>–</td>" if a is None else f"<td>{_num(a['value'])}{detail}</td>")
            out.append(f"<tr><td>{escape(check)}</td>{''.join(cells)}</tr>")
        out.append("</table></div>")
    return out


def render(db: Path, experiment: str | None = None) -> str:
    with store.reader(db) as con:
        runs = store.latest_runs(con, experiment)
        if not runs:
            what = f"experiment '{experiment}'" if experiment else "any experiment"
            raise UserError(f"{db}: no runs of {what} in this results file")
        ids = [r["run_id"] for r in runs]
        metrics = store.query(con, "SELECT * FROM metrics WHERE list_contains(?, run_id)", [ids])
        outputs = store.query(con, "SELECT * FROM outputs WHERE list_contains(?, run_id) ORDER BY suite, sample_id", [ids])
        suite_rows = store.query(con, "SELECT * FROM suites WHERE list_contains(?, run_id)", [ids])
        diffs = store.query(con, "SELECT * FROM comparisons WHERE list_contains(?, run_id) "
                                 "AND test = 'paired-bootstrap'", [ids])
        changes = store.query(con, "SELECT * FROM base_changes WHERE list_contains(?, run_id)", [ids])
        logs = store.query(con, "SELECT * FROM train_log WHERE list_contains(?, run_id)", [ids])
        exps = list(dict.fromkeys(r["experiment"] for r in runs))
        checked = store.query(con, "SELECT * FROM leakage_suites WHERE list_contains(?, experiment)", [exps])
        leaks = store.query(con, "SELECT * FROM leakage WHERE list_contains(?, experiment)", [exps])
        audit = store.query(con, "SELECT * FROM data_audit WHERE list_contains(?, experiment)", [exps])
        reasons = store.query(
            con, "SELECT run_id, suite, sample_id, string_agg(criterion || ': ' || reason, '; ' ORDER BY criterion) "
            "AS why FROM samples WHERE list_contains(?, run_id) AND score < 1 GROUP BY ALL", [ids])

    by_run = defaultdict(dict)
    by_slice = defaultdict(dict)  # (suite, slice) -> run_id -> pass-rate row
    for m in metrics:
        if m["slice"] == "all":
            by_run[m["run_id"]][(m["suite"], m["metric"])] = m
        elif m["metric"] == "pass_rate":
            by_slice[(m["suite"], m["slice"])][m["run_id"]] = m
    suites = list(dict.fromkeys(m["suite"] for m in metrics))
    rubric_of = {s["suite"]: s for s in suite_rows}
    diff_of = {(d["run_id"], d["suite"], d["metric"]): d for d in diffs if d["slice"] == "all"}
    baseline = next((d["baseline"] for d in diffs), None)
    experiments = list(dict.fromkeys(r["experiment"] for r in runs))
    title = ", ".join(experiments)
    # The header describes the tuned variants; outputs stored from other systems carry no model settings.
    head = next((r for r in runs if r["method"] != "external"), runs[0])
    gen = json.loads(head["generation_json"] or "{}")

    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)} — harness report</title>"
             f"<style>{CSS}</style></head><body>"]
    parts.append(f"<h1>{escape(title)}</h1>")
    parts.append(
        f"<p class='meta'>Base model <b>{escape(head['base_model'])}</b> · device {escape(str(head['device']))} "
        f"({escape(str(head['dtype']))}) · seed {head['seed']} · greedy decoding, at most "
        f"{escape(str(gen.get('max_new_tokens')))} new tokens · harness {escape(head['harness_version'])} · "
        f"report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {escape(str(db))}</p>")
    parts.append("<p class='meta'>Intervals are 95%: percentile bootstrap for mean scores, Wilson for pass rates. "
                 "Every variant is scored on the same samples.</p>")

    parts.extend(_forgetting_section(changes, runs))
    parts.extend(_leakage_section(checked, leaks, audit))
    for suite in suites:
        parts.append(f"<h2>{escape(suite)}</h2>")
        rb = rubric_of.get(suite, {})
        perplexity = rb.get("type") == "perplexity"
        if rb.get("rubric"):
            parts.append(f"<p class='meta'>Rubric <b>{escape(rb['rubric'] or '')}</b>: a sample passes when its weighted "
                         f"score is at least {rb['pass_threshold']:g} and every required criterion is met.</p>")
        elif perplexity:
            parts.append("<p class='meta'>Perplexity: mean token negative log-likelihood (nats) per document of a "
                         "reference text, lower is better; perplexity = exp(nll).</p>")
        elif rb.get("type") == "lm_eval":
            parts.append("<p class='meta'>An lm-evaluation-harness task: the score is its first metric per document; "
                         "a document passes at ≥ 0.5.</p>")
        shown, headline = (("nll", "perplexity"), "nll") if perplexity else (("score", "pass_rate"), "pass_rate")
        cell = _stat if perplexity else _bar
        key = "score" if not perplexity else "nll"
        values = [by_run[r["run_id"]].get((suite, key), {}).get("value") for r in runs]
        best = (min if perplexity else max)((v for v in values if v is not None), default=None)
        crit_names = sorted({k[1] for rid in ids for k in by_run[rid] if k[0] == suite and k[1].startswith("criterion:")})
        vs = f"<th>{headline.replace('_', ' ')} − {escape(baseline)} (paired)</th>" if baseline else ""
        parts.append("<div class='wide'><table><tr><th>variant</th><th>method</th>"
                     + "".join(f"<th>{m.replace('_', ' ')}</th>" for m in shown) + vs
                     + "".join(f"<th>{escape(c.removeprefix('criterion:'))}</th>" for c in crit_names)
                     + "<th>train time</th><th>eval time</th><th>peak memory</th><th>trainable params</th>"
                       "<th>train tokens</th></tr>")
        for r in runs:
            m = by_run[r["run_id"]]
            if r["status"] != "finished":
                parts.append(f"<tr><td>{escape(r['variant'])}</td><td>{escape(r['method'])}</td>"
                             f"<td colspan='{2 + len(crit_names) + bool(baseline)}' class='failed'>{escape(r['status'])}: "
                             f"{escape((r['error'] or '').strip().splitlines()[-1] if r['error'] else '')}</td>"
                             f"{_cost_cells(r)}</tr>")
                continue
            score = m.get((suite, key))
            if score is None:
                continue  # a system that did not run this suite (outputs scored apart)
            cls = " class='best'" if score["value"] == best else ""
            parts.append(f"<tr><td{cls}>{escape(r['variant'])}</td><td>{escape(r['method'])}</td>"
                         + "".join(f"<td>{cell(m.get((suite, x)))}</td>" for x in shown)
                         + (f"<td class='num'>{_diff(diff_of.get((r['run_id'], suite, headline)))}</td>" if baseline else "")
                         + "".join(f"<td class='num'>{_num((m.get((suite, c)) or {}).get('value'))}</td>" for c in crit_names)
                         + f"{_cost_cells(r)}</tr>")
        parts.append("</table></div>")
        slices = sorted(k[1] for k in by_slice if k[0] == suite)
        if slices:
            finished = [r for r in runs if r["status"] == "finished"]
            parts.append("<h3>Pass rate per slice</h3><table><tr><th>slice</th><th>n</th>"
                         + "".join(f"<th>{escape(r['variant'])}</th>" for r in finished) + "</tr>")
            for sl in slices:
                cells = by_slice[(suite, sl)]
                n = next((c["n"] for c in cells.values()), None)
                parts.append(f"<tr><td>{escape(sl)}</td><td class='num'>{_int(n)}</td>"
                             + "".join(f"<td>{_bar(cells.get(r['run_id']))}</td>" for r in finished) + "</tr>")
            parts.append("</table>")
        if baseline:
            parts.extend(_differences(suite, [d for d in diffs if d["suite"] == suite], runs, baseline))

    parts.extend(_training_section(logs, runs))
    why = {(x["run_id"], x["suite"], x["sample_id"]): x["why"] for x in reasons}
    variant_of = {r["run_id"]: r["variant"] for r in runs}
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for o in outputs:
        grouped[o["suite"]][o["sample_id"]].append(o)
    for suite in suites:
        if rubric_of.get(suite, {}).get("type") == "perplexity":
            continue  # documents of a reference text: no outputs to show
        parts.append(f"<h2>Sample outputs: {escape(suite)}</h2>")
        for sample_id in list(grouped[suite])[:SAMPLES_SHOWN]:
            rows = grouped[suite][sample_id]
            first = rows[0]
            parts.append(f"<div class='sample'><h4>sample {escape(sample_id)}</h4><pre>{escape(first['prompt'] or '')}</pre>"
                         f"<p>reference: <code>{escape(first['reference'] or '–')}</code></p>"
                         "<table><tr><th>variant</th><th>output</th><th>score</th><th>why not 1</th></tr>")
            for o in sorted(rows, key=lambda o: ids.index(o["run_id"])):
                verdict = "<span class='pass'>pass</span>" if o["passed"] else "<span class='fail'>fail</span>"
                parts.append(f"<tr><td>{escape(variant_of[o['run_id']])}</td><td><pre>{escape(o['output'] or '')}</pre></td>"
                             f"<td class='num'>{_num(o['score'])} {verdict}</td>"
                             f"<td>{escape(why.get((o['run_id'], suite, sample_id), ''))}</td></tr>")
            parts.append("</table></div>")
    parts.append(f"<p class='meta'>Written by harness {escape(__version__)}.</p></body></html>")
    return "\n".join(parts)


def write_report(db: Path, out: Path, experiment: str | None = None) -> Path:
    html = render(db, experiment)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)  # never a half-written report
    return out
