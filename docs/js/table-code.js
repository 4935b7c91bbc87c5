// Short code in table cells (a name, an option such as --hidden, a value) stays on one
// line; long code (a spec string) may still wrap at its spaces. CSS alone cannot tell
// them apart, and a browser otherwise breaks code after any hyphen.
document.querySelectorAll(".md-typeset td code").forEach((code) => {
  if (code.textContent.length <= 40) {
    code.classList.add("tp-nowrap");
  }
});
