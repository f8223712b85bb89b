// Compile Solidity standard JSON with solc-js; run by `python -m contracts.build`.
//
//   node contracts/solc_driver.js <path to the solc npm package>  < input.json  > output.json
//
// Reads a standard-JSON input on stdin and writes {"version": <compiler version>,
// "output": <standard-JSON output>} on stdout, so the caller can stamp the artifacts
// with the compiler that made them in one node start (loading soljson takes ~1 s).
// The input must not import files: no import callback is given.
"use strict";

const solcPath = process.argv[2];
if (!solcPath) {
  process.stderr.write("usage: node solc_driver.js <path to the solc npm package>\n");
  process.exit(2);
}

let solc;
try {
  solc = require(solcPath);
} catch (err) {
  process.stderr.write(`cannot load solc from ${solcPath}: ${err.message}\n`);
  process.exit(3);
}

const chunks = [];
process.stdin.on("data", (chunk) => chunks.push(chunk));
process.stdin.on("end", () => {
  const input = Buffer.concat(chunks).toString("utf8");
  const output = JSON.parse(solc.compile(input));
  process.stdout.write(JSON.stringify({ version: solc.version(), output }));
});
