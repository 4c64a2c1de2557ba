// The labelling page's shortcut keys: a key clicks the button that declares it (data-shortcut), so
// every action is still the page's plain form, posted as a click would post it. Without JavaScript
// the buttons work as they are.
(function () {
  "use strict";
  var sent = false;
  window.addEventListener("pageshow", function () { sent = false; }); // back to a cached page
  document.addEventListener("keydown", function (event) {
    if (sent || event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    var target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) return;
    var key = (event.key || "").toLowerCase();
    if (key.length !== 1) return;
    var button = document.querySelector('button[data-shortcut="' + key + '"]');
    if (!button || button.disabled) return;
    event.preventDefault();
    sent = true; // one item, one answer: a held or repeated key does not post twice
    button.click();
  });
})();
