// Check YAML files against a JSON Schema the way an editor does: start
// yaml-language-server over stdio, open each file and print the diagnostics it
// publishes, as JSON lines {"file", "line", "message"} (one {"file"} line for a
// clean file). A "# yaml-language-server: $schema=..." line is blanked so SCHEMA
// is the one used. Usage: node yamlls-check.js SERVER_JS SCHEMA FILE...
"use strict";
const { spawn } = require("child_process");
const fs = require("fs");
const path = require("path");
const { pathToFileURL } = require("url");

const [serverJs, schemaPath, ...files] = process.argv.slice(2);
const server = spawn(process.execPath, [serverJs, "--stdio"], { stdio: ["pipe", "pipe", "inherit"] });
const uris = new Map(files.map((f) => [pathToFileURL(path.resolve(f)).href, f]));
const pending = new Set(uris.keys());
let nextId = 1;
let buffer = Buffer.alloc(0);

function send(message) {
  const body = Buffer.from(JSON.stringify({ jsonrpc: "2.0", ...message }));
  server.stdin.write(`Content-Length: ${body.length}\r\n\r\n`);
  server.stdin.write(body);
}

function request(method, params) {
  send({ id: nextId++, method, params });
}

function onMessage(msg) {
  if (msg.id !== undefined && msg.method) {
    // A request from the server (configuration, registration): answer it.
    const result = msg.method === "workspace/configuration" ? msg.params.items.map(() => settings.yaml) : null;
    send({ id: msg.id, result });
    return;
  }
  if (msg.id === 1) {
    send({ method: "initialized", params: {} });
    send({ method: "workspace/didChangeConfiguration", params: { settings } });
    for (const [uri, file] of uris) {
      const text = fs.readFileSync(file, "utf8").replace(/^#\s*yaml-language-server:.*$/gm, "");
      send({ method: "textDocument/didOpen", params: { textDocument: { uri, languageId: "yaml", version: 1, text } } });
    }
    return;
  }
  if (msg.method === "textDocument/publishDiagnostics" && pending.has(msg.params.uri)) {
    const file = uris.get(msg.params.uri);
    pending.delete(msg.params.uri);
    for (const d of msg.params.diagnostics) {
      console.log(JSON.stringify({ file, line: d.range.start.line + 1, message: d.message }));
    }
    if (!msg.params.diagnostics.length) console.log(JSON.stringify({ file }));
    if (!pending.size) {
      request("shutdown", null);
      send({ method: "exit" });
      setTimeout(() => process.exit(0), 200).unref();
    }
  }
}

server.stdout.on("data", (chunk) => {
  buffer = Buffer.concat([buffer, chunk]);
  for (;;) {
    const end = buffer.indexOf("\r\n\r\n");
    if (end < 0) return;
    const length = Number(/Content-Length: (\d+)/i.exec(buffer.slice(0, end).toString())[1]);
    if (buffer.length < end + 4 + length) return;
    const body = buffer.slice(end + 4, end + 4 + length).toString();
    buffer = buffer.slice(end + 4 + length);
    onMessage(JSON.parse(body));
  }
});

const settings = {
  yaml: {
    validate: true,
    format: { enable: false },
    schemaStore: { enable: false },
    schemas: { [pathToFileURL(path.resolve(schemaPath)).href]: "*.{yaml,yml}" },
  },
};
request("initialize", {
  processId: process.pid,
  rootUri: null,
  capabilities: { textDocument: { publishDiagnostics: {} }, workspace: { configuration: true } },
});
setTimeout(() => {
  console.error(`yaml-language-server gave no diagnostics for: ${[...pending].map((u) => uris.get(u)).join(", ")}`);
  process.exit(3);
}, 60000).unref();
