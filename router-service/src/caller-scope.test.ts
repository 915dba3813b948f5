import { describe, expect, it } from "vitest";
import { CallerScope } from "./caller-scope.js";

describe("CallerScope", () => {
  it("cancels what is registered when it closes, once, and not what left before", () => {
    const s = new CallerScope();
    const calls: string[] = [];
    const a = () => calls.push("a");
    const b = () => calls.push("b");
    s.add(a);
    s.add(b);
    s.delete(a);
    expect(s.closed).toBe(false);
    s.close();
    s.close();
    expect(calls).toEqual(["b"]);
    expect(s.closed).toBe(true);
  });

  it("lets a cancel remove itself while the scope closes", () => {
    const s = new CallerScope();
    const calls: number[] = [];
    for (let i = 0; i < 3; i++) {
      const c = () => {
        s.delete(c);
        calls.push(i);
      };
      s.add(c);
    }
    s.close();
    expect(calls).toEqual([0, 1, 2]);
  });
});
