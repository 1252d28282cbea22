// What the live page shows over the last minutes, from the server's cumulative counters: each
// poll keeps a snapshot per version, and rates and latency quantiles come from the difference
// between two snapshots (histogram buckets subtract like counters).

// A version's totals summed over its series (a version can appear under several aliases or
// policies): requests, failures and the cumulative total-latency buckets [[le, count], ...].
export function totals(stats) {
  const out = new Map();
  for (const v of stats.versions || []) {
    out.set(v.version, { requests: 0, failed: 0, buckets: [] });
  }
  for (const s of stats.series || []) {
    const t = out.get(s.version) || { requests: 0, failed: 0, buckets: [] };
    t.requests += s.requests;
    t.failed += s.failed;
    // The server lists finite bounds; what lies above the last one is the count's remainder.
    const b = [...((s.total_s && s.total_s.buckets) || []), [Infinity, (s.total_s && s.total_s.count) || 0]];
    if (t.buckets.length === 0) t.buckets = b.map(([le, c]) => [le, c]);
    else b.forEach(([, c], i) => (t.buckets[i][1] += c));
    out.set(s.version, t);
  }
  return out;
}

// The q-quantile of the observations between two cumulative bucket lists, interpolated within
// its bucket as Prometheus' histogram_quantile does; null without observations.
export function quantile(before, after, q) {
  if (!after || after.length === 0) return null;
  const counts = after.map(([le, c], i) => [le, c - ((before && before[i] && before[i][1]) || 0)]);
  const total = counts[counts.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [le, c] of counts) {
    if (c >= rank) {
      if (!Number.isFinite(le)) return lower;
      const inBucket = c - below;
      return inBucket > 0 ? lower + ((le - lower) * (rank - below)) / inBucket : le;
    }
    lower = le;
    below = c;
  }
  return lower;
}

// Keeps the last `keepSeconds` of snapshots and answers for each version its request rate,
// error rate, p50, p99 and traffic share over the last `windowSeconds`.
export class Window {
  constructor(keepSeconds = 600, windowSeconds = 10) {
    this.keep = keepSeconds;
    this.window = windowSeconds;
    this.snapshots = []; // {t, totals}
    this.points = []; // {t, versions: Map(version -> {rate, errors, p50, p99, share})}
  }

  add(t, stats) {
    const now = { t, totals: totals(stats) };
    // A restarted server's counters go back to zero: start again.
    const last = this.snapshots[this.snapshots.length - 1];
    if (last) {
      for (const [v, x] of now.totals) {
        const y = last.totals.get(v);
        if (y && x.requests < y.requests) {
          this.snapshots = [];
          this.points = [];
          break;
        }
      }
    }
    this.snapshots.push(now);
    while (this.snapshots.length > 2 && t - this.snapshots[1].t >= this.window) {
      this.snapshots.shift();
    }
    const base = this.snapshots[0];
    if (base === now) return null;
    const dt = t - base.t;
    const versions = new Map();
    let all = 0;
    for (const [v, x] of now.totals) {
      const y = base.totals.get(v) || { requests: 0, failed: 0, buckets: [] };
      const n = x.requests - y.requests;
      all += n;
      versions.set(v, {
        requests: n,
        rate: n / dt,
        errors: (x.failed - y.failed) / dt,
        p50: quantile(y.buckets, x.buckets, 0.5),
        p99: quantile(y.buckets, x.buckets, 0.99),
      });
    }
    for (const x of versions.values()) x.share = all > 0 ? x.requests / all : null;
    const point = { t, versions };
    this.points.push(point);
    while (this.points.length && t - this.points[0].t > this.keep) this.points.shift();
    return point;
  }

  latest() {
    return this.points[this.points.length - 1] || null;
  }

  // uPlot's columns for one field: [times, version1 values, version2 values, ...].
  columns(field, versions, scale = 1) {
    const times = this.points.map((p) => p.t);
    const cols = versions.map((v) =>
      this.points.map((p) => {
        const x = p.versions.get(v);
        return x && x[field] != null ? x[field] * scale : null;
      }),
    );
    return [times, ...cols];
  }
}

// How close a canary's candidate is to each guardrail, from the policy's report: 0 is far,
// 1 is the limit. Null where there is not enough evidence yet.
export function guardrailCloseness(report) {
  if (!report || !report.evidence || !report.evidence.guardrails) return [];
  const g = report.evidence.guardrails;
  const base = report.evidence[report.stable];
  const cand = report.evidence[report.candidate];
  if (!base || !cand) return [];
  const enough = cand.requests >= g.min_requests && base.requests >= g.min_requests;
  const out = [];
  const increase = cand.error_rate - base.error_rate;
  out.push({
    name: "error rate increase",
    value: increase,
    limit: g.max_error_rate_increase,
    text: `${pct(increase)} (limit ${pct(g.max_error_rate_increase)})`,
    closeness: enough ? ratio(Math.max(0, increase), g.max_error_rate_increase) : null,
  });
  const allowed = Math.max(base.p99_s * g.max_latency_ratio, base.p99_s + g.latency_slack_s);
  out.push({
    name: "p99 latency",
    value: cand.p99_s,
    limit: allowed,
    text: `${ms(cand.p99_s)} against ${ms(base.p99_s)} (limit ${ms(allowed)})`,
    closeness: enough && base.p99_s > 0 ? ratio(cand.p99_s, allowed) : null,
  });
  out.push({
    name: "evidence",
    value: Math.min(cand.requests, base.requests),
    limit: g.min_requests,
    text: `${cand.requests} and ${base.requests} requests (needs ${g.min_requests} each)`,
    closeness: null,
  });
  return out;
}

function ratio(x, limit) {
  if (limit > 0) return Math.min(1, x / limit);
  return x > 0 ? 1 : 0;
}

export function pct(x) {
  return x == null || !Number.isFinite(x) ? "–" : `${(x * 100).toFixed(2)}%`;
}

export function ms(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  const v = seconds * 1e3;
  return `${v < 10 ? v.toFixed(2) : v.toFixed(1)} ms`;
}
