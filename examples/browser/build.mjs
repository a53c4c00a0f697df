// `npm run bundle`: src/main.ts (and the generated code, Connect, Protobuf-ES)
// into one ES module, next to a copy of index.html, in dist/.
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import * as esbuild from "esbuild";

rmSync("dist", { recursive: true, force: true });
mkdirSync("dist");
await esbuild.build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: true,
  outfile: "dist/main.js",
  logLevel: "info",
});
copyFileSync("index.html", "dist/index.html");
