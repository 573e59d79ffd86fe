/**
 * Where an agent takes the decisions a manager made ahead for it (`decide_ahead`): its listening plane, for
 * the flows it accepts and claims (`listen`), or the agent itself, for the flows other agents hand it over
 * the mesh (`mesh`). Each lane of an agent has its own queue and rate.
 */
export const LANES = ["listen", "mesh"] as const;
export type Lane = typeof LANES[number];
