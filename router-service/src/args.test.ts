import { describe, expect, it } from "vitest";
import { parseRouterArgs } from "./args.js";

describe("parseRouterArgs", () => {
  it("reads ports as decimal digits only, quoting the text given", () => {
    for (const v of ["", " ", "0x10", "1e3", "50051.0", "+1", "-0"])
      expect(() => parseRouterArgs(["--config", "c", `--port=${v}`], {}), v).toThrow(
        `--port: must be a port number, got ${JSON.stringify(v)}`,
      );
    expect(() => parseRouterArgs(["--config", "c"], { SWITCHYARD_METRICS_PORT: "0x10" })).toThrow(
      '--metrics-port: must be a port number, got "0x10"',
    );
    expect(() => parseRouterArgs(["--config", "c", "--data-port", "1e3"], {})).toThrow(
      '--data-port: must be a port number or -1 (off), got "1e3"',
    );
    expect(() => parseRouterArgs(["--config", "c", "--port", "65536"], {})).toThrow(/--port: must be a port number/);
    expect(
      parseRouterArgs(["--config", "c", "--port=0", "--metrics-port", "65535", "--data-port=-1"], {}),
    ).toMatchObject({ port: 0, metricsPort: 65535, dataPort: null });
  });
});
