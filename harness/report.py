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
.wide{overflow-x:auto} .sample{margin:1rem 0 1.6rem} .sample h4{margin:.2rem 0}
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

    for suite in suites:
        parts.append(f"<h2>{escape(suite)}</h2>")
        if suite in rubric_of:
            rb = rubric_of[suite]
            parts.append(f"<p class='meta'>Rubric <b>{escape(rb['rubric'] or '')}</b>: a sample passes when its weighted "
                         f"score is at least {rb['pass_threshold']:g} and every required criterion is met.</p>")
        best = max((by_run[r["run_id"]].get((suite, "score"), {}).get("value") or -1) for r in runs)
        crit_names = sorted({k[1] for rid in ids for k in by_run[rid] if k[0] == suite and k[1].startswith("criterion:")})
        vs = f"<th>pass rate − {escape(baseline)} (paired)</th>" if baseline else ""
        parts.append("<div class='wide'><table><tr><th>variant</th><th>method</th><th>score</th><th>pass rate</th>" + vs
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
            score = m.get((suite, "score"))
            cls = " class='best'" if score and score["value"] == best else ""
            parts.append(f"<tr><td{cls}>{escape(r['variant'])}</td><td>{escape(r['method'])}</td>"
                         f"<td>{_bar(score)}</td><td>{_bar(m.get((suite, 'pass_rate')))}</td>"
                         + (f"<td class='num'>{_diff(diff_of.get((r['run_id'], suite, 'pass_rate')))}</td>" if baseline else "")
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

    why = {(x["run_id"], x["suite"], x["sample_id"]): x["why"] for x in reasons}
    variant_of = {r["run_id"]: r["variant"] for r in runs}
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for o in outputs:
        grouped[o["suite"]][o["sample_id"]].append(o)
    for suite in suites:
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
