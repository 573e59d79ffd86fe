/**
 * How the property-based tests (fast-check) run. In `deno task test`: a fixed seed and the number of runs
 * each property names, so that CI sees the same cases every time. In `deno task fuzz`
 * (`SWITCHYARD_FUZZ=1`): a random seed, printed once, and `FUZZ_FACTOR` times the runs. Either way
 * `SWITCHYARD_FUZZ_SEED` replays a seed and `SWITCHYARD_FUZZ_RUNS` sets the runs of every property; a
 * failure prints its seed and the shrunk counterexample.
 *
 * Property tests are named `property: …`, which is how `deno task fuzz` picks them.
 */
import fc from "fast-check";

export { fc };

/** The seed of `deno task test`. */
export const PROPERTY_SEED = 20_020;
/** How many times more runs each property gets in `deno task fuzz`. */
export const FUZZ_FACTOR = 50;

const fuzzing = Deno.env.get("SWITCHYARD_FUZZ") === "1";
const seed = (() => {
  const given = Deno.env.get("SWITCHYARD_FUZZ_SEED");
  if (given !== undefined && given !== "") return Number(given);
  if (!fuzzing) return PROPERTY_SEED;
  const random = crypto.getRandomValues(new Int32Array(1))[0]!;
  console.log(`property seed ${random} (replay with SWITCHYARD_FUZZ_SEED=${random})`);
  return random;
})();

/** The runs a property named with `runs` gets in this run of the tests. */
export function runsOf(runs: number): number {
  const given = Deno.env.get("SWITCHYARD_FUZZ_RUNS");
  if (given !== undefined && given !== "") return Number(given);
  return fuzzing ? runs * FUZZ_FACTOR : runs;
}

/** Checks `property` with this run's seed and `runs` cases (times `FUZZ_FACTOR` in `deno task fuzz`). */
export function check<Ts extends [unknown, ...unknown[]]>(property: fc.IProperty<Ts>, runs: number): void {
  fc.assert(property, { seed, numRuns: runsOf(runs) });
}

/** As `check`, for a property whose predicate awaits. */
export async function checkAsync<Ts extends [unknown, ...unknown[]]>(
  property: fc.IAsyncProperty<Ts>,
  runs: number,
): Promise<void> {
  await fc.assert(property, { seed, numRuns: runsOf(runs) });
}

/**
 * Every double, and more often the ones that break arithmetic: ±0, subnormals, `MIN_VALUE`, `MAX_VALUE`,
 * ±Infinity, NaN, huge integers, and values at the edges of 0..1 and 0..100.
 */
export function anyDouble(): fc.Arbitrary<number> {
  return fc.oneof(
    { weight: 3, arbitrary: fc.double() },
    {
      weight: 2,
      arbitrary: fc.constantFrom(
        0,
        -0,
        Number.MIN_VALUE,
        1e-320,
        2.2250738585072014e-308,
        Number.EPSILON,
        1e-300,
        0.1,
        0.5,
        1,
        1 + Number.EPSILON,
        100,
        10_000,
        2 ** 53,
        2 ** 53 + 2,
        1e300,
        1e308,
        Number.MAX_VALUE,
        Infinity,
        -Infinity,
        NaN,
        -1,
        -Number.MAX_VALUE,
      ),
    },
    { weight: 1, arbitrary: fc.double({ min: 0, max: 1, noNaN: true }) },
    { weight: 1, arbitrary: fc.double({ min: 0, max: 1e-300, noNaN: true }) },
  );
}
