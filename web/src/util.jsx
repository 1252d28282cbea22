import { useEffect, useRef, useState } from "preact/hooks";

export function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v < 10 && i ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function when(seconds) {
  if (!seconds) return "–";
  const d = new Date(seconds * 1000);
  return d.toISOString().replace("T", " ").slice(0, 19) + "Z";
}

export function num(x, digits = 4) {
  if (x == null || !Number.isFinite(x)) return "–";
  return Math.abs(x) >= 1000 ? x.toFixed(0) : Number(x.toPrecision(digits)).toString();
}

export function rate(x) {
  return x == null ? "–" : `${x < 10 ? x.toFixed(2) : x.toFixed(0)}/s`;
}

// Calls `load` now and every `ms` while mounted (and again when `deps` change); gives its last
// result and its last error. A load still running is not started again.
export function usePoll(load, ms, deps = []) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const busy = useRef(false);
  const alive = useRef(true);
  const tick = useRef(0);
  useEffect(() => {
    alive.current = true;
    const run = async () => {
      if (busy.current) return;
      busy.current = true;
      try {
        const data = await load();
        if (alive.current) setState({ data, error: null, loading: false });
      } catch (error) {
        if (alive.current) setState((s) => ({ ...s, error, loading: false }));
        // What is not there (404) will not come back by asking again: stop polling.
        if (error.status === 404 && id) clearInterval(id);
      } finally {
        busy.current = false;
      }
    };
    tick.current += 1;
    setState({ data: null, error: null, loading: true });
    let id = null;
    run();
    id = ms ? setInterval(run, ms) : null;
    return () => {
      alive.current = false;
      if (id) clearInterval(id);
    };
  }, deps);
  return [state, () => load().then((data) => alive.current && setState({ data, error: null, loading: false }))];
}

export function Problem({ error }) {
  if (!error) return null;
  return (
    <p class="problem" role="alert">
      {error.status ? `${error.status}: ` : ""}
      {error.message}
    </p>
  );
}

export function Loading({ what }) {
  return <p class="muted" aria-busy="true">Loading {what}…</p>;
}

// A modal confirmation for a change: says what will happen, takes a reason, and runs `act` on
// confirm. Esc or Cancel closes it without a change.
export function Confirm({ title, children, onConfirm, onClose, confirmLabel = "Confirm", withReason = true }) {
  const ref = useRef(null);
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  useEffect(() => {
    const d = ref.current;
    if (d && !d.open) d.showModal();
    const onCancel = (e) => {
      e.preventDefault();
      onClose();
    };
    d.addEventListener("cancel", onCancel);
    return () => d.removeEventListener("cancel", onCancel);
  }, []);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await onConfirm(reason.trim());
      onClose(true);
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };
  return (
    <dialog ref={ref} class="confirm" aria-labelledby="confirm-title">
      <form onSubmit={submit}>
        <h2 id="confirm-title">{title}</h2>
        <div class="confirm-body">{children}</div>
        {withReason ? (
          <label>
            Reason (kept in the audit log)
            <input name="reason" value={reason} onInput={(e) => setReason(e.currentTarget.value)} />
          </label>
        ) : null}
        <Problem error={error} />
        <div class="buttons">
          <button type="button" onClick={() => onClose()} disabled={busy}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy} data-testid="confirm">
            {busy ? "Working…" : confirmLabel}
          </button>
        </div>
      </form>
    </dialog>
  );
}

export function Meter({ value, label }) {
  const v = value == null ? 0 : Math.max(0, Math.min(1, value));
  const level = value == null ? "none" : v >= 0.9 ? "bad" : v >= 0.6 ? "warn" : "ok";
  return (
    <span class={`meter ${level}`} role="meter" aria-valuemin="0" aria-valuemax="100"
      aria-valuenow={Math.round(v * 100)} aria-label={label}>
      <span class="fill" style={{ width: `${Math.round(v * 100)}%` }} />
    </span>
  );
}
