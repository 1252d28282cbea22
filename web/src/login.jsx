import { useState } from "preact/hooks";
import { api, paths, session } from "./api.js";
import { Problem } from "./util.jsx";

// Asks for the management token once per browser session. It is checked against the server
// before it is kept.
export function Login({ onSignedIn, refused }) {
  const [token, setToken] = useState("");
  const [actor, setActor] = useState(session.actor());
  const [error, setError] = useState(refused ? { message: "The server refused the token; enter it again." } : null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api("GET", paths.served(), undefined, token.trim());
      session.signIn(token.trim(), actor.trim());
      onSignedIn();
    } catch (err) {
      setError(err.status === 401 ? { message: "The server refused this token." } : err);
      setBusy(false);
    }
  };
  return (
    <main id="main" class="login">
      <h1>lepton</h1>
      <form onSubmit={submit} aria-describedby="login-help">
        <p id="login-help">
          The dashboard reads and changes the server through its management API, which needs the
          server's token (<code>lepton serve</code> prints it; <code>LEPTON_TOKEN</code> sets it). It is
          kept for this browser tab only and sent only in a request header.
        </p>
        <label>
          Your name, for the audit log (optional)
          <input name="actor" autocomplete="username" maxLength={64} pattern="[ -~]{1,64}" title="printable ASCII, up to 64 characters"
            value={actor} onInput={(e) => setActor(e.currentTarget.value)} />
        </label>
        <label>
          Token
          <input type="password" name="token" autocomplete="current-password" required value={token}
            onInput={(e) => setToken(e.currentTarget.value)} autofocus />
        </label>
        <Problem error={error} />
        <button type="submit" class="primary" disabled={busy || !token.trim()}>
          {busy ? "Checking…" : "Open the dashboard"}
        </button>
      </form>
    </main>
  );
}
