import { defineConfig } from "vite";

// `npm run build` writes dist/, which `parley dev` serves beside /config.json
// (where the gateway's WebSocket is) and /dev/token (dev sign-in).
export default defineConfig({
  build: { target: "es2022", outDir: "dist", emptyOutDir: true },
});
