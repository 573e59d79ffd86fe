/** The admin API in process for tests: the app a manager would serve, with nothing around it. */
import { createAdminApp } from "./admin.ts";
import { Decider } from "./decide.ts";
import { History } from "./history.ts";
import type { ManagerRole } from "./role.ts";
import type { ClusterModel } from "./state.ts";

/**
 * The admin app over `model`: no agents, no config file to reload, `adminToken` as the admin token, a history
 * only the test samples; alone unless given a `role`.
 */
export function testAdminApp(
  model: ClusterModel,
  adminToken: string,
  decider: Decider = new Decider(model),
  role?: ManagerRole,
  history: History = new History(),
): ReturnType<typeof createAdminApp> {
  return createAdminApp({
    model,
    agents: () => [],
    decider,
    history,
    seed: 7,
    reload: () => Promise.resolve({ ok: false, problems: ["no file"] }),
    adminToken: () => adminToken,
    ...(role ? { role } : {}),
  });
}
