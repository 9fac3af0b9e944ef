// Grafana's schema types use TypeScript string enums (ThresholdsMode, LegendDisplayMode,
// …) while dashboard JSON holds their string values. `Wire<T>` is T with every string
// enum replaced by the union of its values, so `satisfies Wire<Dashboard>` accepts the
// JSON Grafana reads and rejects anything else (unknown keys, wrong types, values
// outside an enum). Numeric enums already accept their number values.
export type Wire<T> = T extends string
  ? string extends T
    ? string
    : `${T}`
  : T extends number | boolean | bigint | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Wire<U>>
      : T extends object
        ? { [K in keyof T]: Wire<T[K]> }
        : T;
