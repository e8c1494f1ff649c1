"""The console's files: their size, and how the server serves them beside the API."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import requests

from pumplink.web.serving import STATIC

BUDGET = 300 * 1024  # compressed, every file the console ships


def test_console_files_stay_under_budget_compressed():
    files = [p for p in Path(STATIC).rglob("*") if p.is_file() and not p.name.startswith("LICENSE")]
    total = sum(len(gzip.compress(p.read_bytes(), 9)) for p in files)
    assert total < BUDGET, f"the console's files are {total / 1024:.0f} KB gzipped (budget 300 KB)"


def test_root_serves_the_console_with_a_self_only_policy(console_server):
    r = requests.get(console_server.base + "/", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert r.headers["Cache-Control"] == "no-cache"
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', r.text)
    assert assets, r.text
    for path in assets:
        a = requests.get(console_server.base + path, timeout=5)
        assert a.status_code == 200, path
        assert "immutable" in a.headers["Cache-Control"] and "max-age=31536000" in a.headers["Cache-Control"]
        assert a.headers["X-Content-Type-Options"] == "nosniff"
    js = requests.get(console_server.base + assets[-1].rsplit("/", 2)[0] + "/js/app.js", timeout=5)
    assert js.headers["Content-Type"].startswith(("text/javascript", "application/javascript"))
    # Nothing in the shipped files reaches outside the server.
    for path in Path(STATIC).rglob("*.js"):
        assert not re.search(r"""(?:import|from)\\s*["']https?:""", path.read_text()), path


def test_api_and_unknown_paths_answer_as_before(console_server):
    r = requests.get(console_server.base + "/api/v1/nothing-here", timeout=5)
    assert r.status_code == 404 and r.json()["code"] and r.json()["error"]
    r = requests.get(console_server.base + "/static/0000/js/app.js", timeout=5)
    assert r.status_code == 404 and "error" in r.json()
    assert requests.get(console_server.base + "/api/v1/health", timeout=5).json() == {"status": "ok"}


def test_every_console_folder_ships_as_package_data():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).parents[2] / "setup.cfg")
    globs = {g.strip() for g in cfg["options.package_data"]["pumplink.web"].split(",")}
    folders = {p.parent.relative_to(STATIC.parent).as_posix() for p in STATIC.rglob("*") if p.is_file()}
    assert {f"{f}/*" for f in folders} <= globs, folders


def test_static_paths_never_leave_the_console_folder(console_server):
    index = requests.get(console_server.base + "/", timeout=5).text
    prefix = re.search(r'src="(/static/[^/]+)/', index).group(1)
    for path in ("/../serving.py", "/%2e%2e/serving.py", "/..%2fserving.py", "/js/..%2f..%2fserving.py",
                 "/", "/js", "/js/app.js%00.html", "/%00", "/" + "a" * 5000):
        r = requests.get(console_server.base + prefix + path, timeout=5)
        assert r.status_code in (400, 404, 414), (path, r.status_code)
        assert "def install" not in r.text, path
    # The path the index names serves; a neighbour's name does not reach Python files.
    assert requests.get(console_server.base + prefix + "/js/app.js", timeout=5).status_code == 200
