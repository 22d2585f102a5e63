// Every SpeedData element: a dashboard needs only
//   <script type="module" src="/web/js/elements.js"></script>
export { getClient } from "./client.js";
export { SdValue } from "./sd-value.js";
export { SdState } from "./sd-state.js";
export { SdChart } from "./sd-chart.js";
export { SdSpark } from "./sd-spark.js";
export { SdStatus } from "./sd-status.js";
