// mpstate dashboard: the run page's live event log (server-sent events), its pause button and
// filters, and the refresh of the header, timeline, graph and steps when an event arrives.
// Plain JavaScript, no dependencies, no build step.
(function () {
  "use strict";

  var run = document.getElementById("run");
  if (!run) {
    return;
  }
  var log = document.getElementById("event-log");
  var pauseButton = document.getElementById("pause");
  var stepFilter = document.getElementById("event-filter-step");
  var kindFilter = document.getElementById("event-filter-kind");
  var liveStatus = document.getElementById("live-status");
  var bufferedNote = document.getElementById("buffered");
  var lastSeq = Number(run.dataset.lastSeq || "0");
  var paused = false;
  var buffered = [];
  var refreshTimer = null;
  var SHOWN_APART = { runId: 1, at: 1, seq: 1, kind: 1, stepId: 1, meta: 1 };

  function matches(item) {
    var step = stepFilter.value;
    var kind = kindFilter.value;
    var itemStep = item.dataset.stepId || "";
    if (step === "-" && itemStep !== "") {
      return false;
    }
    if (step && step !== "-" && itemStep !== step) {
      return false;
    }
    return !kind || item.dataset.kind === kind;
  }

  function applyFilters() {
    var items = log.querySelectorAll("li");
    for (var i = 0; i < items.length; i++) {
      items[i].hidden = !matches(items[i]);
    }
  }

  function span(className, text) {
    var element = document.createElement("span");
    element.className = className;
    element.textContent = text;
    return element;
  }

  function detail(event) {
    var parts = [];
    Object.keys(event).forEach(function (name) {
      if (!SHOWN_APART[name]) {
        var value = event[name];
        parts.push(name + "=" + (typeof value === "string" ? value : JSON.stringify(value)));
      }
    });
    var meta = event.meta || {};
    Object.keys(meta).forEach(function (name) {
      parts.push(name + "=" + meta[name]);
    });
    return parts.join(" ");
  }

  function itemFor(event) {
    var item = document.createElement("li");
    item.dataset.seq = String(event.seq);
    item.dataset.kind = event.kind;
    item.dataset.stepId = event.stepId || "";
    var time = document.createElement("time");
    time.textContent = new Date(event.at).toISOString();
    item.append(span("seq", String(event.seq)), " ", time, " ", span("kind", event.kind), " ",
      span("step", event.stepId || ""), " ", span("detail", detail(event)));
    return item;
  }

  function append(event) {
    if (event.seq <= lastSeq) {
      return;
    }
    lastSeq = event.seq;
    var item = itemFor(event);
    item.hidden = !matches(item);
    log.appendChild(item);
  }

  function showBuffered() {
    bufferedNote.textContent = buffered.length ? buffered.length + " new event(s) held" : "";
  }

  function openDetails(root) {
    var open = [];
    root.querySelectorAll("details[open]").forEach(function (element) {
      var section = element.closest("[data-step-id]");
      var summary = element.querySelector("summary");
      open.push((section ? section.dataset.stepId : "") + "|" + (summary ? summary.textContent.slice(0, 12) : ""));
    });
    return open;
  }

  function reopen(root, open) {
    root.querySelectorAll("details").forEach(function (element) {
      var section = element.closest("[data-step-id]");
      var summary = element.querySelector("summary");
      var key = (section ? section.dataset.stepId : "") + "|" + (summary ? summary.textContent.slice(0, 12) : "");
      if (open.indexOf(key) >= 0) {
        element.open = true;
      }
    });
  }

  function refreshPart(part, id) {
    return fetch(run.dataset.fragments + part, { credentials: "same-origin" })
      .then(function (response) {
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        var current = document.getElementById(id);
        if (!html || !current) {
          return;
        }
        var holder = document.createElement("div");
        holder.innerHTML = html;
        var fresh = holder.firstElementChild;
        if (fresh) {
          var open = openDetails(current);
          current.replaceWith(fresh);
          reopen(fresh, open);
        }
      })
      .catch(function () { /* the next event refreshes again */ });
  }

  function refresh() {
    refreshTimer = null;
    refreshPart("header", "run-header");
    refreshPart("timeline", "timeline");
    refreshPart("graph", "graph");
    refreshPart("steps", "steps");
  }

  function scheduleRefresh() {
    if (refreshTimer === null) {
      refreshTimer = window.setTimeout(refresh, 400);
    }
  }

  pauseButton.addEventListener("click", function () {
    paused = !paused;
    pauseButton.textContent = paused ? "Resume" : "Pause";
    pauseButton.setAttribute("aria-pressed", paused ? "true" : "false");
    if (!paused) {
      buffered.forEach(append);
      buffered = [];
    }
    showBuffered();
  });
  stepFilter.addEventListener("change", applyFilters);
  kindFilter.addEventListener("change", applyFilters);

  if (run.dataset.ended === "true" || typeof window.EventSource === "undefined") {
    return;
  }
  var source = new EventSource(run.dataset.stream + "?since=" + lastSeq);
  source.onopen = function () {
    liveStatus.textContent = "live";
  };
  source.onmessage = function (message) {
    var event = JSON.parse(message.data);
    if (paused) {
      buffered.push(event);
      showBuffered();
    } else {
      append(event);
    }
    scheduleRefresh();
  };
  source.addEventListener("end", function () {
    source.close();
    liveStatus.textContent = "ended";
    scheduleRefresh();
  });
  source.addEventListener("failure", function () {
    source.close();
    liveStatus.textContent = "stopped";
  });
  source.onerror = function () {
    liveStatus.textContent = source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting";
  };
})();
