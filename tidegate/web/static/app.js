// tidegate web UI: small progressive enhancements. Every page works without this file;
// it adds <dialog>s, copy buttons and showing/hiding of optional form fields.
"use strict";

(function () {
  function say(selector, message) {
    var target = selector ? document.querySelector(selector) : null;
    if (target) { target.textContent = message; }
  }

  function textOf(element) {
    return ("value" in element && element.tagName !== "PRE") ? element.value : element.textContent;
  }

  function copy(button) {
    var target = document.querySelector(button.dataset.copy);
    if (!target) { return; }
    var text = textOf(target);
    var done = function () { say(button.dataset.status, "Copied to clipboard."); };
    var manual = function () {
      if (target.select) { target.select(); }
      say(button.dataset.status, "Could not copy automatically: the text is selected, press Ctrl+C (or ⌘C).");
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, manual);
    } else {
      manual();
    }
  }

  function openDialog(id, opener) {
    var dialog = document.getElementById(id);
    if (!dialog || dialog.open) { return; }
    dialog.opener_ = opener || null;
    dialog.showModal();
  }

  function confirmAction(link) {
    var dialog = document.getElementById(link.dataset.confirmDialog);
    if (!dialog) { return false; }
    var form = dialog.querySelector("form[data-action-target]");
    form.setAttribute("action", link.dataset.action);
    dialog.querySelectorAll("[data-fill=name]").forEach(function (el) { el.textContent = link.dataset.name || ""; });
    openDialog(dialog.id, link);
    return true;
  }

  document.addEventListener("click", function (event) {
    var el = event.target.closest("[data-copy], [data-open-dialog], [data-close-dialog], [data-confirm-dialog]");
    if (el && !el.hasAttribute("data-copy")) {
      var menu_ = el.closest("details.row-menu");
      if (menu_) { menu_.open = false; }
    }
    if (!el) { return; }
    if (el.hasAttribute("data-copy")) {
      copy(el);
    } else if (el.hasAttribute("data-open-dialog")) {
      openDialog(el.dataset.openDialog, el);
    } else if (el.hasAttribute("data-close-dialog")) {
      var dialog = el.closest("dialog");
      if (dialog) { dialog.close(); }
    } else if (confirmAction(el)) {
      event.preventDefault();
    }
  });

  // Give focus back to whatever opened a dialog.
  document.querySelectorAll("dialog").forEach(function (dialog) {
    dialog.addEventListener("close", function () {
      if (dialog.opener_ && document.contains(dialog.opener_)) { dialog.opener_.focus(); }
    });
  });

  // The one-time secret: Escape first asks "Have you copied it?" (the key cannot be shown
  // again); once its dialog closes, the element leaves the page, and the address no longer
  // points at the POST that produced it.
  function askBeforeClosing(dialog, event) {
    var confirm = dialog.querySelector("#new-key-confirm");
    if (!confirm) { return; }
    event.preventDefault();
    if (confirm.hidden) {
      confirm.hidden = false;
      var yes = confirm.querySelector("[data-close-dialog]");
      if (yes) { yes.focus(); }
    } else {
      keepSecret(dialog);
    }
  }
  function keepSecret(dialog) {
    var confirm = dialog.querySelector("#new-key-confirm");
    if (confirm) { confirm.hidden = true; }
    var copyButton = dialog.querySelector("#new-key-copy");
    if (copyButton) { copyButton.focus(); }
  }
  document.querySelectorAll("dialog[data-secret]").forEach(function (dialog) {
    // keydown as well as cancel: Chromium lets a page cancel a dialog's Escape only after a
    // user gesture, and this dialog opens on load.
    dialog.addEventListener("keydown", function (event) {
      if (event.key === "Escape") { askBeforeClosing(dialog, event); }
    });
    dialog.addEventListener("cancel", function (event) { askBeforeClosing(dialog, event); });
    dialog.addEventListener("click", function (event) {
      if (event.target.closest("[data-keep-secret]")) { keepSecret(dialog); }
    });
  });
  document.querySelectorAll("dialog[data-secret]").forEach(function (dialog) {
    dialog.addEventListener("close", function () {
      var after = dialog.dataset.after;
      dialog.remove();
      if (after) { history.replaceState(null, "", after); }
      var next = document.getElementById("create-key-button") || document.getElementById("main");
      if (next) { next.focus(); }
    });
  });

  // Show fields only when the choice that needs them is made.
  function toggle(selector, attribute, value) {
    document.querySelectorAll("[" + attribute + "]").forEach(function (el) {
      el.hidden = el.getAttribute(attribute) !== value;
    });
  }
  function syncAccess() {
    var checked = document.querySelector("input[name=access]:checked");
    toggle(null, "data-show-when-access", checked ? checked.value : "");
  }
  function syncExpiration() {
    var select = document.querySelector("select[name=expiration]");
    toggle(null, "data-show-when-expiration", select ? select.value : "");
  }
  function syncBinding() {
    var checked = document.querySelector("input[name=binding]:checked");
    toggle(null, "data-show-when-binding", checked ? checked.value : "");
  }

  // Access policy form: the values found in the data for the column a filter row picks.
  function showSuggestions(select) {
    var row = select.closest("[data-filter-row]");
    var box = row && row.querySelector("[data-suggestions]");
    if (!box) { return; }
    box.replaceChildren();
    var option = select.selectedOptions[0];
    var key = option ? option.dataset.values : "";
    var template = key ? document.getElementById("values-" + key) : null;
    if (!template) { return; }
    var content = template.content.cloneNode(true);
    content.querySelectorAll("input[type=checkbox]").forEach(function (box_) {
      box_.name = "pick_" + row.dataset.index;
    });
    box.appendChild(content);
  }
  function addFilterRow(button) {
    var spare = document.querySelector("[data-filter-row][hidden]");
    if (!spare) { return; }
    spare.hidden = false;
    var select = spare.querySelector("select");
    if (select) { select.focus(); }
    button.hidden = !document.querySelector("[data-filter-row][hidden]");
  }
  function clearFilterRow(button) {
    var row = button.closest("[data-filter-row]");
    if (!row) { return; }
    row.querySelectorAll("select").forEach(function (el) { el.value = ""; });
    row.querySelectorAll("textarea").forEach(function (el) { el.value = ""; });
    var box = row.querySelector("[data-suggestions]");
    if (box) { box.replaceChildren(); }
    var shown = document.querySelectorAll("[data-filter-row]:not([hidden])");
    var add = document.querySelector("[data-add-filter]");
    if (shown.length > 1) {
      row.hidden = true;
      if (add) { add.hidden = false; add.focus(); }
    } else {
      var select = row.querySelector("select");
      if (select) { select.focus(); }
    }
  }
  document.addEventListener("click", function (event) {
    var add = event.target.closest("[data-add-filter]");
    if (add) { addFilterRow(add); return; }
    var clear = event.target.closest("[data-clear-filter]");
    if (clear) { clearFilterRow(clear); }
  });
  var addButton = document.querySelector("[data-add-filter]");
  if (addButton) { addButton.hidden = !document.querySelector("[data-filter-row][hidden]"); }

  document.addEventListener("change", function (event) {
    if (event.target.name === "access") { syncAccess(); }
    if (event.target.name === "expiration") { syncExpiration(); }
    if (event.target.name === "binding") { syncBinding(); }
    if (event.target.matches("[data-column-select]")) { showSuggestions(event.target); }
  });
  syncAccess();
  syncExpiration();
  syncBinding();

  document.querySelectorAll("dialog[data-show-on-load]").forEach(function (dialog) {
    dialog.showModal();
    // A refused form: focus goes to the first field in error (its message is tied to it).
    var invalid = dialog.querySelector("[aria-invalid=true]");
    if (invalid) {
      var details = invalid.closest("details");
      if (details) { details.open = true; }
      var target = invalid.matches("fieldset") ? invalid.querySelector("input, select") : invalid;
      if (target) { target.focus(); }
    }
  });

  // Times in the viewer's own zone, with the zone named; the UTC time stays in the title.
  // (field by field: Intl refuses dateStyle together with timeZoneName)
  var dateOnly = { year: "numeric", month: "short", day: "numeric" };
  var withTime = { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", timeZoneName: "short" };
  document.querySelectorAll("time[data-local]").forEach(function (el) {
    var moment = new Date(el.getAttribute("datetime"));
    if (isNaN(moment.getTime())) { return; }
    if (el.dataset.local === "date") {
      el.textContent = moment.toLocaleDateString(undefined, dateOnly);
    } else {
      el.textContent = moment.toLocaleString(undefined, withTime);
    }
  });

  // The main navigation collapses into a Menu under 768 px (open without JavaScript).
  var menu = document.querySelector("details.nav-menu");
  if (menu && window.matchMedia) {
    var narrow = window.matchMedia("(max-width: 767.98px)");
    var fit = function () { menu.open = !narrow.matches; };
    fit();
    narrow.addEventListener("change", fit);
  }

  // Row menus ("…"): one open at a time, closed by a click elsewhere or Escape.
  document.addEventListener("click", function (event) {
    document.querySelectorAll("details.row-menu[open]").forEach(function (open) {
      if (!open.contains(event.target)) { open.open = false; }
    });
  });
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") { return; }
    var open = document.querySelector("details.row-menu[open]");
    if (open) { open.open = false; open.querySelector("summary").focus(); }
  });

  // Uploads: progress in bytes while the file goes up, the button disabled meanwhile, and
  // the outcome said at the end (the server's page when it refuses, the new source when not).
  function size(bytes) {
    if (bytes < 1024 * 1024) { return Math.max(1, Math.round(bytes / 1024)) + " KB"; }
    return (bytes / (1024 * 1024)).toFixed(1) + " MB";
  }
  function bindUpload(uploadForm) {
    if (!uploadForm || !window.XMLHttpRequest || !window.FormData) { return; }
    uploadForm.addEventListener("submit", function (event) {
      var button = uploadForm.querySelector("button[type=submit]");
      var bar = document.getElementById("upload-progress");
      var status = document.getElementById("upload-status");
      if (!bar || !status || !uploadForm.checkValidity()) { return; }
      event.preventDefault();
      var xhr = new XMLHttpRequest();
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      bar.hidden = false;
      bar.removeAttribute("value");
      status.textContent = "Uploading…";
      xhr.upload.addEventListener("progress", function (e) {
        if (!e.lengthComputable) { return; }
        bar.max = e.total;
        bar.value = e.loaded;
        status.textContent = "Uploaded " + size(e.loaded) + " of " + size(e.total) +
          (e.loaded >= e.total ? ": reading the rows…" : "");
      });
      xhr.addEventListener("load", function () {
        var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
        var count = doc.querySelector("[data-row-count]");
        if (xhr.status >= 200 && xhr.status < 300 && count) {
          var rows = Number(count.getAttribute("data-row-count"));
          var name = doc.querySelector("h1");
          status.textContent = "Done: " + rows.toLocaleString() + " row" + (rows === 1 ? "" : "s") + " in " +
            (name ? name.textContent.trim() : "the new source") + ". Opening it…";
          button.removeAttribute("aria-busy");
          window.setTimeout(function () { window.location.assign(xhr.responseURL); }, 1500);
          return;
        }
        // Refused: the server's page says why, at the form; show it in place.
        var main = doc.querySelector("main");
        if (main) {
          document.querySelector("main").replaceWith(main);
          bindUpload(document.getElementById("upload-form"));
          var error = document.getElementById("upload-error");
          if (error) { error.focus(); }
        }
      });
      xhr.addEventListener("error", function () {
        button.disabled = false;
        button.removeAttribute("aria-busy");
        status.textContent = "The upload failed: the connection was lost. Try again.";
      });
      xhr.open("POST", uploadForm.action);
      xhr.send(new FormData(uploadForm));
    });
  }
  bindUpload(document.getElementById("upload-form"));
})();
