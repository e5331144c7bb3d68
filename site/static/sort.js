/* Sortable tables, no framework.
 *
 * Any <table class="sortable"> whose header cells carry data-key (and data-type="num" or
 * "text") sorts on a click (or Enter) on a header: numbers first descending, text first
 * ascending; a second click reverses. Cells may hold their sort value in data-sort; empty
 * values always sort last. The page URL may ask for an initial order: ?sort=KEY&dir=asc|desc.
 * ?selftest=1 clicks every sortable header twice, checks the resulting order and writes
 * "pass" or "fail: …" into <html data-selftest> (used by the test suite through a headless
 * browser).
 */
(function () {
  "use strict";
  var slice = Array.prototype.slice;

  function value(row, index, type) {
    var cell = row.cells[index];
    if (!cell) return null;
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort")
      : cell.textContent.trim();
    if (raw === "") return null;
    if (type === "num") {
      var n = parseFloat(raw);
      return isNaN(n) ? null : n;
    }
    return raw.toLowerCase();
  }

  function compare(a, b, dir) {
    if (a === null || b === null) return a === b ? 0 : (a === null ? 1 : -1);
    return a < b ? -dir : (a > b ? dir : 0);
  }

  function sortBy(th, dir) {
    var table = th.closest("table");
    var index = slice.call(th.parentNode.cells).indexOf(th);
    var type = th.getAttribute("data-type") || "text";
    var body = table.tBodies[0];
    var keyed = slice.call(body.rows).map(function (row, i) {
      return { row: row, key: value(row, index, type), i: i };
    });
    keyed.sort(function (a, b) { return compare(a.key, b.key, dir) || a.i - b.i; });
    keyed.forEach(function (k) { body.appendChild(k.row); });
    slice.call(th.parentNode.cells).forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    table.setAttribute("data-sorted-by", (th.getAttribute("data-key") || index) +
      (dir > 0 ? " asc" : " desc"));
  }

  function toggle(th) {
    var current = th.getAttribute("aria-sort");
    var first = th.getAttribute("data-type") === "num" ? -1 : 1;
    var dir = current === "descending" ? 1 : (current === "ascending" ? -1 : first);
    sortBy(th, dir);
  }

  function isOrdered(th) {
    var table = th.closest("table");
    var index = slice.call(th.parentNode.cells).indexOf(th);
    var type = th.getAttribute("data-type") || "text";
    var dir = th.getAttribute("aria-sort") === "ascending" ? 1 : -1;
    var keys = slice.call(table.tBodies[0].rows).map(function (r) { return value(r, index, type); });
    for (var i = 1; i < keys.length; i++) {
      if (compare(keys[i - 1], keys[i], dir) > 0) return false;
    }
    return true;
  }

  function headers() {
    return slice.call(document.querySelectorAll("table.sortable thead th[data-key]"));
  }

  function init() {
    headers().forEach(function (th) {
      th.tabIndex = 0;
      th.classList.add("sort");
      th.addEventListener("click", function (e) {
        if (e.target.closest("a")) return; // links in headers still navigate
        toggle(th);
      });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(th); }
      });
    });
    var params = new URLSearchParams(window.location.search);
    var key = params.get("sort");
    if (key !== null) {
      var dir = params.get("dir") === "asc" ? 1 : -1;
      headers().forEach(function (th) {
        if (th.getAttribute("data-key") === key) sortBy(th, dir);
      });
    }
    if (params.get("selftest") === "1") {
      var failures = [], checks = 0;
      headers().forEach(function (th) {
        for (var k = 0; k < 2; k++) {
          th.click();
          checks++;
          if (!th.getAttribute("aria-sort") || !isOrdered(th)) {
            failures.push(th.getAttribute("data-key") + " click " + (k + 1));
          }
        }
      });
      document.documentElement.setAttribute("data-selftest",
        failures.length ? "fail: " + failures.join(", ") : "pass");
      document.documentElement.setAttribute("data-selftest-checks", String(checks));
    }
    // how far the widest table container would scroll sideways (0: it fits the window);
    // the test suite reads it at a given window width
    var overflow = 0;
    Array.prototype.forEach.call(document.querySelectorAll(".scroll"), function (el) {
      overflow = Math.max(overflow, el.scrollWidth - el.clientWidth);
    });
    document.documentElement.setAttribute("data-scroll-overflow", String(overflow));
    document.documentElement.setAttribute("data-sort-ready", "1");
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
