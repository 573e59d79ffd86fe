/** The admin API in process for tests: the app a manager would serve, with nothing around it. */
import { createAdminApp } from "./admin.ts";
import { Decider } from "./decide.ts";
import type { ManagerRole } from "./role.ts";
import type { ClusterModel } from "./state.ts";

/**
 * The admin app over `model`: no agents, no config file to reload, `adminToken` as the admin token; alone
 * unless given a `role`.
 */
export function testAdminApp(
  model: ClusterModel,
  adminToken: string,
  decider: Decider = new Decider(model),
  role?: ManagerRole,
): ReturnType<typeof createAdminApp> {
  return createAdminApp({
    model,
    agents: () => [],
    decider,
    seed: 7,
    reload: () => Promise.resolve({ ok: false, problems: ["no file"] }),
    adminToken: () => adminToken,
    ...(role ? { role } : {}),
  });
}
