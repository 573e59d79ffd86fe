/** Turning application reports into weights: what the manager uses of `feedback/`. */
export { type AgentCheckReply, parseAgentCheckReply } from "./agent_check.ts";
export {
  type FeedbackState,
  type LoadFigures,
  MAX_REPORTS,
  parseReports,
  type Report,
  ReportError,
} from "./report.ts";
export {
  applyReport,
  FEEDBACK_DEFAULTS,
  type FeedbackRecord,
  type FeedbackSettings,
  feedbackState,
  feedbackWeight,
  isLive,
  liveRaw,
  type LoadPeer,
  loadTarget,
  loadWeight,
  smoothStep,
} from "./weight.ts";
