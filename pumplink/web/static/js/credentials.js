// A controller's broker login, password-file line and ACL stanza: shown once, as the server answers them.
import { html, Message } from "./ui.js";

export function Credentials({ device, creds, error, title, onDone }) {
  return html`<div class="card once" role="status" data-credentials=${device.id}>
    <h2>${title}</h2>
    ${creds ? html`<p>Its controller's broker login, shown only now: copy it into the firmware, and give the
      password line and ACL stanza to the server's operator for Mosquitto
      (as <code>pumplink device-credentials ${device.id}</code> on the server would print).</p>
      <dl class="checks"><dt>Username</dt><dd><code class="cred-user">${creds.username}</code></dd>
      <dt>Password</dt><dd><code class="cred-password">${creds.password}</code></dd></dl>
      <h3>Password line</h3><pre class="cred-line">${creds.password_line}</pre>
      <h3>ACL stanza</h3><pre class="cred-acl">${creds.acl}</pre>` : html`<${Message} error=${error} />`}
    <button type="button" onClick=${onDone}>Done</button></div>`;
}
