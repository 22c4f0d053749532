// Render chat templates with @huggingface/jinja (transformers.js, the Hub's template preview).
// stdin: {"search": [dir, ...], "templates": [text, ...], "contexts": [object, ...]}
// stdout: {"version": "...", "results": [[{"text": "..."} | {"error": "..."}, ...], ...]}
// One list of results per template, one result per context, in order.
"use strict";
const fs = require("fs");
const path = require("path");

function load(search) {
  for (const dir of search) {
    const root = path.join(dir, "node_modules", "@huggingface", "jinja");
    if (fs.existsSync(path.join(root, "package.json"))) {
      const version = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")).version;
      return { module: require(root), version };
    }
  }
  const module = require("@huggingface/jinja"); // NODE_PATH or a global install
  let version = "unknown";
  try {
    version = require("@huggingface/jinja/package.json").version;
  } catch (error) {
    // the package does not export its package.json: the version stays unknown
  }
  return { module, version };
}

function firstLine(error) {
  const text = String((error && error.message) || error);
  return text.split("\n")[0];
}

const input = JSON.parse(fs.readFileSync(0, "utf8"));
let loaded;
try {
  loaded = load(input.search || []);
} catch (error) {
  process.stdout.write(JSON.stringify({ missing: firstLine(error) }));
  process.exit(0);
}
const results = input.templates.map((text) => {
  let template;
  try {
    template = new loaded.module.Template(text);
  } catch (error) {
    return input.contexts.map(() => ({ error: firstLine(error) }));
  }
  return input.contexts.map((context) => {
    try {
      return { text: template.render(context) };
    } catch (error) {
      return { error: firstLine(error) };
    }
  });
});
process.stdout.write(JSON.stringify({ version: loaded.version, results }));
