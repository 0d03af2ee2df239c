// nearcat console: drop zones, the category filter, confirmations and review keys.
// Plain script, no dependencies; every page also works with scripts off except the keys.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Drop zones: a dropped file goes into the zone's file input, as if picked.
  for (const zone of document.querySelectorAll(".drop")) {
    const input = zone.querySelector("input[type=file]");
    const form = zone.closest("form");
    const show = () => {
      const names = Array.from(input.files).map((f) => f.name);
      let note = zone.querySelector(".chosen");
      if (!note) {
        note = document.createElement("span");
        note.className = "chosen muted small";
        zone.appendChild(note);
      }
      note.textContent = names.length ? `${names.length} chosen: ${names.slice(0, 5).join(", ")}${names.length > 5 ? ", …" : ""}` : "";
    };
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (!e.dataTransfer.files.length) return;
      const transfer = new DataTransfer();
      const files = input.multiple ? Array.from(e.dataTransfer.files) : [e.dataTransfer.files[0]];
      files.forEach((f) => transfer.items.add(f));
      input.files = transfer.files;
      input.dispatchEvent(new Event("change", { bubbles: true }));
    });
    input.addEventListener("change", () => {
      show();
      if (form.hasAttribute("data-autosubmit") && input.files.length) form.requestSubmit();
    });
  }

  // Show that a post is under way (uploads and classification take a moment).
  for (const form of document.querySelectorAll("form[method=post]")) {
    form.addEventListener("submit", (e) => {
      const question = form.getAttribute("data-confirm");
      if (question && !window.confirm(question)) { e.preventDefault(); return; }
      const button = form.querySelector("button[type=submit]");
      if (button && form.enctype === "multipart/form-data") {
        button.disabled = true;
        button.textContent = "Working…";
      }
    });
  }

  // Catalogue: filter the tree by name and prompt text as one types.
  const filter = document.getElementById("filter");
  const tree = document.getElementById("tree");
  if (filter && tree) {
    filter.addEventListener("input", () => {
      const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
      let shown = 0;
      for (const li of tree.children) {
        const hit = words.every((w) => li.dataset.text.includes(w));
        li.hidden = !hit;
        shown += hit ? 1 : 0;
      }
      document.getElementById("nomatch").hidden = shown > 0;
    });
  }

  // Review: 1/2/3 pick a candidate, n then Enter none of these (a name typed first names it), s skip.
  const review = document.getElementById("review");
  if (review) {
    const newCategory = document.getElementById("new-category");
    document.addEventListener("keydown", (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      const typing = e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement;
      if (typing) {
        if (e.key === "Escape") e.target.blur();
        return;
      }
      const key = e.key.toLowerCase();
      if (key === "n" && newCategory) {
        // n: the name field takes focus; type the right category if you know it, Enter submits.
        e.preventDefault();
        newCategory.focus();
        return;
      }
      const button = review.querySelector(`button[data-key="${CSS.escape(key)}"]`);
      if (button) {
        e.preventDefault();
        button.click();
      }
    });
  }
});
