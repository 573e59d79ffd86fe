export { type Demo, runDemo, startDemo } from "./demo.ts";
export { type DemoBackend, startDemoBackend } from "./backend.ts";
