// The /embed page: the postMessage handshake with the parent frame, then the session
// user's sources and rows through /api/v1 only (the API's rules, never the page's).
// Handshake: we post `ready`; the parent posts `init {sessionToken, config}`; we answer
// `authenticated`, `auth-required` or `session-expired`. The token stays in this closure:
// it is sent only as the X-Embed-Session header, never shown or posted back.
(function () {
  "use strict";
  var root = document.getElementById("embed");
  var org = root.dataset.org;
  var PAGE_SIZE = 50;
  var token = null;
  var parentOrigin = null; // the origin of the init we accepted; later ones must match
  var view = { source: null, page: 1, sort: null, desc: false, pages: 1 };

  function $(id) { return document.getElementById(id); }

  function tell(type, extra) {
    var message = Object.assign({ type: type }, extra || {});
    // `ready` carries nothing and goes to whoever framed us; the rest only to the parent we accepted.
    window.parent.postMessage(message, parentOrigin || "*");
  }

  function status(text) { $("embed-status").textContent = text; }

  function api(method, path, body) {
    var headers = { "X-Embed-Session": token, "X-Embed-Origin": parentOrigin, "Accept": "application/json" };
    if (org) headers["X-Tenant-ID"] = org;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch("/api/v1" + path, {
      method: method, headers: headers, credentials: "omit", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (json) {
        if (response.ok) return json;
        var error = (json && json.error) || {};
        throw { status: response.status, code: error.code || "error", message: error.message || "Request refused." };
      });
    });
  }

  // Codes that end the session here (besides any 401): forget the token, tell the parent.
  var SESSION_REFUSED = ["origin_not_allowed", "embeds_disabled"];

  function refused(error) {
    if (error && (error.status === 401 || SESSION_REFUSED.indexOf(error.code) >= 0)) {
      token = null;
      $("embed-sources").hidden = true;
      $("embed-rows").hidden = true;
      var expired = error.code === "embed_session_expired";
      status(expired ? "The session has expired." : "A new session is needed.");
      tell(expired ? "session-expired" : "auth-required", { code: error.code });
    } else if (error && error.status) {
      status(error.message);
    } else {
      status("The server could not be reached.");
    }
  }

  function showSources(page) {
    var list = $("embed-source-list");
    list.replaceChildren();
    page.data.forEach(function (source) {
      var item = document.createElement("li");
      var button = document.createElement("button");
      button.type = "button";
      button.className = "secondary outline compact";
      button.textContent = source.name;
      button.addEventListener("click", function () {
        view = { source: source, page: 1, sort: null, desc: false, pages: 1 };
        loadRows();
      });
      item.appendChild(button);
      list.appendChild(item);
    });
    $("embed-sources").hidden = false;
    status(page.data.length ? "" : "No sources to show.");
  }

  function quoted(column) { return '"' + column.replace(/"/g, '""') + '"'; }

  function loadRows() {
    var sql = "SELECT * FROM data" + (view.sort ? " ORDER BY " + quoted(view.sort) + (view.desc ? " DESC" : " ASC") : "");
    api("POST", "/sources/" + encodeURIComponent(view.source.id) + "/query", {
      sql: sql, page: view.page, page_size: PAGE_SIZE,
    }).then(showRows, refused);
  }

  function showRows(result) {
    var head = $("embed-table").tHead.rows[0];
    var body = $("embed-table").tBodies[0];
    head.replaceChildren();
    body.replaceChildren();
    result.columns.forEach(function (column) {
      var th = document.createElement("th");
      th.scope = "col";
      if (column === view.sort) th.setAttribute("aria-sort", view.desc ? "descending" : "ascending");
      var button = document.createElement("button");
      button.type = "button";
      button.className = "secondary outline compact";
      button.textContent = column;
      button.addEventListener("click", function () {
        view.desc = view.sort === column ? !view.desc : false;
        view.sort = column;
        view.page = 1;
        loadRows();
      });
      th.appendChild(button);
      head.appendChild(th);
    });
    result.data.forEach(function (row) {
      var tr = document.createElement("tr");
      result.columns.forEach(function (column) {
        var td = document.createElement("td");
        var value = row[column];
        td.textContent = value === null || value === undefined ? "" : String(value);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    view.pages = Math.max(1, Math.ceil(result.total_rows / PAGE_SIZE));
    $("embed-source-name").textContent = view.source.name;
    $("embed-page").textContent = "Page " + view.page + " of " + view.pages + " (" + result.total_rows + " rows)";
    $("embed-prev").disabled = view.page <= 1;
    $("embed-next").disabled = view.page >= view.pages;
    $("embed-rows").hidden = false;
  }

  $("embed-prev").addEventListener("click", function () {
    if (view.page > 1) { view.page -= 1; loadRows(); }
  });
  $("embed-next").addEventListener("click", function () {
    if (view.page < view.pages) { view.page += 1; loadRows(); }
  });

  window.addEventListener("message", function (event) {
    var data = event.data;
    // Only our parent's init, and once one is accepted only from that origin.
    if (event.source !== window.parent || !data || data.type !== "init") return;
    if (parentOrigin !== null && event.origin !== parentOrigin) return;
    if (typeof data.sessionToken !== "string" || !data.sessionToken) return;
    parentOrigin = event.origin;
    token = data.sessionToken;
    status("Checking the session…");
    // The API checks the token, its organization (X-Tenant-ID) and the parent's origin.
    api("GET", "/sources?limit=100").then(function (page) {
      tell("authenticated");
      showSources(page);
    }, function (error) {
      // Whatever refused the first request, the parent has to start again.
      refused(error && error.status ? Object.assign({}, error, { status: 401 }) : error);
    });
  });

  if (window.parent !== window) tell("ready");
})();
