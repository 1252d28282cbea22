// The live page's arithmetic: windowed rates, shares and quantiles from cumulative counters.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Window, guardrailCloseness, quantile, totals } from "../src/live.js";

const stats = (series) => ({
  versions: [...new Set(series.map((s) => s.version))].map((version) => ({ version })),
  series: series.map(([version, requests, failed, buckets]) => ({
    version,
    requests,
    failed,
    total_s: { buckets, count: buckets.length ? buckets[buckets.length - 1][1] : 0 },
  })),
});

test("quantiles come from the difference of cumulative buckets", () => {
  const before = [[0.001, 10], [0.01, 10], [0.1, 10], [Infinity, 10]];
  const after = [[0.001, 10], [0.01, 60], [0.1, 110], [Infinity, 110]];
  // 100 new observations: 50 in (1 ms, 10 ms], 50 in (10 ms, 100 ms].
  assert.ok(Math.abs(quantile(before, after, 0.5) - 0.01) < 1e-12);
  assert.ok(Math.abs(quantile(before, after, 0.99) - (0.01 + 0.09 * (49 / 50))) < 1e-12);
  assert.equal(quantile(after, after, 0.5), null);
  // Everything above the last finite bound answers that bound.
  assert.equal(quantile(null, [[0.1, 0], [Infinity, 5]], 0.5), 0.1);
});

test("observations above the last finite bound count", () => {
  const t = totals({ versions: [], series: [{ version: "v1", requests: 4, failed: 0, total_s: { buckets: [[1, 3]], count: 4 } }] });
  assert.deepEqual(t.get("v1").buckets, [[1, 3], [Infinity, 4]]);
  assert.equal(quantile(null, t.get("v1").buckets, 0.9), 1);
});

test("series of one version add up", () => {
  const t = totals(stats([["v1", 5, 1, [[1, 5]]], ["v1", 3, 0, [[1, 3]]], ["v2", 2, 0, [[1, 2]]]]));
  assert.deepEqual(t.get("v1"), { requests: 8, failed: 1, buckets: [[1, 8], [Infinity, 8]] });
  assert.deepEqual(t.get("v2"), { requests: 2, failed: 0, buckets: [[1, 2], [Infinity, 2]] });
});

test("a window gives rates and shares over its span and restarts with the counters", () => {
  const w = new Window(600, 10);
  assert.equal(w.add(0, stats([["v1", 0, 0, [[1, 0]]], ["v2", 0, 0, [[1, 0]]]])), null);
  const p = w.add(2, stats([["v1", 30, 2, [[1, 30]]], ["v2", 10, 0, [[1, 10]]]]));
  assert.equal(p.versions.get("v1").rate, 15);
  assert.equal(p.versions.get("v1").errors, 1);
  assert.equal(p.versions.get("v1").share, 0.75);
  assert.equal(p.versions.get("v2").share, 0.25);
  // Past the window, the oldest snapshot is dropped: the rate is over the last 10 s only.
  w.add(12, stats([["v1", 130, 2, [[1, 130]]], ["v2", 10, 0, [[1, 10]]]]));
  const q = w.add(14, stats([["v1", 150, 2, [[1, 150]]], ["v2", 10, 0, [[1, 10]]]]));
  assert.equal(q.versions.get("v1").rate, 120 / 12);
  assert.equal(q.versions.get("v2").share, 0);
  assert.deepEqual(w.columns("share", ["v1", "v2"]), [[2, 12, 14], [0.75, 1, 1], [0.25, 0, 0]]);
  // A restarted server: counters went down, history starts again.
  assert.equal(w.add(16, stats([["v1", 1, 0, [[1, 1]]], ["v2", 0, 0, [[1, 0]]]])), null);
  assert.equal(w.points.length, 0);
});

test("guardrail closeness follows the canary's own rule", () => {
  const report = {
    stable: "v1",
    candidate: "v2",
    evidence: {
      v1: { requests: 100, error_rate: 0.01, p99_s: 0.010 },
      v2: { requests: 100, error_rate: 0.02, p99_s: 0.015 },
      guardrails: { max_error_rate_increase: 0.02, max_latency_ratio: 2, latency_slack_s: 0.001, min_requests: 50 },
    },
  };
  const [errors, latency, evidence] = guardrailCloseness(report);
  assert.ok(Math.abs(errors.closeness - 0.5) < 1e-12);
  assert.ok(Math.abs(latency.closeness - 0.75) < 1e-12); // limit max(2 x 10 ms, 10 ms + 1 ms)
  assert.equal(evidence.closeness, null);
  report.evidence.v2.requests = 10;
  assert.equal(guardrailCloseness(report)[0].closeness, null);
});
