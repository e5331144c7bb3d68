"""The published leaderboard: built from real records of a tiny grid plus hand-made edge cases,
then opened in headless Chromium (``/usr/bin/chromium``, Debian's ``chromium`` package).

Static checks (tables, links, images, escaping in the HTML) always run; the browser checks
(DOM after JavaScript, sorting, screenshots) skip only when Chromium is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from leaderboard import build_site

import results
from bench.grid import build_grid
from bench.runner import run_grid
from results import CellRecord, ModelRecord

CHROMIUM = Path("/usr/bin/chromium")
EVIL_MODEL = "<script>alert(1)</script>"
EVIL_ATTACK = '<img src=x onerror="alert(2)">'
MASKED = "masked-bnn"
REFERENCE = "float-ref"
GRID_ATTACKS = "fgsm,pgd-linf,pgd-linf-njs,pgd-l2"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


# ------------------------------------------------------------------ a tiny DOM


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    def iter(self, tag: str | None = None):
        for c in self.children:
            if isinstance(c, Node):
                if tag is None or c.tag == tag:
                    yield c
                yield from c.iter(tag)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find(self, tag: str, **attrs: str) -> list[Node]:
        return [n for n in self.iter(tag)
                if all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag):
        node = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.cur = node.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(html: str) -> Node:
    b = _Builder()
    b.feed(html)
    b.close()
    return b.root


def board_rows(doc: Node) -> list[Node]:
    (table,) = doc.find("table", data_table="board")
    (body,) = list(table.iter("tbody"))
    return list(body.iter("tr"))


def column(doc: Node, key: str) -> list[str | None]:
    """The data-sort values of one column of the board table, in DOM order."""
    (table,) = doc.find("table", data_table="board")
    # the cells' header row (not the row of family groups above it)
    heads = [th.attrs.get("data-key") for th in table.iter("th")
             if "nosort" not in th.attrs.get("class", "").split()]
    i = heads.index(key)
    return [[td for td in tr.iter("td")][i].attrs.get("data-sort") for tr in board_rows(doc)]


# ------------------------------------------------------------------ records


def _config(attack: str) -> dict:
    """A registered attack's real configuration (with its traits); a hand-made one otherwise
    (the board then reads its family as unknown)."""
    import attacks

    if attack in attacks.list_attacks():
        return attacks.create_attack(attack).config()
    return {"class": "Handmade", "steps": 10, "loss": "ce"}


def _cell(model: str, attack: str, robust: list[int], *, clean: list[int], status="ok",
          rejected=0, error=None, eps=0.1, seconds=0.01) -> CellRecord:
    n = len(clean)
    return CellRecord(
        key=f"{model}|{attack}|{eps}", suite="edge", dataset="digits", model=model,
        model_sha256="0" * 64, attack=attack,
        attack_config=_config(attack), norm="linf", eps=eps,
        n=n, n_attacked=sum(clean), clean_acc=sum(clean) / n,
        robust_acc=sum(robust) / n if status == "ok" else None, seconds=seconds,
        seconds_per_sample=seconds / max(sum(clean), 1), device="cpu", seed=0, robust=robust,
        clean_correct=clean, inputs_sha256="1" * 64, status=status, error=error,
        rejected=rejected, forwards_per_sample=11.0, backwards_per_sample=10.0,
        versions={"torch": "9.9.9", "qbench_commit": "edgecase"}, hardware="hand-made rig",
        created="2026-01-02T03:04:05Z",
    ).validate()


def write_edge_records(root: Path) -> None:
    """Suite 'edge': a masked model (zero gradients, PGD ≫ PGD++, Square best), a clean float
    model, and a model and an attack whose names are HTML, with a rejection and an error."""
    ones = [1] * 10
    mask = [1] * 9 + [0]
    put = lambda r: results.append(results.cells_path("edge", root), r)  # noqa: E731
    for attack, robust in [("pgd-linf", mask), ("pgd-linf-njs", [1, 1] + [0] * 8),
                           ("square", [1] + [0] * 9)]:
        put(_cell(MASKED, attack, robust, clean=ones))
    for attack, robust in [("pgd-linf", [1] + [0] * 9), ("pgd-linf-njs", [1] + [0] * 9),
                           ("square", [1, 1, 1] + [0] * 7)]:
        put(_cell(REFERENCE, attack, robust, clean=ones))
    # L∞ 0.2: a suite limit ran the masked model on 5 points only and skipped the evil one
    for attack in ("pgd-linf", "pgd-linf-njs"):
        put(_cell(REFERENCE, attack, [0] * 10, clean=ones, eps=0.2))
    put(_cell(MASKED, "pgd-linf", [1] * 5, clean=[1] * 5, eps=0.2))
    put(_cell(REFERENCE, "square", [0] * 4, clean=[1] * 4, eps=0.2))  # on a 4-point prefix
    put(_cell(EVIL_MODEL, "pgd-linf", [1] * 5 + [0] * 5, clean=ones, rejected=2))
    put(_cell(EVIL_MODEL, EVIL_ATTACK, [0] * 10, clean=ones, status="error",
              error="RuntimeError: <b>boom</b>"))
    for name, diag, desc in [
        (MASKED, {"zero_grad_share": 0.6, "zero_grad_share_njs": 0.0, "psi_norm": 0.0,
                  "psi_norm_njs": 0.8, "jac_sv_mean": 12.5}, "a model whose gradients vanish"),
        (REFERENCE, {"zero_grad_share": 0.0}, "a float model"),
        (EVIL_MODEL, {}, "<i>card text</i>"),
    ]:
        results.append(results.models_path("edge", root), ModelRecord(
            suite="edge", dataset="digits", model=name, model_sha256="0" * 64, clean_acc=1.0,
            n=10, card={"dataset": "digits", "arch": "mlp", "quant": "bnn-waq",
                        "description": desc, "recipe": {"epochs": 1}},
            diagnostics=diag, versions={"torch": "9.9.9", "qbench_commit": "edgecase"},
            hardware="hand-made rig", created="2026-01-02T03:04:05Z"))


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("records")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only fight over a busy shared CPU
    grid = build_grid(suite="digits", dataset="digits", models="digits-mlp5x100-*",
                      attacks=GRID_ATTACKS, eps={"linf": [0.1, 0.3], "l2": [1.0]}, n=60)
    try:
        summary = run_grid(grid, device="cpu", results_root=root, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert summary.ran == 3 * 7 and summary.errors == 0
    write_edge_records(root)
    (root / "fliprate.csv").write_text(
        "model,attack,eps,n,flip_rate,seconds,seconds_per_sample\n"
        "digits-mlp5x100-bnn-waq,iprop,0.1,60,0.2,1.0,0.017\n"
        "digits-mlp5x100-bnn-waq,iprop,0.3,60,0.5,1.0,0.017\n"
        "digits-mlp5x100-bnn-waq,pgd-linf-njs,0.1,60,0.4,0.1,0.002\n"
        "digits-mlp5x100-bnn-waq,pgd-linf-njs,0.3,60,0.9,0.1,0.002\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def site(records, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("public")
    index = build_site(records, out)
    assert index == out / "index.html" and index.exists()
    return out


def board_of(site: Path, suite: str, norm: str, eps: float) -> Path:
    from leaderboard.data import board_file

    path = site / board_file(suite, norm, eps)
    assert path.exists(), f"no page for {suite} {norm} {eps}"
    return path


# ------------------------------------------------------------------ browser


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium is not installed at /usr/bin/chromium "
                    "(apt-get install -y chromium)")
    return chromium


def chromium(*args: str, timeout: int = 90) -> str:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout


def dom(browser, page: Path, query: str = "") -> Node:
    html = browser("--dump-dom", page.resolve().as_uri() + query)
    assert "<html" in html, "chromium returned no DOM"
    return parse(html)


# ------------------------------------------------------------------ tests: static


def test_one_row_per_model_on_every_board(records, site):
    cells = results.load(root=records)
    models = results.load_models(root=records)
    boards = 0
    for (suite, norm, eps), group in cells.groupby(["suite", "norm", "eps"]):
        expected = set(group["model"])
        html = board_of(site, suite, norm, eps).read_text(encoding="utf-8")
        shown = [tr.attrs["data-model"] for tr in board_rows(parse(html))]
        assert sorted(shown) == sorted(expected), (suite, norm, eps)
        # models of the suite without a cell here are named, not ranked
        for m in set(models.loc[models["suite"] == suite, "model"]) - expected:
            assert "Not run at this threat model" in html and escape(m) in html
        boards += 1
    assert boards == 3 + 2  # digits: linf 0.1, 0.3, l2 1.0; edge: linf 0.1, 0.2
    limited = parse(board_of(site, "edge", "linf", 0.2).read_text(encoding="utf-8"))
    notes = {tr.attrs["data-model"]: tr.text() for tr in board_rows(limited)}
    assert set(notes) == {MASKED, REFERENCE}
    assert "n=5" in notes[MASKED] and "n=" not in notes[REFERENCE]
    (ref_row,) = [tr for tr in board_rows(limited) if tr.attrs["data-model"] == REFERENCE]
    marked = [td for td in ref_row.iter("td") if "on the first" in td.attrs.get("title", "")]
    assert len(marked) == 1 and "square" in marked[0].attrs["title"]
    assert marked[0].find("sup")[0].text() == "4"
    assert len(list(site.glob("board-*.html"))) == boards


def test_boards_rank_by_best_known(records, site):
    best = results.best_known(results.load(root=records))
    for (suite, norm, eps), group in best.groupby(["suite", "norm", "eps"]):
        doc = parse(board_of(site, suite, norm, eps).read_text(encoding="utf-8"))
        shown = [float(v) for v in column(doc, "best") if v]
        assert shown == sorted(shown, reverse=True)
        assert sorted(shown) == sorted(group["best_known_acc"].tolist())
        ranks = column(doc, "rank")  # competition ranking: ties share a rank
        assert ranks[: len(shown)] == [str(1 + sum(o > v for o in shown)) for v in shown]


def test_every_link_and_image_exists_and_nothing_is_remote(site):
    pages = sorted(site.glob("*.html"))
    assert len(pages) >= 1 + 4 + 2 + 6  # index, boards, attacks/models, model pages
    linked: set[Path] = set()
    images = 0
    for page in pages:
        doc = parse(page.read_text(encoding="utf-8"))
        for node in doc.iter():
            for attr in ("href", "src"):
                url = node.attrs.get(attr)
                if url is None:
                    continue
                parts = urlsplit(url)
                assert not parts.scheme and not parts.netloc, f"{page.name}: remote {url}"
                if not parts.path:
                    continue  # an in-page anchor
                target = (page.parent / unquote(parts.path)).resolve()
                assert target.is_file(), f"{page.name} links to missing {url}"
                linked.add(target)
                if node.tag == "img":
                    images += 1
                    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert images >= 6 + 1 + 1  # model curves, the cost plot, the flip-rate figure
    unreachable = {p.resolve() for p in pages} - linked - {(site / "index.html").resolve()}
    assert not unreachable, f"pages no link leads to: {sorted(p.name for p in unreachable)}"


def test_html_in_names_is_escaped_in_the_html(site):
    for page in [board_of(site, "edge", "linf", 0.1), site / "index.html", site / "models.html",
                 site / "attacks.html"]:
        html = page.read_text(encoding="utf-8")
        assert EVIL_MODEL not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, page.name


def test_provenance_on_every_page(site):
    for page in site.glob("*.html"):
        footer = parse(page.read_text(encoding="utf-8")).find("footer")[0].text()
        assert "commit" in footer and "torch" in footer, page.name
        assert "hardware:" in footer and "20" in footer, page.name  # a run date
    edge = parse(board_of(site, "edge", "linf", 0.1).read_text(encoding="utf-8"))
    footer = edge.find("footer")[0].text()
    assert "edgecase" in footer and "hand-made rig" in footer and "9.9.9" in footer
    assert "2026-01-02" in footer


def test_badges_flag_the_masked_case_and_only_it(site):
    doc = parse(board_of(site, "edge", "linf", 0.1).read_text(encoding="utf-8"))
    badges = {tr.attrs["data-model"]: {b.attrs["data-badge"] for b in tr.iter("span")
                                       if "data-badge" in b.attrs}
              for tr in board_rows(doc)}
    assert badges[MASKED] == {"zero-grad", "pp-gap", "gradient-free"}
    assert badges[REFERENCE] == set()
    assert badges[EVIL_MODEL] == {"rejected", "error"}
    warnings = [s for s in doc.find("section") if "warnings" in s.attrs.get("class", "")]
    assert "pgd-linf 90.0% vs pgd-linf-njs 20.0%" in warnings[0].text()
    # the legend explains every badge kind, on the board itself
    legend = [s for s in doc.find("section") if s.attrs.get("id") == "legend"][0]
    assert {"∇ = 0", "black-box wins", "PGD ≫ PGD++", "rejections", "error"} <= {
        b.text() for b in legend.iter("span") if "badge" in b.attrs.get("class", "")}


def test_fliprate_figure_on_the_model_page(site):
    doc = parse((site / "model-digits-mlp5x100-bnn-waq.html").read_text(encoding="utf-8"))
    srcs = [img.attrs["src"] for img in doc.iter("img")]
    assert "img/fliprate-digits-mlp5x100-bnn-waq.png" in srcs
    assert {"img/curve-digits-mlp5x100-bnn-waq-digits-linf.png",
            "img/curve-digits-mlp5x100-bnn-waq-digits-l2.png"} <= set(srcs)
    other = parse((site / "model-digits-mlp5x100-ref.html").read_text(encoding="utf-8"))
    assert not any("fliprate" in img.attrs["src"] for img in other.iter("img"))


def test_empty_records_give_a_page_not_a_crash(tmp_path):
    (tmp_path / "none").mkdir()  # a records folder with no records yet
    index = build_site(tmp_path / "none", tmp_path / "out")
    assert "No records yet" in index.read_text(encoding="utf-8")
    assert (tmp_path / "out" / "attacks.html").exists()


# ------------------------------------------------------------------ tests: in the browser


def test_dom_after_javascript_has_one_row_per_model(browser, records, site):
    models = set(results.load(root=records).query("suite == 'digits'")["model"])
    doc = dom(browser, board_of(site, "digits", "linf", 0.1))
    assert doc.find("html")[0].attrs.get("data-sort-ready") == "1", "sort.js did not run"
    assert sorted(tr.attrs["data-model"] for tr in board_rows(doc)) == sorted(models)
    index = dom(browser, site / "index.html")
    tables = index.find("table", data_table="overview")
    assert len(tables) == 2  # suites digits and edge
    rows = [tr.attrs["data-model"] for tr in tables[0].iter("tr") if "data-model" in tr.attrs]
    assert sorted(rows) == sorted(models)


def test_names_with_html_are_text_in_the_dom(browser, site):
    evil_page = next(site.glob("model-script-alert-1-script-*.html"))
    for page in [board_of(site, "edge", "linf", 0.1), evil_page, site / "attacks.html"]:
        doc = dom(browser, page)
        scripts = list(doc.iter("script"))
        assert [s.attrs.get("src") for s in scripts] == ["sort.js"], page.name
        assert not any(n.tag == "img" and "onerror" in n.attrs for n in doc.iter()), page.name
        assert not any(a.startswith("on") for n in doc.iter() for a in n.attrs), page.name
        assert EVIL_MODEL in doc.find("main")[0].text(), page.name
    board = dom(browser, board_of(site, "edge", "linf", 0.1))
    heads = [th.text() for th in board.iter("th")]
    assert EVIL_ATTACK in heads


def test_sorting_script_orders_rows(browser, site):
    page = board_of(site, "digits", "linf", 0.1)
    doc = dom(browser, page, "?sort=clean&dir=asc")
    (table,) = doc.find("table", data_table="board")
    assert table.attrs.get("data-sorted-by") == "clean asc"
    clean = [float(v) for v in column(doc, "clean")]
    assert clean == sorted(clean)
    doc = dom(browser, page, "?sort=model&dir=desc")
    names = [tr.attrs["data-model"] for tr in board_rows(doc)]
    assert names == sorted(names, reverse=True)
    # the self-test clicks every sortable header twice and checks the order after each click
    doc = dom(browser, page, "?selftest=1")
    html = doc.find("html")[0]
    n_headers = len([th for th in doc.iter("th") if "data-key" in th.attrs])
    assert html.attrs.get("data-selftest") == "pass"
    assert html.attrs.get("data-selftest-checks") == str(2 * n_headers)


def _png_ok(path: Path, width: int) -> None:
    from matplotlib import image

    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(path)
    assert pixels.shape[1] == width
    assert float(np.std(pixels[..., :3])) > 0.05, f"{path} looks blank"


def test_screenshots(browser, site, tmp_path):
    shots = {"index": site / "index.html", "suite": board_of(site, "digits", "linf", 0.1)}
    keep = os.environ.get("QBENCH_SCREENSHOT_DIR")
    for name, page in shots.items():
        png = tmp_path / f"screenshot-{name}.png"
        browser(f"--screenshot={png}", "--window-size=1280,2000", page.resolve().as_uri())
        _png_ok(png, 1280)
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(png, Path(keep) / png.name)


def test_the_headline_board_fits_1400_pixels_without_sideways_scrolling(browser, tmp_path):
    """The L∞ 0.1 board of the committed default suite (about 20 attack columns, grouped by
    family) shows every column in a 1400 px window."""
    import json

    src = Path(results.RECORDS_DIR)
    records = tmp_path / "records"
    records.mkdir()
    keep = [line for line in (src / "mnist5k.cells.jsonl").read_text(encoding="utf-8")
            .splitlines(True)
            if (r := json.loads(line))["norm"] == "linf" and abs(r["eps"] - 0.1) < 1e-9]
    (records / "mnist5k.cells.jsonl").write_text("".join(keep), encoding="utf-8")
    (records / "mnist5k.models.jsonl").write_bytes((src / "mnist5k.models.jsonl").read_bytes())
    build_site(records, tmp_path / "site")
    page = board_of(tmp_path / "site", "mnist5k", "linf", 0.1)
    doc = parse(browser("--window-size=1400,1000", "--dump-dom", page.resolve().as_uri()))
    html = doc.find("html")[0]
    heads = [th for th in doc.iter("th") if "attack" in th.attrs.get("class", "").split()]
    assert len(heads) >= 18
    assert [h.text() for h in heads[:3]] == ["pgd-linf", "pgd-linf-njs", "pgd-linf-hns"]
    assert html.attrs.get("data-scroll-overflow") == "0", html.attrs.get("data-scroll-overflow")
    png = tmp_path / "board-1400.png"
    browser(f"--screenshot={png}", "--window-size=1400,1100", page.resolve().as_uri())
    _png_ok(png, 1400)
    wide = parse(browser("--window-size=1000,1000", "--dump-dom", page.resolve().as_uri()))
    assert int(wide.find("html")[0].attrs["data-scroll-overflow"]) > 0  # the check can fail


def test_black_box_badge_compares_cells_on_the_same_test_points():
    """IPROP on the first 200 points against APGD on all 1,000 is no evidence of masking:
    on the same 200 points a gradient attack is as strong, so no badge; the exact verifier is
    no gradient attack either. On equal points the badge still fires."""
    from leaderboard.data import row_badges

    from results.board import BoardCell, BoardRow, attack_column

    names = ("iprop", "apgd-ce", "pgd-linf-njs", "milp-linf")
    columns = {a: attack_column(a, _config(a)) for a in names}

    def row(cells):
        return BoardRow(model="m", model_sha256="0", seed=0, n=1000, clean=0.9,
                        best_known=0.5, best_attack=None, best_attack_acc=None,
                        unique_breaks={}, cells={a: BoardCell(a, "ok", acc=v, n=m)
                                                 for a, (v, m) in cells.items()})

    prefix = row({"iprop": (0.61, 200), "apgd-ce": (0.724, 1000), "pgd-linf-njs": (0.60, 200),
                  "milp-linf": (0.50, 1000)})
    assert row_badges(prefix, columns, {}, 1000) == []
    equal = row({"iprop": (0.61, 200), "pgd-linf-njs": (0.70, 200), "apgd-ce": (0.72, 1000)})
    (badge,) = row_badges(equal, columns, {}, 1000)
    assert badge["kind"] == "gradient-free" and "first 200 test points" in badge["detail"]
