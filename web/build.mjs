// Builds the dashboard into one folder that `lepton serve` serves at /ui/ (default: the Python
// package's lepton/ui, so that the built files ship inside the package).
import * as esbuild from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] || resolve(here, "../python/lepton/ui"));
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await esbuild.build({
  entryPoints: { app: resolve(here, "src/main.jsx") },
  bundle: true,
  minify: true,
  sourcemap: false,
  target: ["es2020"],
  format: "iife",
  jsx: "automatic",
  jsxImportSource: "preact",
  legalComments: "external",
  outdir: out,
  logLevel: "warning",
});
for (const file of ["index.html", "icon.svg"]) copyFileSync(resolve(here, "src", file), resolve(out, file));
console.log(`dashboard built into ${out}`);
