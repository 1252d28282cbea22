import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "uplot/dist/uPlot.min.css";
import "./style.css";
import { onRefused, session } from "./api.js";
import { Live } from "./deployment.jsx";
import { Events } from "./events.jsx";
import { Login } from "./login.jsx";
import { Overview } from "./overview.jsx";
import { RegistryModel } from "./registry.jsx";

// Routes live in the fragment (#/registry/m, #/live/m, #/events), so the server serves one page.
function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  return { page: parts[0] || "", arg: parts[1] || "" };
}

function App() {
  const [signedIn, setSignedIn] = useState(!!session.token());
  const [refused, setRefused] = useState(false);
  const [where, setWhere] = useState(route());
  useEffect(() => {
    const onHash = () => setWhere(route());
    window.addEventListener("hashchange", onHash);
    const off = onRefused(() => {
      session.signOut();
      setRefused(true);
      setSignedIn(false);
    });
    return () => {
      window.removeEventListener("hashchange", onHash);
      off();
    };
  }, []);
  useEffect(() => {
    const title = where.arg ? `${where.arg} · ${where.page}` : where.page || "overview";
    document.title = `lepton · ${title}`;
    const main = document.getElementById("main");
    if (main) main.focus({ preventScroll: true });
  }, [where.page, where.arg]);
  if (!signedIn) {
    return <Login refused={refused} onSignedIn={() => { setRefused(false); setSignedIn(true); }} />;
  }
  let page;
  if (where.page === "registry" && where.arg) page = <RegistryModel key={where.arg} model={where.arg} />;
  else if (where.page === "live" && where.arg) page = <Live key={where.arg} model={where.arg} />;
  else if (where.page === "events") page = <Events />;
  else page = <Overview />;
  const actor = session.actor();
  return (
    <>
      <header>
        <nav aria-label="main">
          <a class="brand" href="#/">lepton</a>
          <a href="#/" aria-current={where.page === "" ? "page" : null}>Overview</a>
          <a href="#/events" aria-current={where.page === "events" ? "page" : null}>Events</a>
        </nav>
        <span class="who">
          {actor ? `acting as ${actor}` : "signed in"}
          <button onClick={() => { session.signOut(); setSignedIn(false); }}>Sign out</button>
        </span>
      </header>
      {page}
    </>
  );
}

render(<App />, document.getElementById("app"));
