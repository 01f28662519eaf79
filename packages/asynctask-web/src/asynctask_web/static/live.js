// asynctask web: live counts without a reload. A table with data-live="<api url>" is
// refreshed every second from that JSON endpoint. Values go in with textContent only,
// never as HTML, so a queue name or a count cannot inject markup. A form with
// data-confirm asks before it is sent.
"use strict";

(function () {
  var INTERVAL_MS = 1000;

  // a count the transport estimated (named in "estimated") reads "~N"
  function count(value, estimated) {
    if (value === null || value === undefined) { return "-"; }
    return (estimated ? "~" : "") + String(value);
  }
  function counted(stats, name) {
    return count(stats[name], (stats.estimated || []).indexOf(name) >= 0);
  }
  function rate(value) { return value === null || value === undefined ? "-" : value.toFixed(1); }
  function age(seconds) {
    if (seconds === null || seconds === undefined) { return "-"; }
    if (seconds < 60) { return Math.round(seconds) + "s"; }
    if (seconds < 3600) {
      return Math.floor(seconds / 60) + "m" + String(Math.floor(seconds % 60)).padStart(2, "0") + "s";
    }
    return Math.floor(seconds / 3600) + "h" + String(Math.floor(seconds % 3600 / 60)).padStart(2, "0") + "m";
  }

  function cell(text, href) {
    var td = document.createElement("td");
    if (href) {
      var a = document.createElement("a");
      a.href = href;
      a.textContent = text;
      td.appendChild(a);
    } else {
      td.textContent = text;
    }
    return td;
  }

  function queueRows(table, body) {
    var tbody = document.createElement("tbody");
    body.queues.forEach(function (q) {
      var tr = document.createElement("tr");
      var base = "/queues/" + encodeURIComponent(q.name);
      tr.dataset.queue = q.name;
      tr.appendChild(cell(q.name, base));
      ["ready", "delayed", "retrying", "in_flight", "failed"].forEach(function (name) {
        var td = cell(counted(q, name), name === "failed" ? base + "/failed" : null);
        td.dataset.count = name;
        tr.appendChild(td);
      });
      tr.appendChild(cell(rate(q.processed_per_second)));
      tr.appendChild(cell(rate(q.failed_per_second)));
      tr.appendChild(cell(age(q.oldest_ready_age)));
      tbody.appendChild(tr);
    });
    if (!body.queues.length) {
      var tr = document.createElement("tr");
      tr.className = "empty";
      var td = cell("No queue holds a task.");
      td.colSpan = 9;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    table.replaceChild(tbody, table.tBodies[0]);
    var rates = document.getElementById("rates");
    if (rates) { rates.textContent = body.rates; }
  }

  function queueCounts(table, body) {
    table.querySelectorAll("[data-count]").forEach(function (td) {
      var value = counted(body.queue, td.dataset.count);
      var link = td.querySelector("a");
      (link || td).textContent = value;
    });
  }

  function refresh(table) {
    var url = table.dataset.live;
    var updated = document.getElementById("updated");
    fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) { throw new Error(response.status + " " + response.statusText); }
        return response.json();
      })
      .then(function (body) {
        if (body.queues) { queueRows(table, body); } else { queueCounts(table, body); }
        table.dataset.refreshed = String(Date.now());
        if (updated) { updated.textContent = "live: updated " + new Date().toLocaleTimeString(); }
      })
      .catch(function (error) {
        if (updated) { updated.textContent = "live: " + error.message; }
      })
      .finally(function () { setTimeout(function () { refresh(table); }, INTERVAL_MS); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    // a form that deletes many tasks asks first (no inline script: the CSP forbids it)
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
      });
    });
    document.querySelectorAll("table[data-live]").forEach(function (table) {
      setTimeout(function () { refresh(table); }, INTERVAL_MS);
    });
  });
})();
