import { useEffect, useRef, useState } from "preact/hooks";
import { api, paths } from "./api.js";
import { Problem, when } from "./util.jsx";

// The event log, newest first, polled from the last sequence number seen.
export function useEvents(model, keep = 300) {
  const [events, setEvents] = useState([]);
  const [error, setError] = useState(null);
  const since = useRef(0);
  useEffect(() => {
    let alive = true;
    since.current = 0;
    setEvents([]);
    const run = async () => {
      try {
        // A page opened on a busy server catches up in pages of 500, keeping the newest.
        for (let page = 0; page < 40; page += 1) {
          const got = await api("GET", paths.events(since.current, model));
          if (!alive) return;
          setError(null);
          if (!got.length) break;
          since.current = Math.max(since.current, ...got.map((e) => e.seq || 0));
          setEvents((old) => [...got.reverse(), ...old].slice(0, keep));
          if (got.length < 500) break;
        }
      } catch (e) {
        if (alive) setError(e);
      }
    };
    run();
    const id = setInterval(run, 2000);
    return () => {
      alive = false;
      clearInterval(id);
    };
  }, [model]);
  return [events, error];
}

export function EventTable({ events, model }) {
  if (!events.length) return <p class="muted">No events yet.</p>;
  return (
    <div class="scroll tall" tabIndex={0} role="region" aria-label="events">
      <table data-testid="events">
        <thead>
          <tr>
            <th scope="col">Time</th><th scope="col">Level</th><th scope="col">Kind</th>
            {model ? null : <th scope="col">Model</th>}
            <th scope="col">Version</th><th scope="col">Message</th>
          </tr>
        </thead>
        <tbody>
          {events.map((e) => (
            <tr key={e.seq} class={`level-${e.level}`}>
              <td>{when(e.time)}</td>
              <td>{e.level}</td>
              <td>{e.kind}</td>
              {model ? null : <td>{e.model || "–"}</td>}
              <td>{e.version || "–"}</td>
              <td class="message">{e.message}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function Events() {
  const [events, error] = useEvents("");
  return (
    <main id="main">
      <h1>Events</h1>
      <Problem error={error} />
      <EventTable events={events} />
    </main>
  );
}
