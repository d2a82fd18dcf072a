// The VS Code client of `sidecar lsp`: starts the language server for `.mirror`
// files and lets vscode-languageclient do the rest (diagnostics, completion,
// hover, navigation, rename, formatting). The command is the `sidecar.lsp.command`
// setting (default `sidecar`, found on PATH) with `sidecar.lsp.args` (default
// `["lsp"]`); changing either restarts the server.
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function serverOptions() {
  const config = vscode.workspace.getConfiguration("sidecar.lsp");
  const command = config.get("command", "sidecar");
  const args = config.get("args", ["lsp"]);
  const folder = vscode.workspace.workspaceFolders && vscode.workspace.workspaceFolders[0];
  // A relative command (.venv/bin/sidecar) is relative to the first workspace folder.
  const options = folder ? { cwd: folder.uri.fsPath } : {};
  return { command, args, transport: TransportKind.stdio, options };
}

async function start(context) {
  client = new LanguageClient(
    "sidecar",
    "sidecar rules",
    serverOptions(),
    {
      documentSelector: [
        { scheme: "file", language: "mirror" },
        { scheme: "untitled", language: "mirror" },
      ],
      synchronize: {
        // Closed files of a rules directory change on disk too (a checkout): re-check.
        fileEvents: vscode.workspace.createFileSystemWatcher("**/*.mirror"),
      },
    },
  );
  try {
    await client.start();
  } catch (error) {
    const command = serverOptions().command;
    vscode.window.showErrorMessage(
      `sidecar: could not start \`${command} lsp\` (${error.message}). ` +
        "Install sidecar, or set sidecar.lsp.command to its path (for example .venv/bin/sidecar).",
    );
  }
}

async function activate(context) {
  await start(context);
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (event.affectsConfiguration("sidecar.lsp")) {
        if (client) {
          await client.stop();
        }
        await start(context);
      }
    }),
  );
}

async function deactivate() {
  if (client) {
    await client.stop();
  }
}

module.exports = { activate, deactivate };
