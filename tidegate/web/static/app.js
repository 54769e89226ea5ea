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

  // The one-time secret: once its dialog closes (button or Escape), the element leaves the
  // page, and the address no longer points at the POST that produced it.
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
  });
})();
