"""The report in a real browser: Debian's Chromium, driven by Playwright (no browser download).

Each test writes a report from the smoke run's results (or a copy of them with hostile outputs),
opens it from disk, waits until the page says every chart is drawn, and checks what a person would
see and click. Screenshots go to test-artifacts/.
"""

import json
import shutil
from pathlib import Path

import duckdb
import pytest
from playwright.sync_api import sync_playwright

from harness.cli import main

CHROMIUM = Path("/usr/bin/chromium")
# Without the networking flags Chromium keeps trying to reach Google's hosts on a closed network.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

PAYLOADS = [
    "<script>window.__pwned = 1</script>",
    "</script><script>window.__pwned = 2</script>",
    "<img src=x onerror=\"window.__pwned = 3\">",
    "<a id=evil href=\"javascript:window.__pwned = 4\">click me</a>",
    "<svg onload=\"window.__pwned = 5\"></svg><!-- comment -->",
    "\u2028{{constructor.constructor('window.__pwned = 6')()}}",
]


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: the report tests need Debian's chromium (`make test` installs it)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def open_report(browser, path: Path):
    """The page, once every chart is drawn, and the console errors and uncaught exceptions it had."""
    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_function("document.body.dataset.ready", timeout=60_000)
    return page, errors


def write(db: Path, out: Path, *extra: str) -> Path:
    assert main(["report", "--db", str(db), "--out", str(out), *extra]) == 0
    return out


def test_report_renders_without_errors(smoke, browser, artifacts_dir):
    page, errors = open_report(browser, smoke["report"])
    assert page.evaluate("document.body.dataset.ready") == "true"
    assert errors == []
    charts = page.locator("div.chart")
    n = charts.count()
    # Per rubric suite bars and differences, a slice heat map for tickets, the perplexity suite's
    # bars and differences, two learning-forgetting scatters, loss curves, cost against quality.
    assert n >= 10
    for i in range(n):  # Plotly drew each: an SVG with at least one data trace
        assert charts.nth(i).locator("svg.main-svg g.trace, svg.main-svg g.hm, svg.main-svg g.heatmaplayer image").count() \
            + charts.nth(i).locator("g.heatmaplayer").count() > 0, f"chart {i} is empty"
    titles = page.locator("div.chart .gtitle").all_text_contents()
    assert "tickets: pass rate per slice" in titles
    assert any(t.startswith("Loss per step") for t in titles) and any(t.startswith("Cost against quality") for t in titles)
    # The heat map holds one cell text per slice and variant.
    heat = page.locator("div.chart", has=page.locator(".gtitle", has_text="tickets: pass rate per slice"))
    assert heat.locator("text.heatmap-label, g.heatmaplayer text").count() >= 6 * 7
    page.screenshot(path=str(artifacts_dir / "report.png"), full_page=True)
    page.close()


def test_verdict_agrees_with_the_gate_command(smoke, browser, capsys):
    """The verdict checks the experiment's stored policy for every variant, as `harness gate` does."""
    page, errors = open_report(browser, smoke["report"])
    verdict = page.locator("#verdict")
    rows = verdict.locator("table.gate tr")
    assert rows.count() == 1 + 5  # every variant but the baseline
    for variant in ("prompt", "sft", "lora", "qlora", "dpo"):
        code = main(["gate", "--policy", str(smoke["root"] / "experiments" / "smoke.yaml"), "--db", str(smoke["db"]),
                     "--candidate", variant])
        capsys.readouterr()
        row = verdict.locator("table.gate tr", has=page.locator("td", has_text=variant)).first
        assert row.locator("td").nth(1).inner_text() == ("passes" if code == 0 else "fails")
        if variant == "sft":
            assert "candidate" in row.inner_text()
            headline = verdict.locator("p.verdict").inner_text()
            assert headline.startswith(f"Gate: sft {'passes' if code == 0 else 'fails'} against base")
    # Best per suite with the paired interval of its lead.
    assert "lead over the next best" in verdict.inner_text()
    assert errors == []
    page.close()


def _select(page, sel: str, label: str) -> None:
    page.select_option(sel, label=label)


def test_sample_browser_filters_and_shows_every_variant(smoke, browser):
    db = smoke["db"]
    con = duckdb.connect(str(db), read_only=True)
    n = con.execute("SELECT count(DISTINCT sample_id) FROM outputs WHERE suite = 'tickets'").fetchone()[0]
    technical = con.execute("SELECT count(DISTINCT sample_id) FROM outputs WHERE suite = 'tickets' "
                            "AND fields->>'category' = 'technical'").fetchone()[0]
    failed_sft = con.execute("SELECT count(*) FROM outputs o JOIN runs r USING (run_id) WHERE o.suite = 'tickets' "
                             "AND r.variant = 'sft' AND NOT o.passed AND r.run_id IN (SELECT run_id FROM runs "
                             "QUALIFY row_number() OVER (PARTITION BY variant ORDER BY finished_at DESC) = 1)").fetchone()[0]
    one = con.execute("SELECT sample_id FROM outputs WHERE suite = 'tickets' ORDER BY sample_id LIMIT 1 OFFSET 3").fetchone()[0]
    con.close()
    page, errors = open_report(browser, smoke["report"])
    count = page.locator("#b-count")
    assert count.inner_text().startswith(f"{n} of {n} samples match")
    assert page.locator("#b-list tr[data-i]").count() == n

    _select(page, "#f-slice", "category=technical")
    assert count.inner_text().startswith(f"{technical} of {n}")
    assert page.locator("#b-list tr[data-i]").count() == technical
    _select(page, "#f-slice", "all samples")

    _select(page, "#f-variant", "sft")
    _select(page, "#f-result", "failed")
    assert count.inner_text().startswith(f"{failed_sft} of {n}")
    _select(page, "#f-result", "any")
    _select(page, "#f-variant", "any variant")

    page.fill("#f-text", one)
    assert count.inner_text().startswith(f"1 of {n}")
    page.locator("#b-list tr[data-i]").first.click()
    detail = page.locator("#b-detail")
    assert detail.locator("h3").inner_text() == f"tickets / {one}"
    cards = detail.locator(".card")
    assert cards.count() == 6  # the six variants side by side
    assert sorted(c.split("\n")[0].replace(" (compared with)", "") for c in cards.locator("h4 span:first-child").all_inner_texts()) \
        == sorted(["base", "prompt", "sft", "lora", "qlora", "dpo"])
    # Each criterion's score (and reason where not met) under each output.
    assert cards.first.locator("li").count() == 6

    _select(page, "#f-suite", "general")
    assert "of 6 samples match" in count.inner_text()
    assert errors == []
    page.close()


def test_differences_are_marked_word_by_word(smoke, browser, tmp_path):
    db = tmp_path / "copy.duckdb"
    shutil.copy(smoke["db"], db)
    con = duckdb.connect(str(db))
    con.execute("UPDATE outputs SET output = 'the quick brown fox' WHERE suite = 'tickets'")
    con.execute("UPDATE outputs SET output = 'the slow brown fox jumps' WHERE suite = 'tickets' AND run_id IN "
                "(SELECT run_id FROM runs WHERE variant = 'sft')")
    con.close()
    page, errors = open_report(browser, write(db, tmp_path / "r.html"))
    page.locator("#b-list tr[data-i]").first.click()
    sft = page.locator("#b-detail .card", has=page.locator("h4 span", has_text="sft"))
    assert sft.locator("mark").all_inner_texts() == ["slow", "jumps"]
    base = page.locator("#b-detail .card", has=page.locator("h4 span", has_text="base"))
    assert base.locator("mark").count() == 0
    _select(page, "#f-diff", "nothing")
    assert page.locator("#b-detail mark").count() == 0
    assert errors == []
    page.close()


def test_hostile_outputs_are_shown_as_text_and_run_nothing(smoke, browser, tmp_path, artifacts_dir):
    db = tmp_path / "copy.duckdb"
    shutil.copy(smoke["db"], db)
    con = duckdb.connect(str(db))
    ids = [r[0] for r in con.execute("SELECT DISTINCT sample_id FROM outputs WHERE suite = 'tickets' ORDER BY 1").fetchall()]
    for sid, payload in zip(ids, PAYLOADS):
        con.execute("UPDATE outputs SET output = ?, prompt = ?, reference = ? WHERE sample_id = ?",
                    [payload, "prompt " + payload, "reference " + payload, sid])
        con.execute("UPDATE samples SET reason = ?, score = 0 WHERE sample_id = ?", ["reason " + payload, sid])
    con.execute("UPDATE leakage SET eval_text = ?, train_text = ?", [PAYLOADS[0], PAYLOADS[2]])
    con.close()
    html = write(db, tmp_path / "r.html").read_text()
    assert "window.__pwned" in html  # the payloads are in the file...
    assert "<script>window.__pwned" not in html and "<img src=x" not in html  # ...never as markup
    page, errors = open_report(browser, tmp_path / "r.html")
    for sid, payload in zip(ids, PAYLOADS):
        page.fill("#f-text", sid)
        page.locator("#b-list tr[data-i]").first.click()
        detail = page.locator("#b-detail")
        shown = detail.inner_text().replace("\u2028", "")
        for text in (payload, "prompt " + payload, "reference " + payload, "reason " + payload):
            assert text.replace("\u2028", "") in shown
        assert detail.locator("img, script, svg, a, iframe").count() == 0
    page.locator("#leakage details").first.evaluate("d => d.open = true")
    assert page.locator("#leakage img, #leakage script:not([type])").count() == 0
    assert page.locator("img[src=x], a#evil").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert errors == []
    page.screenshot(path=str(artifacts_dir / "report-hostile.png"), full_page=False)
    page.close()


def test_json_block_cannot_be_closed_early():
    from harness.report import _json_for_script

    text = _json_for_script({"x": "</script><script>alert(1)</script><!-- & \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"x": "</script><script>alert(1)</script><!-- & \u2028"}


def test_several_results_files_in_one_report(smoke, browser, tmp_path):
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    shutil.copy(smoke["db"], a)
    shutil.copy(smoke["db"], b)
    out = write(a, tmp_path / "r.html", "--db", str(b), "--experiment", "smoke")
    page, errors = open_report(browser, out)
    options = page.locator("#f-variant option").all_inner_texts()
    assert "a:smoke/base" in options and "b:smoke/dpo" in options and len(options) == 1 + 12
    assert errors == []
    page.close()


def test_report_of_an_unknown_experiment_is_a_clear_error(smoke, tmp_path, capsys):
    assert main(["report", "--db", str(smoke["db"]), "--experiment", "nope", "--out", str(tmp_path / "r.html")]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
