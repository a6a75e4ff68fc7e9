// xterm.js (6.0) styles its DOM renderer and scrollbar with <style> elements whose text it
// sets, and colours some cells with setAttribute("style", ...): a strict Content-Security-Policy
// (style-src 'self', no 'unsafe-inline') refuses both. This moves them to what the policy
// allows: the text of a <style> goes to a constructed stylesheet adopted by the document,
// and a style attribute is set through the CSSOM (element.style), which CSP does not govern.
// xterm.js did the former itself for a while (xtermjs/xterm.js#4611); see #4445.

let installed = false;

export function adoptInlineStyles() {
  if (installed) return;
  installed = true;
  const sheets = new WeakMap(); // <style> element -> {sheet, text}

  const detach = (element) => {
    const held = sheets.get(element);
    if (!held) return;
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter((sheet) => sheet !== held.sheet);
    sheets.delete(element);
  };
  const textProperty = {
    configurable: true,
    get() {
      return sheets.get(this)?.text ?? "";
    },
    set(value) {
      const text = String(value ?? "");
      let held = sheets.get(this);
      if (!held) {
        held = { sheet: new CSSStyleSheet(), text: "" };
        sheets.set(this, held);
        document.adoptedStyleSheets = [...document.adoptedStyleSheets, held.sheet];
      }
      held.text = text;
      held.sheet.replaceSync(text);
    },
  };
  Object.defineProperty(HTMLStyleElement.prototype, "textContent", textProperty);
  Object.defineProperty(HTMLStyleElement.prototype, "innerText", textProperty);
  const remove = Element.prototype.remove;
  HTMLStyleElement.prototype.remove = function () {
    detach(this);
    remove.call(this);
  };

  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {
    if (String(name).toLowerCase() === "style" && this.style) {
      this.style.cssText = String(value);
      return;
    }
    setAttribute.call(this, name, value);
  };
}
