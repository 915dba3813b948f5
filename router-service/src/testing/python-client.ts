// Where the Python client of the router (clients/python) lives, and a python3 that can run it: shared by its test
// (data-server.python.test.ts) and its benchmark (bench/python-client.ts).

import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

export const PYTHON_CLIENT_DIR = fileURLToPath(new URL("../../../clients/python", import.meta.url));

/** What the client needs, as Debian packages it. */
export const PYTHON_CLIENT_DEPS =
  "protobuf, numpy and grpcio (apt-get install python3-protobuf python3-numpy python3-grpcio)";

/** The first python3 with the client's dependencies ($SWITCHYARD_PYTHON, python3, /usr/bin/python3), or why none. */
export async function findPython(): Promise<{ python: string } | { why: string }> {
  const run = promisify(execFile);
  const tried: string[] = [];
  for (const py of [process.env.SWITCHYARD_PYTHON, "python3", "/usr/bin/python3"].filter(Boolean) as string[]) {
    try {
      await run(py, ["-c", "import google.protobuf, numpy, grpc"]);
      return { python: py };
    } catch (e) {
      tried.push(`${py}: ${((e as { stderr?: string }).stderr ?? String(e)).trim().split("\n").at(-1)}`);
    }
  }
  return { why: tried.join("; ") };
}
