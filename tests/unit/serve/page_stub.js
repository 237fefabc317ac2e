// Minimal DOM stub: runs the page's script and renders three task records (classification, anomaly, regression).
const fs = require("fs");
const html = fs.readFileSync(process.argv[2], "utf8");
const script = html.split("<script>")[1].split("</script>")[0];
class Node_ { constructor(tag) { this.tag = tag; this.children = []; this.style = {}; this.dataset = {}; this.attrs = {}; this.className = ""; this._text = ""; this.options = []; this.files = [1]; this.hidden = false; this.disabled = false; this.value = ""; }
  append(...cs) { for (const c of cs) this.children.push(c); }
  appendChild(c) { this.children.push(c); } removeChild(c) { this.children = this.children.filter(x => x !== c); }
  get firstChild() { return this.children[0] || null; }
  setAttribute(k, v) { this.attrs[k] = v; } removeAttribute(k) { delete this.attrs[k]; }
  addEventListener() {} add(o) { this.options.push(o); }
  set textContent(t) { this.children = []; this._text = String(t); }
  get textContent() { return this._text + this.children.map(c => c.textContent).join(""); } }
class Text_ extends Node_ { constructor(t) { super("#text"); this._text = t; } }
const ids = {};
global.Node = Node_;
global.document = { createElement: t => new Node_(t), createTextNode: t => new Text_(t), getElementById: id => (ids[id] = ids[id] || new Node_("div")), querySelectorAll: () => [], body: new Node_("body"), addEventListener() {} };
global.Option = function (t, v) { return { text: t, value: v }; };
global.fetch = async () => ({ status: 500, ok: false, json: async () => ({ error: { message: "x" } }), statusText: "x" });
eval(script.replace(/^loadModel\(\);$/m, "") + `
;(function () {
  const cases = JSON.parse(require("fs").readFileSync(process.argv[3], "utf8"));
  if (process.argv[4] === "model") {  // the model card: what /v1/model published, rendered without a prediction
    for (const c of cases) {
      model = c.model;
      renderSubgroups();
      console.log(c.name + ": hidden=" + $("subgroups-box").hidden + " " + $("subgroups-title").textContent + " | "
        + $("subgroups").textContent.replace(/\\s+/g, " "));
    }
    return;
  }
  for (const c of cases) {
    pres = c.presentation; model = { explain_methods: pres.explain_methods };
    renderFindings(c.prediction);
    const t = $("findings").textContent;
    console.log(c.name + ": " + t.replace(/\\s+/g, " ").slice(0, 300));
    updateButtons();
    console.log("  explain disabled:", $("explain").disabled, "report disabled:", $("report").disabled);
  }
})();`);
